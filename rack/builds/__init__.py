"""The build record: create, list, read and update builds, and end them from outside their worker.

`record` holds a build's row and its JSON; `queue` is the fair order in which workers take waiting builds;
`lifecycle` ends builds from outside (cancel, and the reaper for lost, expired and overdue builds, which
queues a lost worker's build again while it has attempts left). May import the rack's base modules
(config, context, db, errors, ids, sql, storage, apps, objects) and `rack.logs`; never `rack.pipeline`
(the pipeline uses builds, not the reverse).
"""

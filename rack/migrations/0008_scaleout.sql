-- Many workers: attempts (a lost worker's build runs again), log sizes per build (the metrics read them),
-- counters that span processes, and workers' own heartbeats.

ALTER TABLE builds
    ADD COLUMN attempt   integer NOT NULL DEFAULT 1,
    ADD COLUMN log_lines bigint  NOT NULL DEFAULT 0,
    ADD COLUMN log_bytes bigint  NOT NULL DEFAULT 0;

-- When a worker last took one of the app's builds: the fair queue serves the longest unserved app first.
ALTER TABLE apps ADD COLUMN dispatched timestamptz;

CREATE INDEX builds_running_app ON builds (app) WHERE status = 'running';

CREATE TABLE counters (
    name   text PRIMARY KEY,
    value  bigint NOT NULL DEFAULT 0
);

CREATE TABLE workers (
    name      text PRIMARY KEY,
    heartbeat timestamptz NOT NULL DEFAULT now(),
    started   timestamptz NOT NULL DEFAULT now()
);

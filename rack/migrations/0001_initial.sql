-- Apps, builds and releases: the rack's whole state besides objects and log streams.

CREATE TABLE apps (
    name        text PRIMARY KEY,
    generation  text NOT NULL DEFAULT '2',
    release     text NOT NULL DEFAULT '',
    build_timeout integer,
    created     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE builds (
    id          text PRIMARY KEY,
    app         text NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    status      text NOT NULL DEFAULT 'created'
                CHECK (status IN ('created', 'running', 'complete', 'failed')),
    description text NOT NULL DEFAULT '',
    entrypoint  text NOT NULL DEFAULT '',
    git_sha     text NOT NULL DEFAULT '',
    logs        text NOT NULL DEFAULT '',
    manifest    text NOT NULL DEFAULT '',
    process     text NOT NULL DEFAULT '',
    release     text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT '',
    repository  text NOT NULL DEFAULT '',
    source_url  text NOT NULL DEFAULT '',
    options     jsonb NOT NULL DEFAULT '{}'::jsonb,
    images      jsonb NOT NULL DEFAULT '{}'::jsonb,
    started     timestamptz NOT NULL DEFAULT now(),
    running_at  timestamptz,
    ended       timestamptz,
    heartbeat   timestamptz,
    cancel_requested boolean NOT NULL DEFAULT false
);

CREATE INDEX builds_app_started ON builds (app, started DESC);
CREATE INDEX builds_running_heartbeat ON builds (heartbeat) WHERE status = 'running';
CREATE INDEX builds_created_started ON builds (started) WHERE status = 'created';

CREATE TABLE releases (
    id          text PRIMARY KEY,
    app         text NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    build       text NOT NULL DEFAULT '',
    env         text NOT NULL DEFAULT '',
    manifest    text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    created     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX releases_app_created ON releases (app, created DESC);

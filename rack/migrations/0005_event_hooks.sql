-- Outbound event webhooks: URLs the rack POSTs its events to (build:create, build:complete, build:fail,
-- release:create, release:promote), signed with the hook's secret. app NULL: the events of every app.

CREATE TABLE event_hooks (
    id          text PRIMARY KEY,
    app         text REFERENCES apps (name) ON DELETE CASCADE,
    url         text NOT NULL,
    secret      text NOT NULL,
    created     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX event_hooks_app ON event_hooks (app);

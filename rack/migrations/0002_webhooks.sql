-- Push webhooks: a watched repository and branch per app, delivered to /webhooks/<id> and signed with the secret.
-- The secret is stored as given back at creation: verifying an HMAC needs the key itself, not a hash of it.

CREATE TABLE webhooks (
    id          text PRIMARY KEY,
    app         text NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    repo        text NOT NULL,
    branch      text NOT NULL,
    secret      text NOT NULL,
    promote     boolean NOT NULL DEFAULT false,
    created     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX webhooks_app_created ON webhooks (app, created DESC);

-- Push deliveries a webhook has built, so a redelivery (the same X-GitHub-Delivery or X-Gitlab-Event-UUID)
-- or a replay of the same signed body builds nothing new and is answered with the first delivery's build.
-- builds.webhook names the webhook a build came from: its builds run one after another, in order.

CREATE TABLE webhook_deliveries (
    webhook     text NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    delivery    text NOT NULL,
    body_sha256 text NOT NULL,
    build       text NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    created     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE UNIQUE INDEX webhook_deliveries_delivery ON webhook_deliveries (webhook, delivery) WHERE delivery <> '';
CREATE UNIQUE INDEX webhook_deliveries_body ON webhook_deliveries (webhook, body_sha256);

ALTER TABLE builds ADD COLUMN webhook text NOT NULL DEFAULT '';
CREATE INDEX builds_webhook_started ON builds (webhook, started) WHERE webhook <> '';

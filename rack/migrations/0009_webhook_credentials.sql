-- A webhook's git credentials (from a repo URL like https://user:token@host/org/app.git) are kept sealed
-- with the rack's password, as a build's are, and `repo` holds the URL without them.

ALTER TABLE webhooks ADD COLUMN credentials text NOT NULL DEFAULT '';

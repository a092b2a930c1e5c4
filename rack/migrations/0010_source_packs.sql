-- Contents arrive in batches, and a batch is stored as one object (a pack): a content row says where
-- its bytes are (`pack`, from byte `at`). Rows with no pack name a content stored alone under its sha256.

ALTER TABLE source_contents ADD COLUMN pack text NOT NULL DEFAULT '';
ALTER TABLE source_contents ADD COLUMN at bigint NOT NULL DEFAULT 0;
CREATE INDEX source_contents_pack ON source_contents (app, pack) WHERE pack <> '';

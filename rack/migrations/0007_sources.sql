-- Content-addressed sources: file contents per app under their sha256 (stored in the object store), the
-- trees builds are made from (a manifest of paths naming those contents), and each build's input digest.

CREATE TABLE source_contents (
    app         text NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    sha256      text NOT NULL,
    size        bigint NOT NULL,
    used        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, sha256)
);

CREATE TABLE source_trees (
    app         text NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    digest      text NOT NULL,
    entries     jsonb NOT NULL,
    files       integer NOT NULL,
    bytes       bigint NOT NULL,
    used        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, digest)
);

CREATE INDEX source_contents_used ON source_contents (used);
CREATE INDEX source_trees_used ON source_trees (used);

ALTER TABLE builds ADD COLUMN inputs text NOT NULL DEFAULT '';
CREATE INDEX builds_app_inputs ON builds (app, inputs) WHERE status = 'complete' AND inputs <> '';

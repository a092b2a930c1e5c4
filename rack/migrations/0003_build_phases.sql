-- How long each phase of a build took, in seconds: {"fetch": 0.01, "extract": 0.02, "build": 3.1, "push": 0.4,
-- "release": 0.05}. Written by the worker as each phase ends, so a running or failed build shows the phases so far.

ALTER TABLE builds ADD COLUMN phases jsonb NOT NULL DEFAULT '{}'::jsonb;

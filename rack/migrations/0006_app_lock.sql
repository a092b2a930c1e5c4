-- A locked app (`convox apps lock`) cannot be deleted and its releases cannot be promoted until unlocked.

ALTER TABLE apps ADD COLUMN locked boolean NOT NULL DEFAULT false;

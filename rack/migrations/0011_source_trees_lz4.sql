-- A tree's listing (JSON of some 300 KB for 2,000 files) is written for every new tree and read by every
-- build made from it: lz4 stores it in about half the time pglz takes. A Postgres built without lz4
-- (or older than 14, which cannot choose) keeps pglz.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE source_trees ALTER COLUMN entries SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    NULL;
END
$$;

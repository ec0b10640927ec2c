-- Stream ids compare byte by byte (collation "C") whatever the database's locale. A rebuild reads
-- one stream type's streams as a range of the (stream_id, version) index ('order-' up to
-- 'order.'), which only holds in byte order: a locale such as en_US ignores the dash when it
-- compares. Byte order is also cheaper to compare, and cannot change under a C-library upgrade
-- (a known way for text indexes to go stale).
--
-- Postgres will not change the collation of a column that a generated column reads, so
-- stream_type is dropped and added back around the change; that rewrites the table once.
ALTER TABLE eventstore.events DROP COLUMN stream_type;
ALTER TABLE eventstore.events ALTER COLUMN stream_id TYPE text COLLATE "C";
ALTER TABLE eventstore.events
    ADD COLUMN stream_type text NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED;

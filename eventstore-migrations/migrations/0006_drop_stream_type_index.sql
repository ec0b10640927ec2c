-- Appends are the hot path, and every index is paid for on each one. Rebuilds and the lag
-- gauge read the global log in (transaction_id, position) order anyway and filter by stream
-- type cheaply there; a dedicated index for them cost appends more than it saved them.
DROP INDEX IF EXISTS eventstore.events_by_stream_type;

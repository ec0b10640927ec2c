-- Nothing reads `stream_type` any more: rebuilds scan a type's stream-id range, and the lag
-- below walks the global log. Computing and storing it was paid on every append.
--
-- read.lag walked every event of the type (a full scan of the table since the type index went
-- in 0006), every few seconds for the lag gauges. It now walks the global log index from the
-- projection's checkpoint, which is short for a projection that keeps up; the head of a
-- projection that has applied everything is its checkpoint.
CREATE OR REPLACE FUNCTION read.lag(p_stream_type text, p_transaction_id bigint, p_position bigint)
RETURNS TABLE (lag_events bigint, oldest_unapplied timestamptz, head_position bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           min(recorded_at),
           greatest(coalesce(max(position), 0), p_position)
    FROM eventstore.events
    WHERE (transaction_id, position) > (p_transaction_id::text::xid8, p_position)
      AND stream_id > (p_stream_type || '-') COLLATE "C"
      AND stream_id < (p_stream_type || '.') COLLATE "C"
$$;

ALTER TABLE eventstore.events DROP COLUMN stream_type;

-- How far a projection that has applied the log up to (p_transaction_id, p_position) is behind
-- the events of its stream type: events not yet applied, the oldest one's age, and the head.
CREATE FUNCTION read.lag(p_stream_type text, p_transaction_id bigint, p_position bigint)
RETURNS TABLE (lag_events bigint, oldest_unapplied timestamptz, head_position bigint)
LANGUAGE sql STABLE AS $$
    SELECT count(*) FILTER (WHERE (transaction_id, position) > (p_transaction_id::text::xid8, p_position)),
           min(recorded_at) FILTER (WHERE (transaction_id, position) > (p_transaction_id::text::xid8, p_position)),
           coalesce(max(position), 0)
    FROM eventstore.events
    WHERE stream_type = p_stream_type
$$;

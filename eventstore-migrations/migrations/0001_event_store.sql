-- The event store. One append-only table is both the source of truth and the outbox.
CREATE SCHEMA IF NOT EXISTS eventstore;

CREATE TABLE eventstore.events (
    -- Assigned from a sequence when the row is written; sequence order is NOT commit order,
    -- which is why readers of the global log order by (transaction_id, position) instead.
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      text        NOT NULL CHECK (stream_id ~ '^[a-z]+-.+$'),
    stream_type    text        NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
    version        bigint      NOT NULL CHECK (version > 0),
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL DEFAULT 1 CHECK (schema_version > 0),
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The writing transaction; a global-log reader stops below the oldest transaction that is
    -- still running, so an event that commits late is never passed over.
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, version),
    CONSTRAINT events_event_id_unique UNIQUE (event_id)
);

-- The global log's read order.
CREATE INDEX events_global_log ON eventstore.events (transaction_id, position);
-- Rebuilds of one projection read only the stream types it needs.
CREATE INDEX events_by_stream_type ON eventstore.events (stream_type, transaction_id, position);

-- Where each reader of the global log (the relay, a rebuild) has got to.
CREATE TABLE eventstore.checkpoints (
    name           text        PRIMARY KEY,
    transaction_id bigint      NOT NULL,
    position       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

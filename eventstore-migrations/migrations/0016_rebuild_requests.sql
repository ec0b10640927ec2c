-- Rebuilds asked for over HTTP (`POST /v1/admin/projections/{name}/rebuild`, the console). The
-- query API records the request; a projectors replica claims it (the projection's rebuild
-- advisory lock decides which), runs it and reports its progress here, so every replica of the
-- query API can show it. A replica that dies mid-rebuild releases the lock and another starts
-- the request over.
CREATE TABLE read.rebuilds (
    id uuid PRIMARY KEY,
    projection text NOT NULL,
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    events_total bigint,
    events_done bigint NOT NULL DEFAULT 0,
    finished_at timestamptz,
    -- 'rebuilt' or 'failed' once finished.
    outcome text CHECK (outcome IN ('rebuilt', 'failed')),
    version integer,
    error text,
    CHECK ((finished_at IS NULL) = (outcome IS NULL))
);
-- At most one open (not finished) request per projection: asking twice is answered with the
-- open one, never queued as a second rebuild.
CREATE UNIQUE INDEX rebuilds_one_open ON read.rebuilds (projection) WHERE finished_at IS NULL;
CREATE INDEX rebuilds_latest ON read.rebuilds (projection, requested_at DESC);

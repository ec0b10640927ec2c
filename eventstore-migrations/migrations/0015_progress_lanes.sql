-- Partitioned projectors (TILL_PARTITIONS > 1) commit batches of one projection concurrently,
-- one lane per partition. Each lane has a progress row of its own, so concurrent batches never
-- queue for one row's lock; a projection's progress is its furthest lane, its events the sum.
ALTER TABLE read.progress ADD COLUMN lane smallint NOT NULL DEFAULT 0;
ALTER TABLE read.progress DROP CONSTRAINT progress_pkey;
ALTER TABLE read.progress ADD PRIMARY KEY (projection, version, lane);

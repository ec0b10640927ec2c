-- Redis read models lose their data when Redis restarts without persistence (as compose runs
-- it) or is flushed. Each version of a Redis projection carries a marker in Redis, an epoch
-- written when the version is created; the value it must have is kept here, where it survives.
-- A missing or different marker means the version's data is gone, and the projectors rebuild
-- it from the event store (projectors/src/heal.rs).
CREATE TABLE read.redis_epochs (
    projection text    NOT NULL,
    version    integer NOT NULL,
    epoch      uuid    NOT NULL,
    PRIMARY KEY (projection, version)
);

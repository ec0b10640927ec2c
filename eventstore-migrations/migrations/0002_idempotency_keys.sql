-- Responses of commands sent with an Idempotency-Key, written in the same transaction as the
-- command's events: a retry of the same request gets the stored response, never a second effect.
CREATE SCHEMA IF NOT EXISTS commands;

CREATE TABLE commands.idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash bytea       NOT NULL,
    status       smallint    NOT NULL,
    headers      jsonb       NOT NULL,
    body         jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

-- For sweeping old keys.
CREATE INDEX idempotency_keys_created_at ON commands.idempotency_keys (created_at);

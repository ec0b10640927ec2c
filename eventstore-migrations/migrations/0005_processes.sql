-- Durable state of the process managers.
CREATE SCHEMA IF NOT EXISTS process;

-- Payment deadlines: one row per order awaiting payment. The deadline worker expires the order
-- and deletes the row in one transaction, so each deadline fires exactly once.
CREATE TABLE process.deadlines (
    order_id uuid        PRIMARY KEY,
    due_at   timestamptz NOT NULL
);
CREATE INDEX deadlines_due ON process.deadlines (due_at);

-- The simulated payment provider's own ledger (a real provider keeps this on its side): one
-- charge per payment id, whatever how often it is asked, which is what makes retries safe.
CREATE SCHEMA IF NOT EXISTS provider_sim;
CREATE TABLE provider_sim.charges (
    payment_id  uuid        PRIMARY KEY,
    amount      bigint      NOT NULL,
    currency    text        NOT NULL,
    outcome     text        NOT NULL,           -- captured | declined | refunded
    reference   text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now()
);

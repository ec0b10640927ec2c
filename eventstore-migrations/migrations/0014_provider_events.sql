-- Each payment provider event (a Stripe webhook) is recorded once it has been applied, so a
-- redelivered webhook is answered at once and changes nothing (processes/src/webhooks.rs).
CREATE TABLE process.provider_events (
    provider    text        NOT NULL,
    event_id    text        NOT NULL,
    event_type  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

-- Payments the provider has not decided yet (processing, or waiting for the customer), kept by
-- the order process until a webhook or the reconciliation brings the outcome: the
-- reconciliation asks the provider about those older than TILL_PAYMENT_RECONCILE_AFTER_SECS, so
-- a lost webhook never leaves an order unpaid forever (processes/src/reconcile.rs).
CREATE TABLE process.pending_payments (
    payment_id         uuid        PRIMARY KEY,
    provider_reference text        NOT NULL,
    since              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_payments_since ON process.pending_payments (since);

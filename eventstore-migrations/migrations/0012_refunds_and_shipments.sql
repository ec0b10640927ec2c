-- Partial refunds and shipments with tracking.
--
-- The simulated provider keeps every refund (one row per refund id, its idempotency key), as a
-- real provider does, and refuses refunds beyond what was captured.
CREATE TABLE provider_sim.refunds (
    refund_id   uuid        PRIMARY KEY,
    payment_id  uuid        NOT NULL REFERENCES provider_sim.charges (payment_id),
    amount      bigint      NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_by_payment ON provider_sim.refunds (payment_id);

-- The orders view shows an order's shipment, delivery, payments and refunds: one JSON document
-- (`fulfilment`, text like `lines` and `history`, see migration 0010) written whole by the
-- projector. Rows of existing versions start with an empty document; `till projections rebuild
-- orders` fills them from the events.
DO $$
DECLARE
    version_schema text;
BEGIN
    FOR version_schema IN
        SELECT table_schema FROM information_schema.tables
        WHERE table_name = 'orders' AND table_schema LIKE 'read\_orders\_v%'
    LOOP
        EXECUTE format('ALTER TABLE %I.orders ADD COLUMN IF NOT EXISTS fulfilment text NOT NULL DEFAULT ''{}''', version_schema);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION read.create_orders_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', target);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.orders (
            order_id     uuid        PRIMARY KEY,
            customer_id  text        NOT NULL,
            cart_id      uuid        NOT NULL,
            status       text        NOT NULL,
            total_amount bigint      NOT NULL,
            currency     text        NOT NULL,
            pay_by       timestamptz,
            payment_id   uuid,
            placed_at    timestamptz NOT NULL,
            updated_at   timestamptz NOT NULL,
            version      bigint      NOT NULL,
            -- JSON: [{product_id, sku, name, unit_price, quantity, line_total}], in line order
            lines        text        NOT NULL DEFAULT '[]',
            -- JSON: [{version, status, event, detail, at}], one entry per event, in version order
            history      text        NOT NULL DEFAULT '[]',
            -- JSON: {shipment, delivered_at, payments: [...], refunds: [...], refunded}
            fulfilment   text        NOT NULL DEFAULT '{}'
        )$f$, target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS orders_by_customer ON %I.orders (customer_id, order_id DESC)', target);
END $$;

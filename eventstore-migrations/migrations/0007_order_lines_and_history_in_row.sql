-- An order's lines and status history live in its own row, as JSON arrays already in the API's
-- shape, instead of in two side tables. Reading an order is then one row, and a projector writes
-- one row per order touched instead of one per line and per event besides (a rebuild of the
-- orders view wrote 2.7 rows per event, and Postgres's index upkeep for them was most of its time).
-- They are `json`, not `jsonb`: they are only ever stored and served whole, and `json` is kept as
-- written, where `jsonb` parses and re-sorts every document on the way in and prints it again on
-- the way out.
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
            -- [{product_id, sku, name, unit_price, quantity, line_total}], in line order
            lines        json        NOT NULL DEFAULT '[]',
            -- [{version, status, event, detail, at}], one entry per event, in version order
            history      json        NOT NULL DEFAULT '[]'
        )$f$, target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS orders_by_customer ON %I.orders (customer_id, order_id DESC)', target);
END $$;

-- Versions that exist already move their lines and history into the rows.
DO $$
DECLARE
    target text;
BEGIN
    FOR target IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'read\_orders\_v%' LOOP
        EXECUTE format($f$
            ALTER TABLE %I.orders
                ADD COLUMN IF NOT EXISTS lines json NOT NULL DEFAULT '[]',
                ADD COLUMN IF NOT EXISTS history json NOT NULL DEFAULT '[]'
        $f$, target);
        IF to_regclass(format('%I.order_lines', target)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE format($f$
            UPDATE %1$I.orders o SET
                lines = coalesce((
                    SELECT json_agg(json_build_object(
                               'product_id', l.product_id, 'sku', l.sku, 'name', l.name,
                               'unit_price', json_build_object('amount', l.unit_amount, 'currency', o.currency),
                               'quantity', l.quantity,
                               'line_total', json_build_object('amount', l.line_amount, 'currency', o.currency))
                           ORDER BY l.line_no)
                    FROM %1$I.order_lines l WHERE l.order_id = o.order_id), '[]'),
                history = coalesce((
                    SELECT json_agg(json_build_object(
                               'version', h.version, 'status', h.status, 'event', h.event_type,
                               'detail', h.detail, 'at', h.at)
                           ORDER BY h.version)
                    FROM %1$I.order_history h WHERE h.order_id = o.order_id), '[]')
        $f$, target);
        EXECUTE format('DROP TABLE %1$I.order_lines, %1$I.order_history', target);
    END LOOP;
END $$;

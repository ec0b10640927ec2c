-- Read models. Each Postgres projection keeps its tables in a versioned schema
-- (`read_products_v1`, `read_orders_v1`, …); `read.projections` says which version serves.
-- A rebuild fills a new version while the old one keeps serving, then flips the pointer in one
-- transaction. The table definitions live in the functions below so a rebuild creates exactly
-- what this migration created.
CREATE SCHEMA IF NOT EXISTS read;

CREATE TABLE read.projections (
    name            text        PRIMARY KEY,
    serving_version integer     NOT NULL,
    -- A rebuild in progress writes here; NULL when none runs.
    building_version integer,
    switched_at     timestamptz NOT NULL DEFAULT now()
);

-- How far each version of each projection has got in the global log, written in the same
-- transaction as the rows it stands for (used for lag; idempotency is per stream version).
CREATE TABLE read.progress (
    projection     text        NOT NULL,
    version        integer     NOT NULL,
    transaction_id bigint      NOT NULL DEFAULT 0,
    position       bigint      NOT NULL DEFAULT 0,
    events         bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, version)
);

CREATE FUNCTION read.create_products_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', target);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.products (
            product_id   uuid        PRIMARY KEY,
            sku          text        NOT NULL,
            name         text        NOT NULL,
            description  text        NOT NULL,
            category     text        NOT NULL,
            price_amount bigint      NOT NULL,
            currency     text        NOT NULL,
            available    bigint      NOT NULL,
            reserved     bigint      NOT NULL,
            discontinued boolean     NOT NULL,
            version      bigint      NOT NULL,
            created_at   timestamptz NOT NULL,
            updated_at   timestamptz NOT NULL,
            search       tsvector GENERATED ALWAYS AS (
                to_tsvector('simple', name || ' ' || description || ' ' || sku || ' ' || category)
            ) STORED
        )$f$, target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_search ON %I.products USING gin (search)', target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_category ON %I.products (category, product_id)', target);
END $$;

CREATE FUNCTION read.create_orders_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
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
            version      bigint      NOT NULL
        )$f$, target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS orders_by_customer ON %I.orders (customer_id, order_id DESC)', target);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.order_lines (
            order_id     uuid    NOT NULL,
            line_no      integer NOT NULL,
            product_id   uuid    NOT NULL,
            sku          text    NOT NULL,
            name         text    NOT NULL,
            unit_amount  bigint  NOT NULL,
            quantity     integer NOT NULL,
            line_amount  bigint  NOT NULL,
            PRIMARY KEY (order_id, line_no)
        )$f$, target);
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.order_history (
            order_id     uuid        NOT NULL,
            version      bigint      NOT NULL,
            status       text        NOT NULL,
            event_type   text        NOT NULL,
            detail       text,
            at           timestamptz NOT NULL,
            PRIMARY KEY (order_id, version)
        )$f$, target);
END $$;

SELECT read.create_products_tables('read_products_v1');
SELECT read.create_orders_tables('read_orders_v1');
INSERT INTO read.projections (name, serving_version) VALUES ('products', 1), ('orders', 1), ('carts', 1);
INSERT INTO read.progress (projection, version) VALUES ('products', 1), ('orders', 1), ('carts', 1);

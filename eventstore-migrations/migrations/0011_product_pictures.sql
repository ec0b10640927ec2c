-- Products have pictures (image_urls, a JSON array of URLs, written whole by the projector).
-- Every existing version of the products view gets the column, and so does every version made
-- from now on.
DO $$
DECLARE
    version_schema text;
BEGIN
    FOR version_schema IN
        SELECT table_schema FROM information_schema.tables
        WHERE table_name = 'products' AND table_schema LIKE 'read\_products\_v%'
    LOOP
        EXECUTE format('ALTER TABLE %I.products ADD COLUMN IF NOT EXISTS image_urls text NOT NULL DEFAULT ''[]''', version_schema);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION read.create_products_tables(target text) RETURNS void LANGUAGE plpgsql AS $$
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
            ) STORED,
            -- After search, where ADD COLUMN put it in the versions that existed before.
            image_urls   text        NOT NULL DEFAULT '[]'
        )$f$, target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_search ON %I.products USING gin (search)', target);
    EXECUTE format('CREATE INDEX IF NOT EXISTS products_category ON %I.products (category, product_id)', target);
END $$;

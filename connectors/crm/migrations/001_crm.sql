-- The sample CRM database: customers and their consents, as a CRM team keeps them.
-- Applied once by `passerelle up --with postgres` (deploy/local/postgres.py: migrate) in the
-- `crm` database; every migration runs in its own transaction and is recorded in
-- schema_migrations, so applying twice changes nothing.
--
-- Debezium reads these tables through the `passerelle_crm` publication (pgoutput).
-- Timestamps are timestamptz (Debezium: ISO-8601 strings), numbers have a precision
-- (a bare numeric would arrive as a struct).

CREATE TABLE customers (
    customer_id   text PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    email         text UNIQUE,
    first_name    text,
    last_name     text,
    gender        char(1) CHECK (gender IN ('F', 'M', 'X')),
    birth_date    date,
    csp           text,                     -- socio-professional category: executive, employee, worker, retired...
    loyalty_tier  text CHECK (loyalty_tier IN ('none', 'silver', 'gold', 'platinum')),
    postal_code   varchar(10),
    country       char(2) NOT NULL DEFAULT 'FR',
    lifetime_value numeric(12, 2) NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per customer and channel; marketing messages need email consent granted.
CREATE TABLE consents (
    customer_id  text NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    channel      text NOT NULL CHECK (channel IN ('email', 'sms', 'postal', 'phone')),
    granted      boolean NOT NULL,
    source       text,                      -- where it was given: web form, shop, call centre...
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, channel)
);

-- updated_at follows every change, whoever writes (the CRM's application, a script, psql).
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;
CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER consents_touch BEFORE UPDATE ON consents FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- A delete must tell Debezium the whole old row (who, which channel), not only the key.
ALTER TABLE customers REPLICA IDENTITY FULL;
ALTER TABLE consents REPLICA IDENTITY FULL;

-- What the platform writes back (CRM out): one row per customer, upserted by the
-- Debezium JDBC sink from the crm.web_activity topic; a tombstone deletes the row.
CREATE TABLE web_activity (
    customer_id           text PRIMARY KEY,
    last_visit_at         timestamptz,
    last_campaign         text,
    visits_30d            integer NOT NULL DEFAULT 0,
    orders_30d            integer NOT NULL DEFAULT 0,
    revenue_30d           numeric(12, 2) NOT NULL DEFAULT 0,
    abandoned_carts_30d   integer NOT NULL DEFAULT 0,
    remarketing_messages  integer NOT NULL DEFAULT 0,
    recovered_orders      integer NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL
);

CREATE PUBLICATION passerelle_crm FOR TABLE customers, consents;

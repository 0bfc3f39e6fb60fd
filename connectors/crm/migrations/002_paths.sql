-- Conversion paths and per-customer channels, written back by the platform (issue 14).
-- Like web_activity, these tables belong to the platform: the Debezium JDBC sinks
-- crm-paths-sink (topic crm.conversion_paths) and crm-channels-sink (crm.customer_channels)
-- upsert them by primary key, and a tombstone on the topic (an erased customer, a
-- conversion withdrawn) deletes the row. The CRM reads them; it must not write them,
-- the next record of the same key would overwrite its change.
--
-- Columns follow CrmConversionPath.avsc and CustomerChannels.avsc (same names; the sink
-- runs with schema.evolution=none, so a field the table lacks fails the record):
-- timestamp-millis -> timestamptz, money -> numeric(12, 2) as web_activity.revenue_30d,
-- the credits JSON string -> jsonb (the sink casts a string bound to a json/jsonb column).

-- One row per conversion of an identified customer, keyed by the conversion's id.
CREATE TABLE conversion_paths (
    conversion_id          text PRIMARY KEY,     -- order:<site>:<order id>, or the goal's and its hit's id
    customer_id            text NOT NULL,        -- the CRM's customer id (no foreign key: the platform erases it itself)
    order_id               text,                 -- set when the conversion is an order
    goal                   text,                 -- set when it is a configured goal
    converted_at           timestamptz NOT NULL,
    revenue                numeric(12, 2) NOT NULL DEFAULT 0,
    currency               text,                 -- ISO 4217 code; null for a goal without value
    path_length            integer NOT NULL,     -- touchpoints on the path
    time_to_conversion_ms  bigint NOT NULL,      -- first touchpoint -> conversion
    first_channel          text,
    last_channel           text,
    channels               text NOT NULL,        -- the path's channels in order, joined by ' > '
    credits                jsonb NOT NULL,       -- per attribution model: each touchpoint's credit and revenue share
    revision               integer NOT NULL DEFAULT 0,  -- > 0: re-emitted after a late touchpoint changed the path
    updated_at             timestamptz NOT NULL  -- when the platform computed this row
);
CREATE INDEX conversion_paths_customer ON conversion_paths (customer_id, converted_at DESC);

-- One row per customer: the channels that brought them over the lookback window.
CREATE TABLE customer_channels (
    customer_id         text PRIMARY KEY,
    first_channel       text,                    -- oldest touchpoint in the lookback window
    last_channel        text,                    -- latest touchpoint
    touchpoints         integer NOT NULL DEFAULT 0,
    channels            text NOT NULL DEFAULT '',  -- distinct channels, most recent first, joined by ', '
    last_conversion_id  text,                    -- conversion_paths.conversion_id of the last conversion
    last_conversion_at  timestamptz,
    updated_at          timestamptz NOT NULL
);

-- The sink's role writes these tables (the roles exist before any migration runs:
-- `passerelle up --with postgres` creates them; a database whose sink role is named otherwise grants it itself).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crm_sink') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON conversion_paths, customer_channels TO crm_sink;
    END IF;
END $$;

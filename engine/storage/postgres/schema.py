"""The PostgreSQL schema: one migration script per version, recorded in `schema_version`.

Everything is created unqualified, so it lands in the first schema of the connection's
search_path. Text that is compared or sorted uses the "C" collation (code point order, as
SQLite's BINARY) whatever the database's default. Every primary key and unique constraint
starts with tenant_id, so each table can be distributed by tenant (Citus) as it is;
`schema_version` has no key and would be a reference table.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "VERSION_TABLE"]

SCHEMA_VERSION = 1

VERSION_TABLE = """
CREATE TABLE schema_version (
    version integer NOT NULL,
    applied_at bigint NOT NULL
)
"""

_C = 'text COLLATE "C"'

_V1 = f"""
CREATE TABLE participants (
    tenant_id {_C} NOT NULL,
    id {_C} NOT NULL,
    type {_C} NOT NULL,
    unique_code {_C} NOT NULL,
    name {_C},
    owner {_C},
    category {_C},
    sub_category {_C},
    template_id {_C},
    state {_C} NOT NULL,
    properties text NOT NULL,
    version bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    state_entered_at bigint,
    created_by text,
    updated_by text,
    callback text,
    callback_secret text,
    archived_at bigint,
    timer_blocked_version bigint,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, type, unique_code)
);
CREATE INDEX participants_listing ON participants (tenant_id, type, created_at, id);
-- live participants by state and entry time, for the timers
CREATE INDEX participants_live_state ON participants (type, state, state_entered_at)
    WHERE archived_at IS NULL;

-- One row per indexed attribute value: a number in value_number (exact: numeric), or a string
-- in value_text.
-- B-tree entries are limited to about 2.7 kB, so strings are indexed by their first 200
-- characters (text_key) and compared in full on the rows the index finds.
CREATE TABLE attribute_index (
    tenant_id {_C} NOT NULL,
    type {_C} NOT NULL,
    name {_C} NOT NULL,
    participant_id {_C} NOT NULL,
    value_number numeric,
    value_text {_C},
    text_key {_C} GENERATED ALWAYS AS (left(value_text, 200)) STORED,
    PRIMARY KEY (tenant_id, type, name, participant_id),
    CHECK ((value_number IS NULL) <> (value_text IS NULL))
);
CREATE INDEX attribute_index_numbers
    ON attribute_index (tenant_id, type, name, value_number, participant_id)
    WHERE value_number IS NOT NULL;
CREATE INDEX attribute_index_strings
    ON attribute_index (tenant_id, type, name, text_key, participant_id)
    WHERE text_key IS NOT NULL;
CREATE INDEX attribute_index_participant ON attribute_index (tenant_id, type, participant_id);

-- seq: the order rows were appended in (not a key; ties to no tenant).
CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    tenant_id {_C} NOT NULL,
    id {_C} NOT NULL,
    participant_id {_C} NOT NULL,
    participant_type {_C},
    sequence bigint NOT NULL,
    version bigint NOT NULL,
    command_name {_C} NOT NULL,
    success boolean NOT NULL,
    request_id {_C},
    created_at bigint NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (tenant_id, participant_id, sequence),
    UNIQUE (tenant_id, id)
);
CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
-- Statement triggers: they fire even when no row matches, and for the UPDATE of an upsert.
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- The last event sequence number of each participant: taken with an upsert, so concurrent
-- writers queue on the row and the numbers stay contiguous (a rollback gives its number back).
CREATE TABLE event_sequences (
    tenant_id {_C} NOT NULL,
    participant_id {_C} NOT NULL,
    last bigint NOT NULL,
    PRIMARY KEY (tenant_id, participant_id)
);

CREATE TABLE idempotency (
    tenant_id {_C} NOT NULL,
    request_id {_C} NOT NULL,
    fingerprint text NOT NULL,
    status integer,
    response text,
    created_at bigint NOT NULL,
    lease_until bigint,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX idempotency_answered ON idempotency (created_at) WHERE response IS NOT NULL;

CREATE TABLE outbox (
    tenant_id {_C} NOT NULL,
    id bigserial NOT NULL,
    event_id {_C} NOT NULL,
    participant_id {_C} NOT NULL,
    kind text NOT NULL,
    url text NOT NULL,
    secret text,
    status text NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at bigint NOT NULL,
    created_at bigint NOT NULL,
    last_error text,
    lease_until bigint,
    lease_owner text,
    delivered_at bigint,
    method text,
    headers text,
    payload text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_leased ON outbox (lease_until) WHERE status = 'leased';
CREATE INDEX outbox_open ON outbox (tenant_id, participant_id, id)
    WHERE status IN ('pending', 'leased');

CREATE TABLE deliveries (
    tenant_id {_C} NOT NULL,
    id bigserial NOT NULL,
    outbox_id bigint NOT NULL,
    attempt integer NOT NULL,
    at bigint NOT NULL,
    status_code integer,
    error text,
    duration_ms integer,
    outcome text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX deliveries_by_outbox ON deliveries (tenant_id, outbox_id, attempt);

CREATE TABLE batches (
    tenant_id {_C} NOT NULL,
    id {_C} NOT NULL,
    type {_C} NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,
    total integer NOT NULL,
    success integer NOT NULL,
    failed integer NOT NULL,
    created_at bigint NOT NULL,
    completed_at bigint,
    request_id {_C} NOT NULL,
    user_info text,
    callback text,
    callback_secret text,
    token text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX batches_unfinished ON batches (created_at, id)
    WHERE status IN ('pending', 'processing');

CREATE TABLE batch_items (
    tenant_id {_C} NOT NULL,
    batch_id {_C} NOT NULL,
    idx integer NOT NULL,
    body text NOT NULL,
    status text NOT NULL,
    participant_id {_C},
    event_id {_C},
    reason text,
    error_code text,
    PRIMARY KEY (tenant_id, batch_id, idx)
);
CREATE INDEX batch_items_pending ON batch_items (tenant_id, batch_id, idx)
    WHERE status = 'pending';
"""

MIGRATIONS = {1: _V1}

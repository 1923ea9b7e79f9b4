-- payledger 0.1.0 -> 0.2.0: pay-ins and pay-outs (src/payin/), Nostr, BOLT11
-- and NIP-90 jobs (src/nostr/, src/bolt11.rs), invoices at payment providers
-- with the background worker (src/provider/, src/worker.rs), prepaid credits
-- (src/credits/), tamper-evident seals over the ledger (src/ledger/seal.sql),
-- and check_invariants() gathering every module's checks (src/invariants.sql).
-- The objects below are the 0.2.0 text of src/payin/schema.sql,
-- src/payin/api.sql, src/provider/*.sql and src/nostr/jobs.sql; tests/integration/upgrade.sh
-- proves the result equals a fresh 0.2.0 install. Released: never edit.

-- The ledger's checks keep their body under a new name; check_invariants()
-- now unions every module's checks.
ALTER FUNCTION payledger.check_invariants() RENAME TO ledger_invariants;
ALTER FUNCTION payledger.ledger_invariants() SECURITY INVOKER;
REVOKE ALL ON FUNCTION payledger.ledger_invariants() FROM payledger_admin;

-- A transfer's engine call is now a scalar (transfer_journal, below, with
-- engine_failure): the set-returning one goes.
DROP FUNCTION payledger.transfer_one(uuid, uuid, bigint, text, jsonb, timestamptz, text);

-- The entries' balance guard and the accounts' floor are now triggers in Rust
-- (entries_balance_guard, accounts_floor_guard, below).
DROP TRIGGER entries_guard ON payledger.entries;
DROP FUNCTION payledger.entries_guard();
ALTER TABLE payledger.accounts DROP CONSTRAINT accounts_floor;

-- The engine's statements now ask for generic plans themselves.
ALTER FUNCTION payledger.transfer_batch(jsonb) RESET plan_cache_mode;
ALTER FUNCTION payledger.apply_one(jsonb) RESET plan_cache_mode;
ALTER FUNCTION payledger.expire_holds(integer) RESET plan_cache_mode;

-- Only trusted logins may say which end user a session serves.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'payledger_identity') THEN
        CREATE ROLE payledger_identity NOLOGIN;
    END IF;
END;
$$;
CREATE OR REPLACE FUNCTION payledger.current_owner_id()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- settings anyone in the session can set: believed only from a login
    -- trusted to say who the end user is (a superuser, or a member of
    -- payledger_identity or payledger_app); anyone else is no one
    SELECT CASE WHEN r.rolsuper OR pg_has_role(r.oid, 'payledger_identity', 'MEMBER')
                     OR pg_has_role(r.oid, 'payledger_app', 'MEMBER')
                THEN coalesce(nullif(current_setting('payledger.owner_id', true), ''),
                              nullif(current_setting('request.jwt.claim.sub', true), ''),
                              nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub') END
      FROM pg_roles r WHERE r.rolname = session_user;
$$;

CREATE TYPE payledger.payin_state AS ENUM (
    'PENDING_INVOICE_CREATION', 'PENDING_INVOICE_WRAP', 'PENDING_WITHDRAWAL', 'PENDING', 'PENDING_HELD', 'HELD',
    'PAID', 'FAILED', 'FORWARDING', 'FORWARDED', 'FAILED_FORWARD', 'CANCELLED');

CREATE TYPE payledger.payin_failure_reason AS ENUM (
    'INVOICE_CREATION_FAILED', 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_FEE',
    'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY', 'INVOICE_WRAPPING_FAILED_UNKNOWN',
    'INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW', 'INVOICE_FORWARDING_FAILED', 'HELD_INVOICE_UNEXPECTED_ERROR',
    'HELD_INVOICE_SETTLED_TOO_SLOW', 'WITHDRAWAL_FAILED', 'USER_CANCELLED', 'SYSTEM_CANCELLED', 'INVOICE_EXPIRED',
    'EXECUTION_FAILED', 'UNKNOWN_FAILURE');

INSERT INTO payledger.account_kinds (kind, description, builtin) VALUES
    ('payin_escrow', 'custodial money of a payer''s pending pay-ins', true);

-- The one transition table: the state trigger allows exactly these moves, and
-- docs/payins.md prints it. A failure reason given on the way to FAILED or
-- CANCELLED wins over default_reason.
CREATE TABLE payledger.payin_transitions (
    from_state     payledger.payin_state NOT NULL,
    to_state       payledger.payin_state NOT NULL,
    default_reason payledger.payin_failure_reason,
    PRIMARY KEY (from_state, to_state)
);
INSERT INTO payledger.payin_transitions VALUES
    ('PENDING_INVOICE_CREATION', 'PENDING', NULL),
    ('PENDING_INVOICE_CREATION', 'PENDING_HELD', NULL),
    ('PENDING_INVOICE_CREATION', 'FAILED', 'INVOICE_CREATION_FAILED'),
    ('PENDING_INVOICE_WRAP', 'PENDING_HELD', NULL),
    ('PENDING_INVOICE_WRAP', 'FAILED', 'INVOICE_WRAPPING_FAILED_UNKNOWN'),
    ('PENDING', 'PAID', NULL),
    ('PENDING', 'CANCELLED', 'SYSTEM_CANCELLED'),
    ('PENDING', 'FAILED', 'UNKNOWN_FAILURE'),
    ('PENDING_HELD', 'HELD', NULL),
    ('PENDING_HELD', 'FORWARDING', NULL),
    ('PENDING_HELD', 'CANCELLED', 'SYSTEM_CANCELLED'),
    ('PENDING_HELD', 'FAILED', 'HELD_INVOICE_UNEXPECTED_ERROR'),
    ('HELD', 'PAID', NULL),
    ('HELD', 'CANCELLED', 'SYSTEM_CANCELLED'),
    ('HELD', 'FAILED', 'HELD_INVOICE_UNEXPECTED_ERROR'),
    ('FORWARDING', 'FORWARDED', NULL),
    ('FORWARDING', 'FAILED_FORWARD', 'INVOICE_FORWARDING_FAILED'),
    ('FORWARDED', 'PAID', NULL),
    ('FAILED_FORWARD', 'CANCELLED', 'INVOICE_FORWARDING_FAILED'),
    ('FAILED_FORWARD', 'FAILED', 'INVOICE_FORWARDING_FAILED'),
    ('CANCELLED', 'FAILED', 'SYSTEM_CANCELLED'),
    ('PENDING_WITHDRAWAL', 'PAID', NULL),
    ('PENDING_WITHDRAWAL', 'FAILED', 'WITHDRAWAL_FAILED');

-- Application-defined types (Stacker News' are an example in docs/payins.md).
CREATE TABLE payledger.payin_types (
    type           text PRIMARY KEY CHECK (type ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    description    text NOT NULL,
    -- may leave a remainder to an external rail (an invoice, a card)
    allow_external boolean NOT NULL DEFAULT true,
    -- fully covered pay-ins wait in PENDING_WITHDRAWAL for an outgoing payment
    withdrawal     boolean NOT NULL DEFAULT false,
    -- how many times a failed pay-in of this type may be retried (NULL: no limit)
    max_retries    integer CHECK (max_retries >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.payout_types (
    type        text PRIMARY KEY CHECK (type ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    description text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Declarative revenue splits: shares in percent of the cost, each floored to
-- a whole minor unit; what rounding leaves goes to remainder_role. A share
-- names a role, bound to an account when the pay-in is created, or a fixed
-- account (a platform's rewards pool).
CREATE TABLE payledger.split_rules (
    name           text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    shares         jsonb NOT NULL,
    remainder_role text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- No foreign keys on the hot tables: a key check takes a share lock on the
-- referenced row, and every pay-in would share-lock the same type rows. The
-- API validates references; the commit-time trigger and check_invariants()
-- verify them.
CREATE TABLE payledger.payins (
    id               uuid PRIMARY KEY,
    owner_id         text NOT NULL,  -- the payer
    type             text NOT NULL,
    asset            text NOT NULL,
    cost             bigint NOT NULL,
    state            payledger.payin_state NOT NULL,
    failure_reason   payledger.payin_failure_reason,
    initial_state    payledger.payin_state NOT NULL,
    state_changed_at timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    -- paid from balances at creation / owed on the external rail
    custodial_amount bigint NOT NULL,
    external_amount  bigint NOT NULL,
    external_method  text,
    -- where external money comes from when it arrives (a provider clearing account)
    external_account uuid,
    -- the provider's reference (payment hash, invoice id), once the invoice exists
    external_ref     text,
    -- set when the pay-in fails with an unpaid external leg: cancel it at the provider
    external_cancel  boolean NOT NULL DEFAULT false,
    escrow_account   uuid,
    -- journals: custodial legs into escrow, pay-outs credited, custodial legs returned
    open_journal     uuid,
    paid_journal     uuid,
    release_journal  uuid,
    -- refunded after PAID, by refund journals (payin_refunds)
    refunded         bigint NOT NULL DEFAULT 0,
    parent_id        uuid,
    genesis_id       uuid,
    predecessor_id   uuid,
    successor_id     uuid,
    retry_count      integer NOT NULL DEFAULT 0,
    retry_policy     text,
    idempotency_key  text,
    request_hash     bytea,
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- The rules every pay-in row keeps, checked by its guard trigger for each
-- INSERT and UPDATE (src/payin/api.sql), whoever writes it. They are not
-- CHECK constraints: PostgreSQL recompiles a table's CHECKs for every
-- statement that writes it, which cost a pay-in 15 % of its time (about 450k
-- instructions of 2.9M); the trigger's expression is compiled once per
-- session. The first rule broken, or NULL; a rule that is NULL holds, as in
-- a CHECK.
CREATE FUNCTION payledger.payin_row_violation(p payledger.payins)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN NOT (p.cost > 0 AND p.custodial_amount >= 0 AND p.external_amount >= 0 AND p.retry_count >= 0)
            THEN 'payin_amounts'
        WHEN NOT (p.custodial_amount + p.external_amount = p.cost) THEN 'payin_legs_cover_cost'
        WHEN NOT ((p.external_amount > 0) = (p.external_method IS NOT NULL)
                  AND (p.external_amount > 0) = (p.external_account IS NOT NULL)) THEN 'payin_external_method'
        -- custodial money that waits (not paid out at once) waits in escrow
        WHEN NOT (p.escrow_account IS NOT NULL OR p.initial_state = 'PAID' OR p.custodial_amount = 0) THEN 'payin_escrow'
        WHEN NOT (p.state NOT IN ('FAILED', 'CANCELLED') OR p.failure_reason IS NOT NULL) THEN 'payin_failed_has_reason'
        WHEN NOT ((p.state = 'PAID') = (p.paid_journal IS NOT NULL)) THEN 'payin_paid_journal'
        WHEN NOT ((p.state IN ('FAILED', 'CANCELLED') AND p.custodial_amount > 0) = (p.release_journal IS NOT NULL))
            THEN 'payin_released'
        WHEN NOT (p.refunded BETWEEN 0 AND p.cost AND (p.refunded = 0 OR p.state = 'PAID')) THEN 'payin_refunded'
        WHEN NOT ((p.predecessor_id IS NULL) = (p.genesis_id IS NULL)
                  AND (p.predecessor_id IS NULL) = (p.retry_count = 0)) THEN 'payin_retry_chain'
        -- while an invoice is owed, the balances paid less than the cost (and all of it otherwise)
        WHEN NOT (p.state IN ('PAID', 'FAILED', 'CANCELLED') OR (p.state = 'PENDING_WITHDRAWAL') = (p.external_amount = 0)
                  OR p.parent_id IS NOT NULL) THEN 'payin_pending_owes'
        WHEN NOT ((p.idempotency_key IS NULL) = (p.request_hash IS NULL)) THEN 'payin_key_has_hash'
    END;
$$;
-- Partial unique indexes: most pay-ins have no key, predecessor or successor,
-- and cost no entry in these. One successor per pay-in, one retry of each.
CREATE UNIQUE INDEX payins_idempotency_key ON payledger.payins (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX payins_successor ON payledger.payins (successor_id) WHERE successor_id IS NOT NULL;
CREATE UNIQUE INDEX payins_predecessor ON payledger.payins (predecessor_id) WHERE predecessor_id IS NOT NULL;
CREATE INDEX payins_owner_idx ON payledger.payins (owner_id, created_at);
CREATE INDEX payins_parent_idx ON payledger.payins (parent_id) WHERE parent_id IS NOT NULL;
-- the worker's queue (issue: providers) and the operators' view of open pay-ins
CREATE INDEX payins_pending_idx ON payledger.payins (state, state_changed_at) WHERE state NOT IN ('PAID', 'FAILED');

-- How the cost is paid, in order: custodial accounts of the payer, then at
-- most one external leg (the remainder).
CREATE TABLE payledger.payin_legs (
    payin_id   uuid NOT NULL,
    seq        smallint NOT NULL CHECK (seq >= 1),
    owner_id   text NOT NULL,
    method     text NOT NULL,  -- 'custodial' or the external rail ('invoice', 'card', …)
    account_id uuid,           -- the custodial account
    amount     bigint NOT NULL CHECK (amount >= 0),
    options    jsonb,          -- the method as asked for (order, rounding unit, p2p)
    PRIMARY KEY (payin_id, seq),
    CHECK ((method = 'custodial') = (account_id IS NOT NULL))
);

-- Earnings declared with the pay-in and credited by its paid journal.
CREATE TABLE payledger.payouts (
    payin_id   uuid NOT NULL,
    seq        smallint NOT NULL CHECK (seq >= 1),
    type       text NOT NULL,
    account_id uuid NOT NULL,
    owner_id   text NOT NULL,  -- the payee
    amount     bigint NOT NULL CHECK (amount > 0),
    role       text,           -- the split rule's role, when a rule made it
    PRIMARY KEY (payin_id, seq)
);
CREATE INDEX payouts_owner_idx ON payledger.payouts (owner_id);

-- Money given back: custodial legs released at FAILED/CANCELLED (kind
-- 'release', seq = the leg), and refunds of a PAID pay-in (kind 'refund',
-- seq = the pay-out it takes back from).
CREATE TABLE payledger.payin_refunds (
    payin_id        uuid NOT NULL,
    journal_id      uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('release', 'refund')),
    seq             smallint NOT NULL,
    owner_id        text NOT NULL,
    from_account    uuid NOT NULL,
    to_account      uuid NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    reason          text,
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payin_id, journal_id, seq)
);

-- Every state a pay-in enters, with the time and reason (creation included:
-- from_state NULL). States never repeat, so (payin_id, to_state) is a key.
CREATE TABLE payledger.payin_history (
    payin_id       uuid NOT NULL,
    to_state       payledger.payin_state NOT NULL,
    from_state     payledger.payin_state,
    owner_id       text NOT NULL,
    failure_reason payledger.payin_failure_reason,
    at             timestamptz NOT NULL,
    PRIMARY KEY (payin_id, to_state)
);

CREATE TRIGGER payin_legs_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payin_legs
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER payouts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payouts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER payin_refunds_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payin_refunds
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER payin_history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payin_history
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER payins_no_delete BEFORE DELETE OR TRUNCATE ON payledger.payins
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();

ALTER TABLE payledger.payin_transitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payout_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.split_rules ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payins ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_legs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payouts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_refunds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_history ENABLE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('payledger.payin_types', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payout_types', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.split_rules', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payins', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_legs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payouts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_refunds', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_history', '');

-- The new functions written in Rust (as cargo pgrx generates them).
-- payledger::nostr::bip340_verify
CREATE  FUNCTION "bip340_verify"(
	"pubkey" bytea, /* & [u8] */
	"message" bytea, /* & [u8] */
	"signature" bytea /* & [u8] */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bip340_verify_wrapper';
-- payledger::bolt11::bolt11_create
CREATE  FUNCTION "bolt11_create"(
	"secret_key" bytea, /* Option < & [u8] > */
	"amount_msat" bigint, /* Option < i64 > */
	"payment_hash" bytea, /* Option < & [u8] > */
	"description" TEXT DEFAULT NULL, /* Option < String > */
	"description_hash" bytea DEFAULT NULL, /* Option < & [u8] > */
	"expiry_seconds" bigint DEFAULT 3600, /* Option < i64 > */
	"network" TEXT DEFAULT 'bitcoin', /* Option < & str > */
	"created_at" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS TEXT /* String */
VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bolt11_create_wrapper';
-- payledger::bolt11::bolt11_decode
CREATE  FUNCTION "bolt11_decode"(
	"invoice" TEXT /* & str */
) RETURNS TABLE (
	"network" TEXT,  /* & '_ str */
	"amount_msat" bigint,  /* Option < i64 > */
	"payment_hash" TEXT,  /* String */
	"description" TEXT,  /* Option < String > */
	"description_hash" TEXT,  /* Option < String > */
	"created_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"expiry_seconds" bigint,  /* i64 */
	"expires_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"payee" TEXT,  /* String */
	"min_final_cltv_expiry" bigint  /* i64 */
)
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'bolt11_decode_wrapper';
-- payledger::ledger::engine_failure
CREATE  FUNCTION "engine_failure"() RETURNS TABLE (
	"sqlstate" TEXT,  /* Option < & '_ str > */
	"message" TEXT,  /* Option < String > */
	"detail" TEXT  /* Option < String > */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'engine_failure_wrapper';
-- payledger::provider::json_readable
CREATE  FUNCTION "json_readable"(
	"value" jsonb /* JsonArg */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'json_readable_wrapper';
-- payledger::nostr::nostr_event_id
CREATE  FUNCTION "nostr_event_id"(
	"event" jsonb /* JsonArg */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'nostr_event_id_wrapper';
-- payledger::nostr::nostr_sign_event
CREATE  FUNCTION "nostr_sign_event"(
	"event" jsonb, /* JsonArg */
	"secret_key" bytea /* & [u8] */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'nostr_sign_event_wrapper';
-- payledger::nostr::nostr_verify_event
CREATE  FUNCTION "nostr_verify_event"(
	"event" jsonb /* JsonArg */
) RETURNS bool /* bool */
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'nostr_verify_event_wrapper';
-- payledger::payin::payin_create_core
CREATE  FUNCTION "payin_create_core"(
	"payer" TEXT, /* Option < String > */
	"payin_type" TEXT, /* Option < String > */
	"asset" TEXT, /* Option < String > */
	"cost" bigint, /* Option < i64 > */
	"methods" jsonb, /* Option < JsonArg > */
	"payouts" jsonb, /* Option < JsonArg > */
	"split" TEXT, /* Option < String > */
	"payees" jsonb, /* Option < JsonArg > */
	"idempotency_key" TEXT, /* Option < String > */
	"parent" uuid, /* Option < Uuid > */
	"metadata" jsonb, /* Option < JsonArg > */
	"predecessor" uuid, /* Option < Uuid > */
	"genesis" uuid, /* Option < Uuid > */
	"retry_count" INT, /* Option < i32 > */
	"retry_policy" TEXT /* Option < String > */
) RETURNS TABLE (
	"payin_id" uuid,  /* Option < Uuid > */
	"state" TEXT,  /* Option < String > */
	"custodial_amount" bigint,  /* Option < i64 > */
	"external_amount" bigint,  /* Option < i64 > */
	"replayed" bool,  /* Option < bool > */
	"sqlstate" TEXT,  /* Option < & '_ str > */
	"message" TEXT,  /* Option < String > */
	"detail" TEXT  /* Option < String > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'payin_create_core_wrapper';
-- payledger::provider::provider_call
CREATE  FUNCTION "provider_call"(
	"claims" jsonb /* JsonArg */
) RETURNS jsonb /* JsonB */
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'provider_call_wrapper';
-- payledger::payin::split_payouts_core
CREATE  FUNCTION "split_payouts_core"(
	"rule" TEXT, /* String */
	"cost" bigint, /* i64 */
	"payees" jsonb /* Option < JsonArg > */
) RETURNS TABLE (
	"payouts" jsonb,  /* Option < JsonB > */
	"sqlstate" TEXT,  /* Option < & '_ str > */
	"message" TEXT,  /* Option < String > */
	"detail" TEXT  /* Option < String > */
)
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'split_payouts_core_wrapper';
-- payledger::ledger::transfer_journal
CREATE  FUNCTION "transfer_journal"(
	"from_account" uuid, /* Option < Uuid > */
	"to_account" uuid, /* Option < Uuid > */
	"amount" bigint, /* Option < i64 > */
	"idempotency_key" TEXT, /* Option < String > */
	"metadata" jsonb, /* Option < JsonArg > */
	"effective_at" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"kind" TEXT /* Option < String > */
) RETURNS uuid /* Option < Uuid > */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'transfer_journal_wrapper';
-- payledger::nostr::verify_zap_receipt
CREATE  FUNCTION "verify_zap_receipt"(
	"receipt" jsonb, /* Option < JsonArg > */
	"lnurl_pubkey" TEXT, /* Option < & str > */
	"recipient" TEXT DEFAULT NULL, /* Option < & str > */
	"expected_amount_msat" bigint DEFAULT NULL, /* Option < i64 > */
	"expected_event" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"valid" bool,  /* bool */
	"failures" TEXT[],  /* Vec < String > */
	"amount_msat" bigint,  /* Option < i64 > */
	"payer_pubkey" TEXT,  /* Option < String > */
	"payment_hash" TEXT,  /* Option < String > */
	"receipt_id" TEXT,  /* Option < String > */
	"request_id" TEXT,  /* Option < String > */
	"description_hash_present" bool,  /* bool */
	"description_hash_matches" bool,  /* Option < bool > */
	"preimage_matches" bool,  /* Option < bool > */
	"request_lnurl" TEXT,  /* Option < String > */
	"timing_ok" bool  /* Option < bool > */
)
IMMUTABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_zap_receipt_wrapper';
-- payledger::provider::webhook_verify_core
CREATE  FUNCTION "webhook_verify_core"(
	"kind" TEXT, /* & str */
	"secret" TEXT, /* Option < & str > */
	"headers" jsonb, /* JsonArg */
	"body" TEXT /* & str */
) RETURNS TABLE (
	"sqlstate" TEXT,  /* Option < String > */
	"message" TEXT,  /* Option < String > */
	"reference" TEXT,  /* Option < String > */
	"event" TEXT,  /* Option < String > */
	"signed" bool,  /* Option < bool > */
	"action" TEXT,  /* Option < String > */
	"received" bigint,  /* Option < i64 > */
	"note" TEXT  /* Option < String > */
)
STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'webhook_verify_core_wrapper';
-- payledger::ledger::guard::accounts_floor_guard
CREATE FUNCTION "accounts_floor_guard"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'accounts_floor_guard_wrapper';
-- payledger::ledger::guard::entries_balance_guard
CREATE FUNCTION "entries_balance_guard"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'entries_balance_guard_wrapper';

-- Tamper evidence. Entries (with their journals) are sealed into
-- hash-chained blocks, off the hot path: the worker's housekeeping calls
-- seal_ledger() each tick. A block records, for each account row with new
-- entries, the range of seq it seals and a SHA-256 digest of each entry;
-- its hash covers the previous block's hash and every range. verify_ledger()
-- recomputes all of it and names what was altered. Someone who can rewrite
-- the entries and every seal after them can forge a consistent chain: keep
-- ledger_head() somewhere else (a log, another system) to catch that too.
-- See docs/reliability.md.

CREATE TABLE payledger.ledger_blocks (
    block_no  bigint PRIMARY KEY CHECK (block_no > 0),
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL,
    entries   integer NOT NULL CHECK (entries > 0),
    sealed_at timestamptz NOT NULL DEFAULT now()
);

-- The entries from_seq .. to_seq of one account row, sealed by a block, and
-- each one's digest (in seq order).
CREATE TABLE payledger.ledger_block_ranges (
    block_no   bigint NOT NULL REFERENCES payledger.ledger_blocks,
    account_id uuid NOT NULL,
    from_seq   bigint NOT NULL CHECK (from_seq > 0),
    to_seq     bigint NOT NULL,
    digests    bytea[] NOT NULL,
    PRIMARY KEY (block_no, account_id),
    CHECK (to_seq >= from_seq AND cardinality(digests) = to_seq - from_seq + 1)
);
CREATE INDEX ledger_block_ranges_account ON payledger.ledger_block_ranges (account_id, from_seq);

-- How far each account row is sealed (derived: the ranges are the record).
CREATE TABLE payledger.ledger_seal_marks (
    account_id uuid PRIMARY KEY,
    sealed_seq bigint NOT NULL
);

ALTER TABLE payledger.ledger_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.ledger_block_ranges ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.ledger_seal_marks ENABLE ROW LEVEL SECURITY;
CREATE TRIGGER ledger_blocks_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.ledger_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER ledger_block_ranges_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.ledger_block_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_blocks', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_block_ranges', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_seal_marks', '');

-- An entry's digest: SHA-256 of a canonical JSON array of its columns and its
-- journal's (times as epoch microseconds: the text of a timestamptz depends
-- on the session's time zone).
CREATE FUNCTION payledger.entry_digest(e payledger.entries, j payledger.journals)
RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT sha256(convert_to(jsonb_build_array(
        e.account_id, e.seq, e.journal_id, e.owner_id, e.asset, e.amount, e.balance_after,
        (extract(epoch FROM e.effective_at) * 1000000)::bigint, (extract(epoch FROM e.effective_max) * 1000000)::bigint,
        j.id, j.kind, j.idempotency_key, encode(j.request_hash, 'hex'), j.hold_id, j.metadata,
        (extract(epoch FROM j.effective_at) * 1000000)::bigint, (extract(epoch FROM j.created_at) * 1000000)::bigint,
        j.entry_accounts, j.entry_seqs)::text, 'UTF8'));
$$;

-- A range's part of its block's hash.
CREATE FUNCTION payledger.range_hash(account_id uuid, from_seq bigint, to_seq bigint, digests bytea[])
RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT uuid_send(account_id) || int8send(from_seq) || int8send(to_seq)
           || sha256((SELECT string_agg(d.d, ''::bytea ORDER BY d.o) FROM unnest(digests) WITH ORDINALITY AS d(d, o)));
$$;

-- Seal the entries committed since the last block, up to max_entries (whole
-- account rows first, in id order; the rest at the next call) into one
-- block, whose hash is SHA-256 of the previous block's hash, its number and
-- its ranges' hashes in account order. An account row's entries commit in
-- seq order (the row stays locked until then), so what this snapshot sees of
-- a row is a prefix of it. Returns the entries sealed (0: nothing new; no
-- block). One sealer at a time.
CREATE FUNCTION payledger.seal_ledger(max_entries integer DEFAULT 100000)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prev payledger.ledger_blocks;
    n bigint;
    sealed bigint;
BEGIN
    IF max_entries IS NULL OR max_entries < 1 THEN
        RAISE EXCEPTION 'max_entries must be positive' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.seal', 0));
    SELECT * INTO prev FROM payledger.ledger_blocks x ORDER BY x.block_no DESC LIMIT 1;
    n := coalesce(prev.block_no, 0) + 1;
    WITH todo AS (
        SELECT a.id, coalesce(m.sealed_seq, 0) + 1 AS from_seq, a.entry_count AS last_seq,
               sum(a.entry_count - coalesce(m.sealed_seq, 0)) OVER (ORDER BY a.id) AS upto
          FROM payledger.accounts a LEFT JOIN payledger.ledger_seal_marks m ON m.account_id = a.id
         WHERE a.entry_count > coalesce(m.sealed_seq, 0)),
    ranges AS (
        SELECT t.id, t.from_seq, least(t.last_seq, t.last_seq - (t.upto - max_entries))::bigint AS to_seq
          FROM todo t WHERE t.upto - (t.last_seq - t.from_seq + 1) < max_entries),
    dig AS (
        SELECT r.id, r.from_seq, r.to_seq,
               (SELECT array_agg(payledger.entry_digest(e, j) ORDER BY e.seq)
                  FROM payledger.entries e JOIN payledger.journals j ON j.id = e.journal_id
                 WHERE e.account_id = r.id AND e.seq BETWEEN r.from_seq AND r.to_seq) AS digests
          FROM ranges r),
    blk AS (
        INSERT INTO payledger.ledger_blocks (block_no, prev_hash, hash, entries)
        SELECT n, coalesce(prev.hash, ''::bytea),
               sha256(coalesce(prev.hash, ''::bytea) || int8send(n)
                      || string_agg(payledger.range_hash(d.id, d.from_seq, d.to_seq, d.digests), ''::bytea ORDER BY d.id)),
               sum(cardinality(d.digests))
          FROM dig d HAVING count(*) > 0
        RETURNING entries),
    rng AS (
        INSERT INTO payledger.ledger_block_ranges (block_no, account_id, from_seq, to_seq, digests)
        SELECT n, d.id, d.from_seq, d.to_seq, d.digests FROM dig d)
    INSERT INTO payledger.ledger_seal_marks AS m (account_id, sealed_seq)
    SELECT d.id, d.to_seq FROM dig d
    ON CONFLICT ON CONSTRAINT ledger_seal_marks_pkey DO UPDATE SET sealed_seq = excluded.sealed_seq;
    GET DIAGNOSTICS sealed = ROW_COUNT;
    RETURN CASE WHEN sealed > 0 THEN (SELECT b.entries FROM payledger.ledger_blocks b WHERE b.block_no = n) ELSE 0 END;
END;
$$;

-- The chain's head: publish it elsewhere now and then, to catch a rewrite of
-- the seals themselves.
CREATE FUNCTION payledger.ledger_head(OUT block_no bigint, OUT hash text, OUT sealed_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT b.block_no, encode(b.hash, 'hex'), b.sealed_at FROM payledger.ledger_blocks b ORDER BY b.block_no DESC LIMIT 1;
$$;

-- Every discrepancy between the seals and the ledger, in chain order (the
-- first row is the first thing altered); empty when all is intact:
--   block_altered   a block's hash does not follow from its ranges
--   chain_broken    a block's prev_hash is not the previous block's hash
--   entry_altered   an entry (or its journal) differs from what was sealed
--   entry_missing   a sealed entry is gone
--   range_gap       an account row's ranges do not follow one another
CREATE FUNCTION payledger.verify_ledger()
RETURNS TABLE (block_no bigint, problem text, account_id uuid, seq bigint, journal_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT x.block_no, x.problem, x.account_id, x.seq, x.journal_id FROM (
        SELECT b.block_no, 'block_altered' AS problem, NULL::uuid AS account_id, NULL::bigint AS seq, NULL::uuid AS journal_id, 1 AS o
          FROM payledger.ledger_blocks b
         WHERE b.hash IS DISTINCT FROM
               (SELECT sha256(b.prev_hash || int8send(b.block_no)
                              || string_agg(payledger.range_hash(r.account_id, r.from_seq, r.to_seq, r.digests), ''::bytea
                                            ORDER BY r.account_id))
                  FROM payledger.ledger_block_ranges r WHERE r.block_no = b.block_no)
        UNION ALL
        SELECT b.block_no, 'chain_broken', NULL, NULL, NULL, 0
          FROM payledger.ledger_blocks b
          LEFT JOIN payledger.ledger_blocks p ON p.block_no = b.block_no - 1
         WHERE b.prev_hash IS DISTINCT FROM coalesce(p.hash, CASE WHEN b.block_no = 1 THEN ''::bytea END)
        UNION ALL
        SELECT r.block_no, CASE WHEN e.seq IS NULL THEN 'entry_missing' ELSE 'entry_altered' END,
               r.account_id, r.from_seq + d.o - 1, e.journal_id, 2
          FROM payledger.ledger_block_ranges r
         CROSS JOIN LATERAL unnest(r.digests) WITH ORDINALITY AS d(digest, o)
          LEFT JOIN payledger.entries e ON e.account_id = r.account_id AND e.seq = r.from_seq + d.o - 1
          LEFT JOIN payledger.journals j ON j.id = e.journal_id
         WHERE e.seq IS NULL OR j.id IS NULL OR payledger.entry_digest(e, j) <> d.digest
        UNION ALL
        SELECT r.block_no, 'range_gap', r.account_id, r.from_seq, NULL, 3
          FROM payledger.ledger_block_ranges r
         WHERE r.from_seq <> 1 + coalesce((SELECT max(p.to_seq) FROM payledger.ledger_block_ranges p
                                            WHERE p.account_id = r.account_id AND p.block_no < r.block_no), 0)
    ) x
    ORDER BY x.block_no, x.o, x.account_id, x.seq;
$$;

-- payledger pay-ins: registries, creation, the state trigger, transitions,
-- refunds, retries, statistics and audit. See docs/payins.md.

---------------------------------------------------------------------------
-- Argument helpers (22023 on a bad shape, never a cast error)
---------------------------------------------------------------------------

-- A batch size or limit: NULL is 22004, less than 1 is 22023.
CREATE FUNCTION payledger.require_limit(value integer, name text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', name USING ERRCODE = '22004';
    END IF;
    IF value < 1 THEN
        RAISE EXCEPTION '% must be a positive integer, got %', name, value USING ERRCODE = '22023';
    END IF;
END;
$$;

CREATE FUNCTION payledger.json_uuid(v jsonb, what text)
RETURNS uuid LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(v) = 'string'
       AND (v #>> '{}') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN (v #>> '{}')::uuid;
    END IF;
    RAISE EXCEPTION '% must be a uuid string, got %', what, coalesce(left(v::text, 60), 'nothing')
        USING ERRCODE = '22023';
END;
$$;

---------------------------------------------------------------------------
-- Registries (operators)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.register_payin_type(
    type           text,
    description    text,
    allow_external boolean DEFAULT true,
    withdrawal     boolean DEFAULT false,
    max_retries    integer DEFAULT 5)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    existing payledger.payin_types;
BEGIN
    PERFORM payledger.require(type, 'type');
    PERFORM payledger.require(description, 'description');
    IF type !~ '^[A-Za-z][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pay-in type % is not valid', quote_literal(type) USING ERRCODE = '22023';
    END IF;
    IF max_retries < 0 OR allow_external IS NULL OR withdrawal IS NULL THEN
        RAISE EXCEPTION 'max_retries must be >= 0 (or NULL), the flags not null' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payin_types AS t (type, description, allow_external, withdrawal, max_retries)
    VALUES (register_payin_type.type, register_payin_type.description, register_payin_type.allow_external,
            register_payin_type.withdrawal, register_payin_type.max_retries)
    ON CONFLICT ON CONSTRAINT payin_types_pkey DO NOTHING;
    SELECT * INTO existing FROM payledger.payin_types t WHERE t.type = register_payin_type.type;
    IF (existing.allow_external, existing.withdrawal, existing.max_retries)
       IS DISTINCT FROM (allow_external, withdrawal, max_retries) THEN
        RAISE EXCEPTION 'pay-in type % already exists with other settings', type USING ERRCODE = 'PL014';
    END IF;
    RETURN type;
END;
$$;

CREATE FUNCTION payledger.register_payout_type(type text, description text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(type, 'type');
    PERFORM payledger.require(description, 'description');
    IF type !~ '^[A-Za-z][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pay-out type % is not valid', quote_literal(type) USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payout_types AS t (type, description)
    VALUES (register_payout_type.type, register_payout_type.description)
    ON CONFLICT ON CONSTRAINT payout_types_pkey DO NOTHING;
    RETURN type;
END;
$$;

-- shares: [{"role": "founder", "payout_type": "TERRITORY_REVENUE", "percent": 21}, …,
--          {"role": "pool", "payout_type": "REWARDS_POOL", "percent": 9, "account": "<uuid>"}]
-- Percents are exact numerics that sum to 100; each share is floored to a whole
-- minor unit and the rounding remainder goes to remainder_role.
CREATE FUNCTION payledger.define_split_rule(name text, shares jsonb, remainder_role text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s jsonb;
    total numeric := 0;
    roles text[] := '{}';
    existing payledger.split_rules;
    pct numeric;
BEGIN
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(shares, 'shares');
    PERFORM payledger.require(remainder_role, 'remainder_role');
    IF name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'split rule name % is not valid', quote_literal(name) USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(shares) <> 'array' OR jsonb_array_length(shares) = 0 THEN
        RAISE EXCEPTION 'shares must be a non-empty JSON array' USING ERRCODE = '22023';
    END IF;
    FOR s IN SELECT value FROM jsonb_array_elements(shares) LOOP
        IF jsonb_typeof(s) <> 'object' OR jsonb_typeof(s -> 'role') <> 'string' OR jsonb_typeof(s -> 'percent') <> 'number'
           OR jsonb_typeof(s -> 'payout_type') <> 'string' THEN
            RAISE EXCEPTION 'each share needs "role", "payout_type" and a numeric "percent": %', s USING ERRCODE = '22023';
        END IF;
        pct := (s ->> 'percent')::numeric;
        IF pct <= 0 OR pct > 100 THEN
            RAISE EXCEPTION 'a share''s percent must be in (0, 100], got %', pct USING ERRCODE = '22023';
        END IF;
        IF (s ->> 'role') = ANY (roles) THEN
            RAISE EXCEPTION 'role % appears twice', s ->> 'role' USING ERRCODE = '22023';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM payledger.payout_types t WHERE t.type = s ->> 'payout_type') THEN
            RAISE EXCEPTION 'pay-out type % is not registered', quote_literal(s ->> 'payout_type') USING ERRCODE = 'PL022';
        END IF;
        IF s ? 'account' AND NOT EXISTS (SELECT 1 FROM payledger.accounts a
                                         WHERE a.id = payledger.json_uuid(s -> 'account', 'account')
                                           AND a.parent_id IS NULL) THEN
            RAISE EXCEPTION 'account % does not exist', s ->> 'account' USING ERRCODE = 'PL002';
        END IF;
        roles := roles || (s ->> 'role');
        total := total + pct;
    END LOOP;
    IF total <> 100 THEN
        RAISE EXCEPTION 'shares must sum to 100 percent, got %', total USING ERRCODE = '22023';
    END IF;
    IF NOT remainder_role = ANY (roles) THEN
        RAISE EXCEPTION 'remainder_role % is not one of the shares'' roles', quote_literal(remainder_role)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.split_rules AS r (name, shares, remainder_role)
    VALUES (define_split_rule.name, define_split_rule.shares, define_split_rule.remainder_role)
    ON CONFLICT ON CONSTRAINT split_rules_pkey DO NOTHING;
    SELECT * INTO existing FROM payledger.split_rules r WHERE r.name = define_split_rule.name;
    IF existing.shares <> shares OR existing.remainder_role <> remainder_role THEN
        RAISE EXCEPTION 'split rule % already exists with other shares', name USING ERRCODE = 'PL014';
    END IF;
    RETURN name;
END;
$$;

-- The pay-outs a split rule gives for a cost: [{"type", "account", "amount", "role"}]
-- (what create_payin computes with split => rule; a preview).
CREATE FUNCTION payledger.split_payouts(rule text, cost bigint, payees jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM payledger.require(rule, 'split');
    PERFORM payledger.require(cost, 'cost');
    SELECT * INTO r FROM payledger.split_payouts_core(rule, cost, payees);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    RETURN r.payouts;
END;
$$;

---------------------------------------------------------------------------
-- Money of a transition (called by the state trigger)
---------------------------------------------------------------------------

-- PAID: the escrowed custodial part and the external part go to the pay-outs.
CREATE FUNCTION payledger.payin_pay_out(p payledger.payins)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    postings jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object('account', o.account_id, 'amount', o.amount) ORDER BY o.seq) INTO postings
      FROM payledger.payouts o WHERE o.payin_id = p.id;
    IF p.custodial_amount > 0 THEN
        postings := postings || jsonb_build_object('account', p.escrow_account, 'amount', -p.custodial_amount);
    END IF;
    IF p.external_amount > 0 THEN
        postings := postings || jsonb_build_object('account', p.external_account, 'amount', -p.external_amount);
    END IF;
    RETURN (payledger.apply_one(jsonb_build_object(
        'postings', postings, 'kind', 'payin_paid', 'metadata', jsonb_build_object('payin', p.id)))).journal_id;
END;
$$;

-- FAILED or CANCELLED: every custodial leg goes back to its account, in one
-- journal, with a refund record per leg.
CREATE FUNCTION payledger.payin_release(p payledger.payins)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    postings jsonb;
    j uuid;
BEGIN
    SELECT jsonb_agg(jsonb_build_object('account', l.account_id, 'amount', l.amount) ORDER BY l.seq) INTO postings
      FROM payledger.payin_legs l WHERE l.payin_id = p.id AND l.method = 'custodial' AND l.amount > 0;
    postings := postings || jsonb_build_object('account', p.escrow_account, 'amount', -p.custodial_amount);
    j := (payledger.apply_one(jsonb_build_object(
        'postings', postings, 'kind', 'payin_release', 'metadata', jsonb_build_object('payin', p.id)))).journal_id;
    INSERT INTO payledger.payin_refunds (payin_id, journal_id, kind, seq, owner_id, from_account, to_account, amount, reason)
    SELECT p.id, j, 'release', l.seq, p.owner_id, p.escrow_account, l.account_id, l.amount, p.failure_reason::text
      FROM payledger.payin_legs l WHERE l.payin_id = p.id AND l.method = 'custodial' AND l.amount > 0;
    RETURN j;
END;
$$;

---------------------------------------------------------------------------
-- The state trigger: any UPDATE of a pay-in, whoever runs it
---------------------------------------------------------------------------

CREATE FUNCTION payledger.payins_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    t payledger.payin_transitions;
    violation text;
BEGIN
    <<judge>>
    BEGIN
        IF TG_OP = 'INSERT' THEN
            -- (a restore inserts rows in their current state)
            IF NEW.parent_id IS NULL AND NEW.initial_state NOT IN
                   ('PENDING_INVOICE_CREATION', 'PENDING_INVOICE_WRAP', 'PENDING_WITHDRAWAL', 'PAID') THEN
                RAISE EXCEPTION 'a pay-in cannot start in state %', NEW.initial_state USING ERRCODE = 'PL020';
            END IF;
            EXIT judge;
        END IF;
        -- What a pay-in is never changes; only its state and what follows from it.
        IF (NEW.id, NEW.owner_id, NEW.type, NEW.asset, NEW.cost, NEW.initial_state, NEW.created_at,
            NEW.custodial_amount, NEW.external_amount, NEW.external_method, NEW.external_account, NEW.escrow_account,
            NEW.open_journal, NEW.parent_id, NEW.genesis_id, NEW.predecessor_id, NEW.retry_count, NEW.retry_policy,
            NEW.idempotency_key, NEW.request_hash, NEW.metadata)
           IS DISTINCT FROM
           (OLD.id, OLD.owner_id, OLD.type, OLD.asset, OLD.cost, OLD.initial_state, OLD.created_at,
            OLD.custodial_amount, OLD.external_amount, OLD.external_method, OLD.external_account, OLD.escrow_account,
            OLD.open_journal, OLD.parent_id, OLD.genesis_id, OLD.predecessor_id, OLD.retry_count, OLD.retry_policy,
            OLD.idempotency_key, OLD.request_hash, OLD.metadata) THEN
            RAISE EXCEPTION 'pay-in %: only its state, failure reason, external reference, successor and refunds change', OLD.id
                USING ERRCODE = 'PL015';
        END IF;
        IF (OLD.external_ref IS NOT NULL AND NEW.external_ref IS DISTINCT FROM OLD.external_ref)
           OR (OLD.successor_id IS NOT NULL AND NEW.successor_id IS DISTINCT FROM OLD.successor_id)
           OR NEW.refunded < OLD.refunded THEN
            RAISE EXCEPTION 'pay-in %: the external reference and successor are set once, refunds only grow', OLD.id
                USING ERRCODE = 'PL015';
        END IF;
        IF NEW.successor_id IS DISTINCT FROM OLD.successor_id AND OLD.state <> 'FAILED' THEN
            RAISE EXCEPTION 'pay-in % is % and cannot have a successor', OLD.id, OLD.state USING ERRCODE = 'PL024';
        END IF;
        IF NEW.state = OLD.state THEN
            IF (NEW.paid_journal, NEW.release_journal, NEW.state_changed_at, NEW.external_cancel)
               IS DISTINCT FROM (OLD.paid_journal, OLD.release_journal, OLD.state_changed_at, OLD.external_cancel)
               OR (NEW.failure_reason IS DISTINCT FROM OLD.failure_reason) THEN
                RAISE EXCEPTION 'pay-in %: journals, times and reasons change only with the state', OLD.id
                    USING ERRCODE = 'PL015';
            END IF;
            EXIT judge;
        END IF;

        SELECT * INTO t FROM payledger.payin_transitions x WHERE x.from_state = OLD.state AND x.to_state = NEW.state;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pay-in % cannot move from % to %', OLD.id, OLD.state, NEW.state
                USING ERRCODE = 'PL020', HINT = 'The allowed moves are in payledger.payin_transitions.';
        END IF;
        IF OLD.parent_id IS NOT NULL AND current_setting('payledger.moving_children_of', true) IS DISTINCT FROM OLD.parent_id::text THEN
            RAISE EXCEPTION 'pay-in % moves with its parent %', OLD.id, OLD.parent_id USING ERRCODE = 'PL020';
        END IF;
        IF t.default_reason IS NOT NULL THEN
            NEW.failure_reason := coalesce(NEW.failure_reason, t.default_reason);
        ELSIF NEW.failure_reason IS NOT NULL THEN
            RAISE EXCEPTION 'a failure reason goes only with a failing move, not % to %', OLD.state, NEW.state
                USING ERRCODE = '22023';
        END IF;
        NEW.state_changed_at := clock_timestamp();
        NEW.paid_journal := OLD.paid_journal;
        NEW.release_journal := OLD.release_journal;
        NEW.external_cancel := OLD.external_cancel;
        IF NEW.state = 'PAID' THEN
            -- a job's pay-in locks its job before the accounts, as a zap's
            -- payment does (docs/reliability.md, Lock order)
            IF NEW.type = 'NOSTR_JOB' AND NEW.metadata ? 'job' THEN
                PERFORM FROM payledger.nostr_jobs j WHERE j.id = (NEW.metadata ->> 'job')::uuid FOR UPDATE;
            END IF;
            NEW.paid_journal := payledger.payin_pay_out(NEW);
        ELSIF NEW.state IN ('FAILED', 'CANCELLED') THEN
            IF NEW.custodial_amount > 0 AND OLD.release_journal IS NULL THEN
                NEW.release_journal := payledger.payin_release(NEW);
            END IF;
            NEW.external_cancel := NEW.external_amount > 0;
        END IF;
    END judge;
    -- the row's rules (payledger.payin_row_violation, inlined here)
    violation := payledger.payin_row_violation(NEW);
    IF violation IS NOT NULL THEN
        -- (worded as PostgreSQL words a CHECK's failure)
        RAISE EXCEPTION 'new row for relation "payins" violates check constraint "%"', violation
            USING ERRCODE = '23514', CONSTRAINT = violation, TABLE = 'payins', SCHEMA = 'payledger';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER payins_guard BEFORE INSERT OR UPDATE ON payledger.payins
    FOR EACH ROW EXECUTE FUNCTION payledger.payins_guard();

-- After a move: record it, and move the children the same way.
CREATE FUNCTION payledger.payins_moved() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    outer_setting text := current_setting('payledger.moving_children_of', true);
BEGIN
    INSERT INTO payledger.payin_history (payin_id, to_state, from_state, owner_id, failure_reason, at)
    VALUES (NEW.id, NEW.state, OLD.state, NEW.owner_id, NEW.failure_reason, NEW.state_changed_at);
    IF EXISTS (SELECT 1 FROM payledger.payins c WHERE c.parent_id = NEW.id) THEN
        PERFORM set_config('payledger.moving_children_of', NEW.id::text, true);
        UPDATE payledger.payins c
           SET state = NEW.state,
               failure_reason = CASE WHEN NEW.state IN ('FAILED', 'CANCELLED', 'FAILED_FORWARD') THEN NEW.failure_reason END
         WHERE c.parent_id = NEW.id AND c.state = OLD.state;
        PERFORM set_config('payledger.moving_children_of', coalesce(outer_setting, ''), true);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER payins_moved AFTER UPDATE OF state ON payledger.payins
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION payledger.payins_moved();

-- Pay-outs sum to their pay-in's cost, checked for each INSERT statement
-- (the API writes a pay-in's pay-outs in one statement, and so does a
-- restore's COPY). That the legs add up is checked by check_invariants().
CREATE FUNCTION payledger.payouts_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n record;
    cost bigint;
    total bigint;
BEGIN
    -- one pay-in per API call: a loop of index lookups, not a join the
    -- planner would have to guess the size of
    FOR n IN SELECT DISTINCT x.payin_id FROM new_payouts x LOOP
        SELECT p.cost INTO cost FROM payledger.payins p WHERE p.id = n.payin_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pay-outs of pay-in %, which does not exist', n.payin_id USING ERRCODE = '23503';
        END IF;
        SELECT sum(o.amount) INTO total FROM payledger.payouts o WHERE o.payin_id = n.payin_id;
        IF total <> cost THEN
            RAISE EXCEPTION 'pay-outs of pay-in % sum to %, not its cost %', n.payin_id, total, cost
                USING ERRCODE = 'PL021';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER payouts_guard AFTER INSERT ON payledger.payouts
    REFERENCING NEW TABLE AS new_payouts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.payouts_guard();

---------------------------------------------------------------------------
-- Creating a pay-in
---------------------------------------------------------------------------

-- methods: [{"account": <uuid>}, …, {"external": "invoice", "unit": 1000}]
--   or with an explicit split: [{"account": a, "amount": 20}, …, {"external": "invoice", "amount": 60}]
-- payouts: [{"type": "ZAP", "account": <uuid>, "amount": 70}, …], or split + payees.
-- The work is done by payin_create_core (src/payin/create.rs).
CREATE FUNCTION payledger.create_payin(
    payer           text,
    type            text,
    asset           text,
    cost            bigint,
    methods         jsonb,
    payouts         jsonb DEFAULT NULL,
    split           text DEFAULT NULL,
    payees          jsonb DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    parent          uuid DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    OUT payin_id uuid, OUT state payledger.payin_state, OUT custodial_amount bigint, OUT external_amount bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM payledger.payin_create_core(payer, type, asset, cost, methods, payouts, split, payees,
                                                     idempotency_key, parent, metadata, NULL, NULL, NULL, NULL);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    -- paid at creation: its event and settle hooks (a move to PAID gets them
    -- from the state trigger; src/provider/api.sql)
    IF r.state = 'PAID' AND NOT r.replayed THEN
        PERFORM payledger.payin_reached(r.payin_id);
    END IF;
    payin_id := r.payin_id;
    state := r.state;
    custodial_amount := r.custodial_amount;
    external_amount := r.external_amount;
END;
$$;

---------------------------------------------------------------------------
-- Transitions
---------------------------------------------------------------------------

-- Move a pay-in, guarded by the states it may come from. Two actors racing
-- (a webhook and the reconciler) move it once: the loser gets changed = false
-- and the state the winner left. Moving a pay-in that is not final from a
-- state the table does not allow is an error (PL020).
CREATE FUNCTION payledger.transition_payin(
    payin        uuid,
    to_state     payledger.payin_state,
    reason       payledger.payin_failure_reason DEFAULT NULL,
    external_ref text DEFAULT NULL)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    cur payledger.payins;
    from_states payledger.payin_state[];
BEGIN
    PERFORM payledger.require(payin, 'payin');
    PERFORM payledger.require(to_state, 'to_state');
    -- An array, not a subquery: when a concurrent move commits first, the
    -- UPDATE re-checks its condition against the new row version, and a join
    -- would re-check against the transition row it had matched before.
    SELECT array_agg(t.from_state) INTO from_states FROM payledger.payin_transitions t
     WHERE t.to_state = transition_payin.to_state;
    UPDATE payledger.payins p
       SET state = transition_payin.to_state,
           failure_reason = coalesce(transition_payin.reason, p.failure_reason),
           external_ref = coalesce(transition_payin.external_ref, p.external_ref)
     WHERE p.id = transition_payin.payin AND p.state = ANY (from_states)
    RETURNING * INTO cur;
    IF FOUND THEN
        RETURN QUERY SELECT true, cur.state, cur.failure_reason;
        RETURN;
    END IF;
    SELECT * INTO cur FROM payledger.payins p WHERE p.id = transition_payin.payin;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF cur.state = to_state OR cur.state IN ('PAID', 'FAILED')
       OR (cur.state = 'CANCELLED' AND to_state <> 'FAILED') THEN
        RETURN QUERY SELECT false, cur.state, cur.failure_reason;
        RETURN;
    END IF;
    RAISE EXCEPTION 'pay-in % cannot move from % to %', payin, cur.state, to_state
        USING ERRCODE = 'PL020', HINT = 'The allowed moves are in payledger.payin_transitions.';
END;
$$;

CREATE FUNCTION payledger.settle_payin(payin uuid)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'PAID');
$$;

CREATE FUNCTION payledger.fail_payin(payin uuid, reason payledger.payin_failure_reason DEFAULT NULL)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'FAILED', reason);
$$;

CREATE FUNCTION payledger.cancel_payin(payin uuid, reason payledger.payin_failure_reason DEFAULT 'USER_CANCELLED')
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'CANCELLED', reason);
$$;

---------------------------------------------------------------------------
-- Refunds of a PAID pay-in, retries of a FAILED one
---------------------------------------------------------------------------

-- Take back amount (default: all that is left) from the pay-outs, in
-- proportion to what each still holds, into to_account (default: the first
-- custodial account the payer used). A new journal; history is never edited.
CREATE FUNCTION payledger.refund_payin(
    payin           uuid,
    amount          bigint DEFAULT NULL,
    to_account      uuid DEFAULT NULL,
    reason          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    prior record;
    left_total bigint;
    dest payledger.accounts;
    postings jsonb;
    j uuid;
    seqs smallint[];
    accounts uuid[];
    shares bigint[];
BEGIN
    PERFORM payledger.require(payin, 'payin');
    IF idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('payledger.refund:' || idempotency_key, 0));
        SELECT r.payin_id, r.journal_id, sum(r.amount) AS total, min(r.to_account::text) AS dest INTO prior
          FROM payledger.payin_refunds r WHERE r.idempotency_key = refund_payin.idempotency_key
         GROUP BY r.payin_id, r.journal_id;
        IF FOUND THEN
            IF prior.payin_id <> payin OR (amount IS NOT NULL AND prior.total <> amount)
               OR (to_account IS NOT NULL AND prior.dest <> to_account::text) THEN
                RAISE EXCEPTION 'idempotency key % was used for another refund', quote_literal(idempotency_key)
                    USING ERRCODE = 'PL008', DETAIL = format('journal %s', prior.journal_id);
            END IF;
            RETURN prior.journal_id;
        END IF;
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF p.state <> 'PAID' THEN
        RAISE EXCEPTION 'pay-in % is %: only a PAID pay-in is refunded', payin, p.state USING ERRCODE = 'PL020',
            HINT = 'A pending pay-in is failed or cancelled instead; that returns its custodial legs.';
    END IF;
    left_total := p.cost - p.refunded;
    amount := coalesce(amount, left_total);
    IF amount <= 0 THEN
        RAISE EXCEPTION 'a refund must be positive, got %', amount USING ERRCODE = 'PL001';
    END IF;
    IF amount > left_total THEN
        RAISE EXCEPTION 'pay-in % has % left to refund, asked for %', payin, left_total, amount USING ERRCODE = 'PL023';
    END IF;
    IF to_account IS NULL THEN
        SELECT l.account_id INTO to_account FROM payledger.payin_legs l
         WHERE l.payin_id = p.id AND l.method = 'custodial' ORDER BY l.seq LIMIT 1;
        IF to_account IS NULL THEN
            RAISE EXCEPTION 'pay-in % used no balance: name the account to refund to', payin USING ERRCODE = '22023';
        END IF;
    END IF;
    SELECT * INTO dest FROM payledger.accounts a WHERE a.id = to_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', to_account USING ERRCODE = 'PL002';
    ELSIF dest.asset <> p.asset THEN
        RAISE EXCEPTION 'account % holds %, the pay-in was paid in %', to_account, dest.asset, p.asset USING ERRCODE = 'PL004';
    END IF;

    -- Each pay-out gives back its share of what it still holds; cumulative
    -- rounding makes the shares sum to the amount exactly.
    SELECT array_agg(x.seq ORDER BY x.seq), array_agg(x.account_id ORDER BY x.seq), array_agg(x.share ORDER BY x.seq)
      INTO seqs, accounts, shares
      FROM (SELECT s.seq, s.account_id,
           (floor(s.cum * amount::numeric / left_total) - floor((s.cum - s.holds) * amount::numeric / left_total))::bigint AS share
      FROM (SELECT o.seq, o.account_id, o.amount - coalesce(r.back, 0) AS holds,
                   sum(o.amount - coalesce(r.back, 0)) OVER (ORDER BY o.seq) AS cum
              FROM payledger.payouts o
              LEFT JOIN (SELECT r.seq, sum(r.amount) AS back FROM payledger.payin_refunds r
                          WHERE r.payin_id = p.id AND r.kind = 'refund' GROUP BY r.seq) r ON r.seq = o.seq
             WHERE o.payin_id = p.id) s) x
     WHERE x.share > 0;
    SELECT jsonb_agg(jsonb_build_object('account', x.a, 'amount', -x.amt))
           || jsonb_build_object('account', to_account, 'amount', amount)
      INTO postings FROM unnest(accounts, shares) x(a, amt);
    j := (payledger.apply_one(jsonb_build_object(
        'postings', postings, 'kind', 'payin_refund',
        'metadata', jsonb_build_object('payin', p.id, 'reason', reason)))).journal_id;
    INSERT INTO payledger.payin_refunds (payin_id, journal_id, kind, seq, owner_id, from_account, to_account, amount,
                                         reason, idempotency_key)
    SELECT p.id, j, 'refund', x.seq, p.owner_id, x.a, to_account, x.amt, reason, idempotency_key
      FROM unnest(seqs, accounts, shares) x(seq, a, amt);
    UPDATE payledger.payins x SET refunded = x.refunded + amount WHERE x.id = p.id;
    RETURN j;
END;
$$;

-- A new pay-in for a FAILED one, chained to it (predecessor, genesis, count).
-- Methods and pay-outs default to the failed pay-in's (amounts re-split by
-- today's balances); policy records why the mix differs (e.g. 'credits_fallback').
CREATE FUNCTION payledger.retry_payin(
    payin           uuid,
    methods         jsonb DEFAULT NULL,
    payouts         jsonb DEFAULT NULL,
    split           text DEFAULT NULL,
    payees          jsonb DEFAULT NULL,
    policy          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    OUT payin_id uuid, OUT state payledger.payin_state, OUT custodial_amount bigint, OUT external_amount bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    old payledger.payins;
    max_retries integer;
    r record;
BEGIN
    PERFORM payledger.require(payin, 'payin');
    IF idempotency_key IS NOT NULL THEN
        SELECT p.* INTO old FROM payledger.payins p WHERE p.idempotency_key = retry_payin.idempotency_key;
        IF FOUND AND old.predecessor_id = payin THEN
            payin_id := old.id; state := old.state;
            custodial_amount := old.custodial_amount; external_amount := old.external_amount;
            RETURN;
        END IF;
    END IF;
    -- The row lock makes concurrent retries queue; the second sees the successor.
    SELECT * INTO old FROM payledger.payins p WHERE p.id = payin FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF old.state <> 'FAILED' THEN
        RAISE EXCEPTION 'pay-in % is %: only a FAILED pay-in is retried', payin, old.state USING ERRCODE = 'PL024';
    ELSIF old.successor_id IS NOT NULL THEN
        RAISE EXCEPTION 'pay-in % was already retried', payin USING ERRCODE = 'PL024',
            DETAIL = format('successor %s', old.successor_id);
    ELSIF old.parent_id IS NOT NULL THEN
        RAISE EXCEPTION 'pay-in % is a child: retry its parent %', payin, old.parent_id USING ERRCODE = 'PL024';
    END IF;
    SELECT t.max_retries INTO max_retries FROM payledger.payin_types t WHERE t.type = old.type;
    IF old.retry_count >= max_retries THEN
        RAISE EXCEPTION 'pay-in % was retried % times, the limit for % is %', payin, old.retry_count, old.type, max_retries
            USING ERRCODE = 'PL024';
    END IF;
    IF methods IS NULL THEN
        SELECT jsonb_agg(l.options - 'amount' ORDER BY l.seq) INTO methods FROM payledger.payin_legs l WHERE l.payin_id = old.id;
    END IF;
    IF payouts IS NULL AND split IS NULL THEN
        SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('type', o.type, 'account', o.account_id, 'amount', o.amount,
                                                              'role', o.role)) ORDER BY o.seq)
          INTO payouts FROM payledger.payouts o WHERE o.payin_id = old.id;
    END IF;
    SELECT * INTO r FROM payledger.payin_create_core(old.owner_id, old.type, old.asset, old.cost, methods, payouts, split,
                                                     payees, idempotency_key, NULL, old.metadata, old.id,
                                                     old.genesis_id, old.retry_count, policy);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    IF r.state = 'PAID' AND NOT r.replayed THEN
        PERFORM payledger.payin_reached(r.payin_id);
    END IF;
    UPDATE payledger.payins p SET successor_id = r.payin_id WHERE p.id = old.id;
    payin_id := r.payin_id; state := r.state;
    custodial_amount := r.custodial_amount; external_amount := r.external_amount;
END;
$$;

---------------------------------------------------------------------------
-- Statistics and audit
---------------------------------------------------------------------------

-- Spending and earning per owner, type and UTC day, for pay-ins that reached
-- PAID in [since, until): 'spent' (payer, pay-in type), 'earned' (payee,
-- pay-out type), and refunds: 'refunded' (payer) and 'clawed_back' (payee).
CREATE FUNCTION payledger.payin_stats(since timestamptz, until timestamptz, owner text DEFAULT NULL)
RETURNS TABLE (day date, owner_id text, direction text, type text, asset text, amount bigint, count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (p.state_changed_at AT TIME ZONE 'UTC')::date, p.owner_id, 'spent', p.type, p.asset, sum(p.cost)::bigint, count(*)
      FROM payledger.payins p
     WHERE p.state = 'PAID' AND p.state_changed_at >= since AND p.state_changed_at < until
       AND (owner IS NULL OR p.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (p.state_changed_at AT TIME ZONE 'UTC')::date, o.owner_id, 'earned', o.type, p.asset, sum(o.amount)::bigint, count(*)
      FROM payledger.payouts o JOIN payledger.payins p ON p.id = o.payin_id
     WHERE p.state = 'PAID' AND p.state_changed_at >= since AND p.state_changed_at < until
       AND (owner IS NULL OR o.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (r.created_at AT TIME ZONE 'UTC')::date, r.owner_id, 'refunded', p.type, p.asset, sum(r.amount)::bigint,
           count(DISTINCT r.journal_id)
      FROM payledger.payin_refunds r JOIN payledger.payins p ON p.id = r.payin_id
     WHERE r.kind = 'refund' AND r.created_at >= since AND r.created_at < until AND (owner IS NULL OR r.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (r.created_at AT TIME ZONE 'UTC')::date, o.owner_id, 'clawed_back', o.type, p.asset, sum(r.amount)::bigint, count(*)
      FROM payledger.payin_refunds r
      JOIN payledger.payouts o ON o.payin_id = r.payin_id AND o.seq = r.seq
      JOIN payledger.payins p ON p.id = r.payin_id
     WHERE r.kind = 'refund' AND r.created_at >= since AND r.created_at < until AND (owner IS NULL OR o.owner_id = owner)
     GROUP BY 1, 2, 4, 5
     ORDER BY 1, 2, 3, 4;
$$;

-- Every entry a pay-in caused (opening, pay-out, release, refunds): who spent
-- and earned what, and each balance before and after.
CREATE FUNCTION payledger.payin_audit(payin uuid)
RETURNS TABLE (journal_id uuid, journal_kind text, created_at timestamptz, account_id uuid, owner_id text,
               account_kind text, account_name text, asset text, amount bigint, balance_before bigint, balance_after bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
BEGIN
    PERFORM payledger.require(payin, 'payin');
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    RETURN QUERY
    SELECT j.id, j.kind, j.created_at, e.account_id, e.owner_id, a.kind, a.name, e.asset, e.amount,
           e.balance_after - e.amount, e.balance_after
      FROM (SELECT DISTINCT x.id FROM (
                SELECT unnest(ARRAY[p.open_journal, p.paid_journal, p.release_journal])
                UNION ALL SELECT r.journal_id FROM payledger.payin_refunds r WHERE r.payin_id = p.id) x(id)
             WHERE x.id IS NOT NULL) js
      JOIN payledger.journals j ON j.id = js.id
      CROSS JOIN LATERAL unnest(j.entry_accounts, j.entry_seqs) WITH ORDINALITY u(acc, seq, n)
      JOIN payledger.entries e ON e.account_id = u.acc AND e.seq = u.seq
      JOIN payledger.accounts a ON a.id = e.account_id
     ORDER BY j.created_at, j.id, u.n;
END;
$$;

---------------------------------------------------------------------------
-- Invariants of pay-ins (part of payledger.check_invariants())
---------------------------------------------------------------------------

CREATE FUNCTION payledger.payin_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT 'payin_legs', p.id::text,
           format('custodial legs %s (row %s), external legs %s (row %s) in %s legs',
                  coalesce(l.custodial, 0), p.custodial_amount, coalesce(l.external, 0), p.external_amount, coalesce(l.externals, 0))
      FROM payledger.payins p
      LEFT JOIN (SELECT l.payin_id, sum(l.amount) FILTER (WHERE l.method = 'custodial') AS custodial,
                        sum(l.amount) FILTER (WHERE l.method <> 'custodial') AS external,
                        count(*) FILTER (WHERE l.method <> 'custodial') AS externals
                   FROM payledger.payin_legs l GROUP BY l.payin_id) l ON l.payin_id = p.id
     WHERE coalesce(l.custodial, 0) <> p.custodial_amount OR coalesce(l.external, 0) <> p.external_amount
        OR coalesce(l.externals, 0) > 1
    UNION ALL
    SELECT 'payouts_sum_to_cost', p.id::text, format('pay-outs %s, cost %s', coalesce(o.total, 0), p.cost)
      FROM payledger.payins p
      LEFT JOIN (SELECT o.payin_id, sum(o.amount) AS total FROM payledger.payouts o GROUP BY o.payin_id) o ON o.payin_id = p.id
     WHERE coalesce(o.total, 0) <> p.cost
    UNION ALL
    SELECT 'payin_rows_have_payin', x.payin_id::text, format('%s row without its pay-in', x.t)
      FROM (SELECT l.payin_id, 'leg' AS t FROM payledger.payin_legs l
            UNION ALL SELECT o.payin_id, 'pay-out' FROM payledger.payouts o
            UNION ALL SELECT r.payin_id, 'refund' FROM payledger.payin_refunds r
            UNION ALL SELECT h.payin_id, 'history' FROM payledger.payin_history h) x
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payins p WHERE p.id = x.payin_id)
    UNION ALL
    SELECT 'payin_types_registered', p.id::text, format('pay-in type %s', p.type)
      FROM payledger.payins p WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = p.type)
    UNION ALL
    SELECT 'payout_types_registered', format('%s/%s', o.payin_id, o.seq), format('pay-out type %s', o.type)
      FROM payledger.payouts o WHERE NOT EXISTS (SELECT 1 FROM payledger.payout_types t WHERE t.type = o.type)
    UNION ALL
    -- the paid journal credits exactly the pay-outs
    SELECT 'payin_paid_out', p.id::text, format('journal %s credits %s, pay-outs %s', p.paid_journal, coalesce(c.total, 0), p.cost)
      FROM payledger.payins p
      LEFT JOIN LATERAL (SELECT sum(e.amount) AS total
                           FROM payledger.journals j, unnest(j.entry_accounts, j.entry_seqs) u(a, s)
                           JOIN payledger.entries e ON e.account_id = u.a AND e.seq = u.s
                          WHERE j.id = p.paid_journal AND e.amount > 0) c ON true
     WHERE p.state = 'PAID' AND coalesce(c.total, 0) <> p.cost
    UNION ALL
    -- the opening journal took exactly the custodial legs
    SELECT 'payin_opened', p.id::text, format('journal %s debits %s, custodial legs %s', p.open_journal, coalesce(d.total, 0), p.custodial_amount)
      FROM payledger.payins p
      LEFT JOIN LATERAL (SELECT -sum(e.amount) AS total
                           FROM payledger.journals j, unnest(j.entry_accounts, j.entry_seqs) u(a, s)
                           JOIN payledger.entries e ON e.account_id = u.a AND e.seq = u.s
                          WHERE j.id = p.open_journal AND e.amount < 0) d ON true
     WHERE coalesce(d.total, 0) <> p.custodial_amount
    UNION ALL
    -- escrow holds the custodial part of its payer's open pay-ins, nothing more
    -- (so nothing is left behind after FAILED or CANCELLED)
    SELECT 'payin_escrow', a.id::text, format('escrow balance %s, open pay-ins hold %s', a.balance, coalesce(s.total, 0))
      FROM payledger.accounts a
      LEFT JOIN (SELECT p.escrow_account, sum(p.custodial_amount) AS total FROM payledger.payins p
                  WHERE p.state NOT IN ('PAID', 'FAILED', 'CANCELLED') GROUP BY p.escrow_account) s ON s.escrow_account = a.id
     WHERE a.kind = 'payin_escrow' AND a.balance <> coalesce(s.total, 0)
    UNION ALL
    SELECT 'payin_released', p.id::text, format('released %s of custodial %s', coalesce(r.total, 0), p.custodial_amount)
      FROM payledger.payins p
      LEFT JOIN (SELECT r.payin_id, sum(r.amount) AS total FROM payledger.payin_refunds r
                  WHERE r.kind = 'release' GROUP BY r.payin_id) r ON r.payin_id = p.id
     WHERE coalesce(r.total, 0) <> CASE WHEN p.state IN ('FAILED', 'CANCELLED') THEN p.custodial_amount ELSE 0 END
    UNION ALL
    SELECT 'payin_refunds', p.id::text, format('refunded %s, refund records %s', p.refunded, coalesce(r.total, 0))
      FROM payledger.payins p
      LEFT JOIN (SELECT r.payin_id, sum(r.amount) AS total FROM payledger.payin_refunds r
                  WHERE r.kind = 'refund' GROUP BY r.payin_id) r ON r.payin_id = p.id
     WHERE coalesce(r.total, 0) <> p.refunded
    UNION ALL
    SELECT 'payout_refunds', format('%s/%s', o.payin_id, o.seq), format('pay-out %s, refunded %s', o.amount, r.total)
      FROM payledger.payouts o
      JOIN (SELECT r.payin_id, r.seq, sum(r.amount) AS total FROM payledger.payin_refunds r
             WHERE r.kind = 'refund' GROUP BY r.payin_id, r.seq) r ON r.payin_id = o.payin_id AND r.seq = o.seq
     WHERE r.total > o.amount
    UNION ALL
    SELECT 'payin_history', p.id::text, format('no history row for its state %s or its first state %s', p.state, p.initial_state)
      FROM payledger.payins p
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = p.id AND h.to_state = p.state)
        OR NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = p.id AND h.to_state = p.initial_state
                                                                  AND h.from_state IS NULL)
    UNION ALL
    SELECT 'payin_child_follows_parent', c.id::text, format('child %s, parent %s is %s', c.state, c.parent_id, p.state)
      FROM payledger.payins c LEFT JOIN payledger.payins p ON p.id = c.parent_id
     WHERE c.parent_id IS NOT NULL AND (p.id IS NULL OR p.state <> c.state)
    UNION ALL
    SELECT 'payin_retry_chain', p.id::text, 'predecessor, successor and genesis do not agree'
      FROM payledger.payins p
      LEFT JOIN payledger.payins prev ON prev.id = p.predecessor_id
      LEFT JOIN payledger.payins nxt ON nxt.id = p.successor_id
     WHERE (p.predecessor_id IS NOT NULL AND (prev.id IS NULL OR prev.successor_id IS DISTINCT FROM p.id
                                               OR p.genesis_id <> coalesce(prev.genesis_id, prev.id)
                                               OR p.retry_count <> prev.retry_count + 1 OR prev.state <> 'FAILED'))
        OR (p.successor_id IS NOT NULL AND (nxt.id IS NULL OR nxt.predecessor_id IS DISTINCT FROM p.id))
$$;

---------------------------------------------------------------------------
-- End-user views
---------------------------------------------------------------------------

CREATE VIEW payledger.my_payins WITH (security_barrier) AS
SELECT p.id, p.type, p.asset, p.cost, p.state, p.failure_reason, p.state_changed_at, p.created_at,
       p.custodial_amount, p.external_amount, p.external_method, p.refunded, p.parent_id,
       p.genesis_id, p.predecessor_id, p.successor_id, p.retry_count, p.metadata
  FROM payledger.payins p
 WHERE p.owner_id = payledger.current_owner_id();

-- What the current user earns: credited once the pay-in is PAID.
CREATE VIEW payledger.my_payouts WITH (security_barrier) AS
SELECT o.payin_id, o.seq, o.type, o.account_id, o.amount, p.asset, p.state = 'PAID' AS credited,
       CASE WHEN p.state = 'PAID' THEN p.state_changed_at END AS credited_at
  FROM payledger.payouts o JOIN payledger.payins p ON p.id = o.payin_id
 WHERE o.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_payin_history WITH (security_barrier) AS
SELECT h.payin_id, h.from_state, h.to_state, h.failure_reason, h.at
  FROM payledger.payin_history h
 WHERE h.owner_id = payledger.current_owner_id();

-- payledger providers: merchant profiles, the payment providers they own,
-- the invoices issued at them (each pinned to its provider), subscriptions
-- (pinned to a profile and provider at creation), settle hooks and the
-- event outbox. The background worker (src/worker.rs) drives the invoices.

CREATE TYPE payledger.provider_kind AS ENUM ('lnbits', 'lnd_rest', 'cln_rest', 'btcpay', 'stripe');

-- creating: the worker is to create it at the provider; pending: issued,
-- unpaid; paid; expired: past its expiry unpaid (still watched for late
-- money until monitor_until); failed: never created, or invalid at the
-- provider.
CREATE TYPE payledger.invoice_status AS ENUM ('creating', 'pending', 'paid', 'expired', 'failed');

CREATE TABLE payledger.merchant_profiles (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    owner_id   text,                           -- the merchant, when profiles belong to tenants
    is_default boolean NOT NULL DEFAULT false, -- used when nothing routes a pay-in elsewhere
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX merchant_profiles_one_default ON payledger.merchant_profiles ((true)) WHERE is_default;

-- Non-secret settings only; credentials live in provider_secrets.
CREATE TABLE payledger.providers (
    id             uuid PRIMARY KEY,
    profile_id     uuid NOT NULL REFERENCES payledger.merchant_profiles,
    name           text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    kind           payledger.provider_kind NOT NULL,
    base_url       text NOT NULL CHECK (base_url ~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$'),
    -- the pay-in external method it serves ('invoice' for Lightning, 'card', …)
    rail           text NOT NULL,
    -- amounts it is asked for are in this asset (msat for Lightning providers)
    asset          text NOT NULL REFERENCES payledger.assets (code),
    -- store_id (BTCPay), tls_cert_pem (LND, Core Lightning), …
    config         jsonb NOT NULL DEFAULT '{}'::jsonb,
    invoice_expiry interval NOT NULL DEFAULT '1 hour' CHECK (invoice_expiry > '0'),
    -- how long an expired invoice is still watched for money that arrives late
    -- (BTCPay's PaidLate); the provider's own figure wins when it gives one
    monitoring     interval NOT NULL DEFAULT '1 hour' CHECK (monitoring >= '0'),
    priority       integer NOT NULL DEFAULT 0,   -- lower first within a profile
    active         boolean NOT NULL DEFAULT true, -- inactive: no new invoices, old ones still polled
    -- health, kept by the worker: after failures it waits until retry_after
    consecutive_failures integer NOT NULL DEFAULT 0,
    retry_after    timestamptz,
    last_error     text,
    last_ok_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (profile_id, name)
);

-- Readable by the worker (a superuser connection) and payledger_admin only.
CREATE TABLE payledger.provider_secrets (
    provider_id    uuid PRIMARY KEY REFERENCES payledger.providers ON DELETE CASCADE,
    credentials    jsonb NOT NULL,  -- {"invoice_key"}, {"macaroon"}, {"rune"}, {"api_key"}, {"secret_key"}
    webhook_secret text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Which profile issues the invoices of a pay-in type (a product).
CREATE TABLE payledger.payin_routes (
    payin_type text PRIMARY KEY,
    profile_id uuid NOT NULL REFERENCES payledger.merchant_profiles
);

CREATE TABLE payledger.subscriptions (
    id              uuid PRIMARY KEY,
    owner_id        text NOT NULL,
    payin_type      text NOT NULL,
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    period          interval NOT NULL CHECK (period > '0'),
    methods         jsonb NOT NULL,
    payouts         jsonb,
    split           text,
    payees          jsonb,
    -- the snapshot: renewals are invoiced here, whatever the routes say later
    -- (NULL on rows made before snapshots existed: see docs/providers.md)
    profile_id      uuid REFERENCES payledger.merchant_profiles,
    provider_id     uuid REFERENCES payledger.providers,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    renewals        integer NOT NULL DEFAULT 0 CHECK (renewals >= 0),
    next_renewal_at timestamptz NOT NULL,
    last_payin_id   uuid,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- a renewal that failed (an error, not an unpaid invoice) is tried again
    -- after a backoff, so that it cannot hold up the others
    errors          integer NOT NULL DEFAULT 0 CHECK (errors >= 0),
    last_error      text,
    retry_at        timestamptz
);
CREATE INDEX subscriptions_due_idx ON payledger.subscriptions (next_renewal_at) WHERE status = 'active';

-- One invoice per pay-in; creation retries update the same row.
CREATE TABLE payledger.invoices (
    id              uuid PRIMARY KEY,
    payin_id        uuid NOT NULL UNIQUE,
    -- the snapshot of who issued it: polled there, whatever routes say later
    provider_id     uuid NOT NULL REFERENCES payledger.providers,
    provider_kind   payledger.provider_kind NOT NULL,
    provider_name   text NOT NULL,
    profile_id      uuid,
    subscription_id uuid,
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    memo            text NOT NULL DEFAULT '',
    expiry          interval NOT NULL,
    status          payledger.invoice_status NOT NULL,
    external_id     text,       -- the provider's id (the payment hash for Lightning nodes)
    payment_hash    text CHECK (payment_hash ~ '^[0-9a-f]{64}$'),
    payment_request text,       -- BOLT11, checkout link or client secret
    expires_at      timestamptz,
    monitor_until   timestamptz,
    amount_received bigint CHECK (amount_received > 0),
    preimage        text,
    paid_at         timestamptz,
    -- paid after its pay-in had failed: the money went to the late account
    paid_late       boolean NOT NULL DEFAULT false,
    late_journal    uuid,
    -- the worker's bookkeeping
    create_attempts integer NOT NULL DEFAULT 0,
    checks          integer NOT NULL DEFAULT 0,
    errors          integer NOT NULL DEFAULT 0,  -- consecutive
    last_error      text,
    next_check_at   timestamptz,                 -- NULL: no longer watched
    locked_until    timestamptz,                 -- a worker's claim on it
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invoice_issued CHECK (status IN ('creating', 'failed') OR external_id IS NOT NULL),
    CONSTRAINT invoice_paid CHECK ((status = 'paid') = (paid_at IS NOT NULL)
                                   AND (status = 'paid') = (amount_received IS NOT NULL)),
    CONSTRAINT invoice_late CHECK (paid_late = (late_journal IS NOT NULL) AND (NOT paid_late OR status = 'paid'))
);
CREATE UNIQUE INDEX invoices_external_id ON payledger.invoices (provider_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX invoices_payment_hash ON payledger.invoices (payment_hash) WHERE payment_hash IS NOT NULL;
CREATE INDEX invoices_due_idx ON payledger.invoices (next_check_at) WHERE next_check_at IS NOT NULL;

-- Application functions run when a pay-in reaches one of on_states.
CREATE TABLE payledger.settle_hooks (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    function     regprocedure NOT NULL,
    on_states    payledger.payin_state[] NOT NULL CHECK (on_states <@ '{PAID,FAILED,CANCELLED}'),
    max_attempts integer NOT NULL DEFAULT 10 CHECK (max_attempts >= 1),
    -- the registering session's search_path: the hook runs with it, as it
    -- would have in that session
    search_path  text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One run per hook, pay-in and state: the key makes a hook run once even when
-- the webhook and the worker both settle (only one of them moves the pay-in).
CREATE TABLE payledger.hook_runs (
    hook            text NOT NULL,
    payin_id        uuid NOT NULL,
    state           payledger.payin_state NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    PRIMARY KEY (hook, payin_id, state)
);
CREATE INDEX hook_runs_due_idx ON payledger.hook_runs (next_attempt_at) WHERE status = 'pending';

-- The outbox: settlements, failures, late money, hook failures. Written in
-- the transaction that makes the change; announced by NOTIFY payledger_events
-- shortly after commit (announce_events); consumers read by id.
CREATE TABLE payledger.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text NOT NULL,
    subject_id uuid,
    owner_id   text,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_owner_idx ON payledger.events (owner_id, id) WHERE owner_id IS NOT NULL;

-- One row: what the worker did last (for operators and tests).
CREATE TABLE payledger.worker_status (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    pid         integer,
    started_at  timestamptz,
    last_tick_at timestamptz,
    ticks       bigint NOT NULL DEFAULT 0,
    last_result jsonb,
    -- the last event announced by NOTIFY payledger_events
    announced_id bigint NOT NULL DEFAULT 0,
    -- the last metering run the worker started
    last_metering_at timestamptz
);
INSERT INTO payledger.worker_status DEFAULT VALUES;

ALTER TABLE payledger.merchant_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.provider_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.settle_hooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.hook_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.worker_status ENABLE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('payledger.merchant_profiles', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.providers', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.provider_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_routes', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.invoices', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.settle_hooks', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.hook_runs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.events_id_seq', '');

-- NIP-90 paid jobs: a job per request, its payment policy, the unsigned
-- events the service provider publishes, and payments by zap (or by a
-- pay-in's invoice) credited once each as pay-ins to the provider.
-- See docs/nostr.md.

CREATE TABLE payledger.nostr_jobs (
    id               uuid PRIMARY KEY,
    owner_id         text NOT NULL,  -- the service provider's owner key (of its account)
    request_id       text NOT NULL UNIQUE CHECK (request_id ~ '^[0-9a-f]{64}$'),
    request_kind     integer NOT NULL CHECK (request_kind BETWEEN 5000 AND 5999),
    request          jsonb NOT NULL,
    customer_pubkey  text NOT NULL CHECK (customer_pubkey ~ '^[0-9a-f]{64}$'),
    provider_pubkey  text NOT NULL CHECK (provider_pubkey ~ '^[0-9a-f]{64}$'),
    -- the provider's LNURL server key, which signs its zap receipts
    lnurl_pubkey     text NOT NULL CHECK (lnurl_pubkey ~ '^[0-9a-f]{64}$'),
    provider_account uuid NOT NULL,
    policy           text NOT NULL CHECK (policy IN ('upfront', 'after_completion', 'flexible')),
    bid_msat         bigint CHECK (bid_msat >= 0),
    price_msat       bigint NOT NULL CHECK (price_msat >= 0),
    -- what the provider asked for in its published events, and what was paid
    requested_msat   bigint NOT NULL DEFAULT 0 CHECK (requested_msat >= 0),
    paid_msat        bigint NOT NULL DEFAULT 0 CHECK (paid_msat >= 0),
    state            text NOT NULL CHECK (state IN ('payment_required', 'processing', 'delivered', 'success', 'error')),
    error            text,
    payment_timeout  interval NOT NULL,
    -- when the job fails if what was asked for is not paid
    pay_by           timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'error') = (error IS NOT NULL))
);
CREATE INDEX nostr_jobs_due_idx ON payledger.nostr_jobs (pay_by) WHERE state IN ('payment_required', 'delivered');

-- The events the provider published for a job (signed by it, verified here).
CREATE TABLE payledger.nostr_job_events (
    event_id    text PRIMARY KEY CHECK (event_id ~ '^[0-9a-f]{64}$'),
    job_id      uuid NOT NULL,
    kind        integer NOT NULL,
    status      text,          -- a feedback's status; NULL for a result
    amount_msat bigint,        -- the amount it asks for, if any
    event       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX nostr_job_events_job_idx ON payledger.nostr_job_events (job_id);

-- Each payment credited to a job: once per payment hash, zap receipt and zap request.
CREATE TABLE payledger.nostr_job_payments (
    job_id         uuid NOT NULL,
    payin_id       uuid NOT NULL UNIQUE,
    via            text NOT NULL CHECK (via IN ('zap', 'invoice')),
    payment_hash   text NOT NULL UNIQUE,
    receipt_id     text UNIQUE,
    zap_request_id text UNIQUE,
    payer_pubkey   text,
    amount_msat    bigint NOT NULL CHECK (amount_msat > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((via = 'zap') = (receipt_id IS NOT NULL AND zap_request_id IS NOT NULL))
);
CREATE INDEX nostr_job_payments_job_idx ON payledger.nostr_job_payments (job_id);

CREATE TRIGGER nostr_job_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.nostr_job_events
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER nostr_job_payments_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.nostr_job_payments
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER nostr_jobs_no_delete BEFORE DELETE OR TRUNCATE ON payledger.nostr_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();

ALTER TABLE payledger.nostr_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.nostr_job_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.nostr_job_payments ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_job_events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.nostr_job_payments', '');

-- A job by id, locked: every change to a job goes through its row lock.
CREATE FUNCTION payledger.nostr_job_lock(job uuid)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs;
BEGIN
    PERFORM payledger.require(job, 'job');
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = job FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', job USING ERRCODE = 'PL025';
    END IF;
    RETURN j;
END;
$$;

-- A job by id, for reading (the templates).
CREATE FUNCTION payledger.nostr_job_find(job uuid)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs;
BEGIN
    PERFORM payledger.require(job, 'job');
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', job USING ERRCODE = 'PL025';
    END IF;
    RETURN j;
END;
$$;

-- ["amount", msat] or ["amount", msat, bolt11], as NIP-90 writes it.
CREATE FUNCTION payledger.nostr_amount_tag(amount_msat bigint, bolt11 text)
RETURNS jsonb LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN bolt11 IS NULL THEN jsonb_build_array('amount', amount_msat::text)
                ELSE jsonb_build_array('amount', amount_msat::text, bolt11) END;
$$;

-- Where a job stands once paid_msat, requested_msat or delivery changed.
CREATE FUNCTION payledger.nostr_job_settle_state(j payledger.nostr_jobs, delivered boolean)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN j.state IN ('success', 'error') THEN j.state
        WHEN delivered AND j.paid_msat >= j.requested_msat THEN 'success'
        WHEN delivered THEN 'delivered'
        WHEN j.state = 'payment_required' AND j.requested_msat > 0 AND j.paid_msat >= j.requested_msat THEN 'processing'
        ELSE j.state END;
$$;

-- Open a job for a NIP-90 request (a signed kind 5000-5999 event). Upfront
-- jobs wait in payment_required; the others start processing. The price is
-- price_msat, or price_function(request) when given (a function of jsonb
-- returning bigint); events the provider publishes ask for amounts.
CREATE FUNCTION payledger.nostr_job_open(
    request          jsonb,
    provider_pubkey  text,
    lnurl_pubkey     text,
    provider_account uuid,
    policy           text,
    price_msat       bigint DEFAULT NULL,
    price_function   regproc DEFAULT NULL,
    payment_timeout  interval DEFAULT '1 hour')
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts;
    price bigint := price_msat;
    id uuid := payledger.new_id();
    bid text;
BEGIN
    PERFORM payledger.require(request, 'request');
    PERFORM payledger.require(provider_pubkey, 'provider_pubkey');
    PERFORM payledger.require(lnurl_pubkey, 'lnurl_pubkey');
    PERFORM payledger.require(provider_account, 'provider_account');
    PERFORM payledger.require(policy, 'policy');
    IF policy NOT IN ('upfront', 'after_completion', 'flexible') THEN
        RAISE EXCEPTION 'policy must be upfront, after_completion or flexible, got %', quote_literal(policy)
            USING ERRCODE = '22023';
    END IF;
    IF provider_pubkey !~ '^[0-9a-f]{64}$' OR lnurl_pubkey !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'pubkeys are 64 lower-case hex characters' USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(request -> 'kind') IS DISTINCT FROM 'number' OR (request ->> 'kind')::numeric NOT BETWEEN 5000 AND 5999 THEN
        RAISE EXCEPTION 'a job request has a kind between 5000 and 5999' USING ERRCODE = '22023';
    END IF;
    IF NOT payledger.nostr_verify_event(request) THEN
        RAISE EXCEPTION 'the job request''s id or signature does not verify' USING ERRCODE = 'PL026';
    END IF;
    SELECT * INTO acc FROM payledger.accounts a WHERE a.id = provider_account AND a.parent_id IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', provider_account USING ERRCODE = 'PL002';
    ELSIF acc.asset <> 'msat' THEN
        RAISE EXCEPTION 'account % holds %, jobs are paid in msat', provider_account, acc.asset USING ERRCODE = 'PL004';
    END IF;
    IF price_function IS NOT NULL THEN
        EXECUTE format('SELECT %s($1)', price_function) INTO price USING request;
    END IF;
    IF price IS NULL OR price < 0 THEN
        RAISE EXCEPTION 'give price_msat or a price_function that returns an amount >= 0' USING ERRCODE = '22023';
    END IF;
    SELECT t ->> 1 INTO bid FROM jsonb_array_elements(request -> 'tags') t WHERE t ->> 0 = 'bid' LIMIT 1;
    -- the job module's pay-in and pay-out types (idempotent)
    PERFORM payledger.register_payin_type('NOSTR_JOB', 'payment for a NIP-90 job');
    PERFORM payledger.register_payout_type('NOSTR_JOB', 'a NIP-90 service provider''s revenue');
    INSERT INTO payledger.nostr_jobs (id, owner_id, request_id, request_kind, request, customer_pubkey, provider_pubkey,
                                      lnurl_pubkey, provider_account, policy, bid_msat, price_msat, state,
                                      payment_timeout)
    VALUES (id, acc.owner_id, request ->> 'id', (request ->> 'kind')::integer, request, request ->> 'pubkey',
            provider_pubkey, lnurl_pubkey, provider_account, policy,
            CASE WHEN bid ~ '^[0-9]{1,18}$' THEN bid::bigint END, price,
            CASE WHEN policy = 'upfront' THEN 'payment_required' ELSE 'processing' END, payment_timeout)
    ON CONFLICT (request_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'a job exists for this request' USING ERRCODE = 'PL014',
            DETAIL = format('job %s', (SELECT j.id FROM payledger.nostr_jobs j
                                        WHERE j.request_id = nostr_job_open.request ->> 'id'));
    END IF;
    RETURN id;
END;
$$;

-- The unsigned kind 7000 feedback the provider signs and publishes:
-- status payment-required, processing, partial, error or success; an amount
-- (default: the job's price for payment-required) and optional bolt11.
CREATE FUNCTION payledger.nostr_job_feedback(
    job         uuid,
    status      text,
    amount_msat bigint DEFAULT NULL,
    bolt11      text DEFAULT NULL,
    message     text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_find(job);
    tags jsonb;
BEGIN
    PERFORM payledger.require(status, 'status');
    IF status NOT IN ('payment-required', 'processing', 'partial', 'error', 'success') THEN
        RAISE EXCEPTION 'status must be payment-required, processing, partial, error or success' USING ERRCODE = '22023';
    END IF;
    IF amount_msat IS NULL AND status = 'payment-required' THEN
        amount_msat := j.price_msat - j.paid_msat;
    END IF;
    IF amount_msat < 0 THEN
        RAISE EXCEPTION 'amount_msat must be >= 0' USING ERRCODE = 'PL001';
    END IF;
    tags := jsonb_build_array(CASE WHEN message IS NULL THEN jsonb_build_array('status', status)
                                   ELSE jsonb_build_array('status', status, message) END);
    IF amount_msat IS NOT NULL THEN
        tags := tags || jsonb_build_array(payledger.nostr_amount_tag(amount_msat, bolt11));
    END IF;
    tags := tags || jsonb_build_array(jsonb_build_array('e', j.request_id), jsonb_build_array('p', j.customer_pubkey));
    RETURN jsonb_build_object('kind', 7000, 'pubkey', j.provider_pubkey, 'created_at', extract(epoch FROM now())::bigint,
                              'content', coalesce(CASE WHEN status = 'partial' THEN message END, ''), 'tags', tags);
END;
$$;

-- The unsigned job result (kind = request kind + 1000), with the request,
-- e, p and i tags NIP-90 asks for, and the amount owed (default: what is
-- left of the price) with an optional bolt11.
CREATE FUNCTION payledger.nostr_job_result(job uuid, content text, amount_msat bigint DEFAULT NULL, bolt11 text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_find(job);
    tags jsonb;
BEGIN
    PERFORM payledger.require(content, 'content');
    amount_msat := coalesce(amount_msat, greatest(j.price_msat - j.paid_msat, 0));
    tags := jsonb_build_array(jsonb_build_array('request', j.request::text), jsonb_build_array('e', j.request_id),
                              jsonb_build_array('p', j.customer_pubkey))
            || coalesce((SELECT jsonb_agg(t) FROM jsonb_array_elements(j.request -> 'tags') t WHERE t ->> 0 = 'i'), '[]');
    IF amount_msat > 0 THEN
        tags := tags || jsonb_build_array(payledger.nostr_amount_tag(amount_msat, bolt11));
    END IF;
    RETURN jsonb_build_object('kind', j.request_kind + 1000, 'pubkey', j.provider_pubkey,
                              'created_at', extract(epoch FROM now())::bigint, 'content', content, 'tags', tags);
END;
$$;

-- Record an event the provider signed and published for a job: feedback
-- (kind 7000) or the result. Its amount adds to what the job asks for; a
-- result delivers the job (success when paid, else delivered); an error
-- feedback fails it. Returns the job's state.
CREATE FUNCTION payledger.nostr_job_published(job uuid, event jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_lock(job);
    kind integer;
    status text;
    amount text;
    delivered boolean;
BEGIN
    PERFORM payledger.require(event, 'event');
    IF NOT payledger.nostr_verify_event(event) THEN
        RAISE EXCEPTION 'the event''s id or signature does not verify' USING ERRCODE = 'PL026';
    END IF;
    kind := (event ->> 'kind')::integer;
    IF event ->> 'pubkey' <> j.provider_pubkey OR kind NOT IN (7000, j.request_kind + 1000)
       OR NOT EXISTS (SELECT 1 FROM jsonb_array_elements(event -> 'tags') t
                       WHERE t ->> 0 = 'e' AND t ->> 1 = j.request_id) THEN
        RAISE EXCEPTION 'the event is not the provider''s feedback or result for this job' USING ERRCODE = '22023',
            HINT = 'Publish what nostr_job_feedback() or nostr_job_result() return, signed by the provider.';
    END IF;
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    SELECT t ->> 1 INTO status FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'status' LIMIT 1;
    SELECT t ->> 1 INTO amount FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'amount' LIMIT 1;
    IF amount IS NOT NULL AND amount !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION 'the amount tag must be a whole number of msat, got %', quote_literal(amount) USING ERRCODE = 'PL001';
    END IF;
    INSERT INTO payledger.nostr_job_events (event_id, job_id, kind, status, amount_msat, event)
    VALUES (event ->> 'id', j.id, kind, CASE WHEN kind = 7000 THEN status END, amount::bigint, event)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN j.state;  -- published before: nothing changes
    END IF;
    j.requested_msat := j.requested_msat + coalesce(amount::bigint, 0);
    IF kind = 7000 AND status = 'error' THEN
        j.state := 'error';
        j.error := coalesce((SELECT t ->> 2 FROM jsonb_array_elements(event -> 'tags') t WHERE t ->> 0 = 'status' LIMIT 1),
                            'error');
    ELSE
        delivered := kind = j.request_kind + 1000;
        j.state := payledger.nostr_job_settle_state(j, delivered);
    END IF;
    UPDATE payledger.nostr_jobs x
       SET requested_msat = j.requested_msat, state = j.state, error = j.error, updated_at = now(),
           pay_by = CASE WHEN j.state IN ('payment_required', 'delivered') AND j.paid_msat < j.requested_msat
                         THEN now() + x.payment_timeout END
     WHERE x.id = j.id;
    RETURN j.state;
END;
$$;

-- Record a payment to a job whose pay-in is PAID, and move the job on. A
-- payment to a failed job (an invoice paid after the timeout) is recorded
-- too, with an event: the money is in the provider's account, and refunding
-- it is the provider's call.
CREATE FUNCTION payledger.nostr_job_record(j payledger.nostr_jobs, payin uuid, via text, payment_hash text,
                                           amount_msat bigint, payer_pubkey text, receipt_id text, zap_request_id text)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    delivered boolean;
BEGIN
    INSERT INTO payledger.nostr_job_payments (job_id, payin_id, via, payment_hash, receipt_id, zap_request_id, payer_pubkey,
                                              amount_msat)
    VALUES (j.id, payin, via, payment_hash, receipt_id, zap_request_id, payer_pubkey, amount_msat);
    j.paid_msat := j.paid_msat + amount_msat;
    delivered := EXISTS (SELECT 1 FROM payledger.nostr_job_events e WHERE e.job_id = j.id AND e.kind = j.request_kind + 1000);
    j.state := payledger.nostr_job_settle_state(j, delivered);
    UPDATE payledger.nostr_jobs x
       SET paid_msat = j.paid_msat, state = j.state, updated_at = now(),
           pay_by = CASE WHEN j.state IN ('payment_required', 'delivered') AND j.paid_msat < j.requested_msat
                         THEN x.pay_by END
     WHERE x.id = j.id;
    IF j.state = 'error' THEN
        PERFORM payledger.emit_event('nostr_job.paid_after_failure', j.id, j.owner_id,
            jsonb_build_object('job', j.id, 'payin', payin, 'amount_msat', amount_msat, 'error', j.error));
    END IF;
    RETURN j;
END;
$$;

-- Credit a payment the provider received outside payledger's invoices (a
-- zap, or a bolt11 it confirmed itself): a pay-in from the payer to the
-- provider's account, settled at once (the money is in the provider's
-- wallet). Once per payment hash, receipt and zap request.
CREATE FUNCTION payledger.nostr_job_credit(j payledger.nostr_jobs, via text, payment_hash text, amount_msat bigint,
                                           payer_pubkey text, receipt_id text, zap_request_id text)
RETURNS payledger.nostr_jobs LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    SELECT * INTO p FROM payledger.create_payin('nostr:' || coalesce(payer_pubkey, j.customer_pubkey), 'NOSTR_JOB', 'msat',
        amount_msat, jsonb_build_array(jsonb_build_object('external', via)),
        jsonb_build_array(jsonb_build_object('type', 'NOSTR_JOB', 'account', j.provider_account, 'amount', amount_msat)),
        metadata => jsonb_build_object('job', j.id, 'request', j.request_id, 'payment_hash', payment_hash));
    PERFORM payledger.transition_payin(p.payin_id, 'PENDING', external_ref => payment_hash);
    PERFORM payledger.settle_payin(p.payin_id);
    RETURN payledger.nostr_job_record(j, p.payin_id, via, payment_hash, amount_msat, payer_pubkey, receipt_id,
                                      zap_request_id);
END;
$$;

-- Ask for a job's payment by one of payledger's own invoices: a pay-in from
-- nostr:<customer> to the provider's account, paid by the 'invoice' rail,
-- and its invoice, which the worker opens at a Lightning provider (the
-- route's, or the one given). Put the invoice's payment_request in the amount
-- tag of the feedback or result once it is there. When the worker (or a
-- webhook) sees the invoice paid, the pay-in is PAID and the job credited in
-- that same transaction; an invoice that expires fails its pay-in and leaves
-- the job alone. Each call is a new invoice (progressive jobs ask several
-- times). The amount defaults to what is left of the price.
CREATE FUNCTION payledger.nostr_job_invoice(
    job         uuid,
    amount_msat bigint DEFAULT NULL,
    provider    uuid DEFAULT NULL,
    expiry      interval DEFAULT NULL)
RETURNS TABLE (payin_id uuid, invoice_id uuid, invoice_msat bigint, status payledger.invoice_status)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_lock(job);
    amount bigint := coalesce(amount_msat, j.price_msat - j.paid_msat);
    p record;
    inv payledger.invoices;
BEGIN
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    IF amount <= 0 THEN
        RAISE EXCEPTION 'an invoice asks for a positive amount, got % msat', amount USING ERRCODE = 'PL001',
            HINT = CASE WHEN amount_msat IS NULL THEN 'The price is paid; give amount_msat.' ELSE '' END;
    END IF;
    SELECT * INTO p FROM payledger.create_payin('nostr:' || j.customer_pubkey, 'NOSTR_JOB', 'msat', amount,
        '[{"external": "invoice"}]'::jsonb,
        jsonb_build_array(jsonb_build_object('type', 'NOSTR_JOB', 'account', j.provider_account, 'amount', amount)),
        metadata => jsonb_build_object('job', j.id, 'request', j.request_id, 'via', 'invoice'));
    inv := payledger.open_invoice(p.payin_id, provider, expiry, 'NIP-90 job ' || j.request_id);
    RETURN QUERY SELECT p.payin_id, inv.id, amount, inv.status;
END;
$$;

-- A job's invoice pay-in reached PAID (called from payin_reached, in the
-- settling transaction; the state trigger locked the job first).
CREATE FUNCTION payledger.nostr_job_invoice_paid(payin uuid)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    j payledger.nostr_jobs;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;
    SELECT * INTO j FROM payledger.nostr_jobs x WHERE x.id = (p.metadata ->> 'job')::uuid FOR UPDATE;
    IF NOT EXISTS (SELECT 1 FROM payledger.nostr_job_payments n WHERE n.payin_id = p.id) THEN
        -- (an invoice's payment hash; a pay-in an application settled by hand
        -- may have no reference)
        PERFORM payledger.nostr_job_record(j, p.id, 'invoice', coalesce(p.external_ref, 'payin:' || p.id), p.cost,
                                           NULL, NULL, NULL);
    END IF;
END;
$$;

-- Pay a job with a zap receipt (kind 9735) whose e tag is one of the job's
-- published events: verified (docs/nostr.md) against the provider's LNURL key
-- and pubkey and that event, then credited once. outcome: credited,
-- duplicate (this payment was credited before), invalid (failures say why).
CREATE FUNCTION payledger.nostr_job_pay_zap(receipt jsonb)
RETURNS TABLE (outcome text, job_id uuid, failures text[], amount_msat bigint, paid_msat bigint, requested_msat bigint,
               state text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    ev record;
    j payledger.nostr_jobs;
    v record;
BEGIN
    PERFORM payledger.require(receipt, 'receipt');
    SELECT e.* INTO ev FROM jsonb_array_elements(receipt -> 'tags') t
      JOIN payledger.nostr_job_events e ON e.event_id = t ->> 1
     WHERE t ->> 0 = 'e' LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the receipt zaps no event published for a job' USING ERRCODE = 'PL025';
    END IF;
    j := payledger.nostr_job_lock(ev.job_id);
    SELECT * INTO v FROM payledger.verify_zap_receipt(receipt, j.lnurl_pubkey, recipient => j.provider_pubkey,
                                                      expected_event => ev.event_id);
    IF NOT v.valid THEN
        RETURN QUERY SELECT 'invalid', j.id, v.failures, v.amount_msat, j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.nostr_job_payments p
                WHERE p.payment_hash = v.payment_hash OR p.receipt_id = v.receipt_id OR p.zap_request_id = v.request_id) THEN
        RETURN QUERY SELECT 'duplicate', j.id, '{}'::text[], v.amount_msat, j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF j.state = 'error' THEN
        RAISE EXCEPTION 'job % failed (%): its payments are refunded outside payledger', j.id, j.error
            USING ERRCODE = 'PL027';
    END IF;
    j := payledger.nostr_job_credit(j, 'zap', v.payment_hash, v.amount_msat, v.payer_pubkey, v.receipt_id, v.request_id);
    RETURN QUERY SELECT 'credited', j.id, '{}'::text[], v.amount_msat, j.paid_msat, j.requested_msat, j.state;
END;
$$;

-- Pay a job with an invoice settled outside payledger (the provider's own
-- bolt11 from an amount tag, confirmed at its node): credited once per
-- payment hash. Invoices from nostr_job_invoice are credited by themselves.
CREATE FUNCTION payledger.nostr_job_pay_invoice(job uuid, payment_hash text, amount_msat bigint)
RETURNS TABLE (outcome text, paid_msat bigint, requested_msat bigint, state text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_lock(job);
BEGIN
    PERFORM payledger.require(payment_hash, 'payment_hash');
    PERFORM payledger.require(amount_msat, 'amount_msat');
    IF payment_hash !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'payment_hash is 64 lower-case hex characters' USING ERRCODE = '22023';
    END IF;
    IF amount_msat <= 0 THEN
        RAISE EXCEPTION 'amount_msat must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.nostr_job_payments p WHERE p.payment_hash = nostr_job_pay_invoice.payment_hash) THEN
        RETURN QUERY SELECT 'duplicate', j.paid_msat, j.requested_msat, j.state;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payment_hash = nostr_job_pay_invoice.payment_hash) THEN
        RAISE EXCEPTION 'the invoice with this payment hash is payledger''s own' USING ERRCODE = '22023',
            HINT = 'It credits its job when the worker or a webhook sees it paid.';
    END IF;
    IF j.state = 'error' THEN
        RAISE EXCEPTION 'job % failed (%)', j.id, j.error USING ERRCODE = 'PL027';
    END IF;
    j := payledger.nostr_job_credit(j, 'invoice', payment_hash, amount_msat, NULL, NULL, NULL);
    RETURN QUERY SELECT 'credited', j.paid_msat, j.requested_msat, j.state;
END;
$$;

-- Fail a job (the provider's error, or a payment that did not come).
CREATE FUNCTION payledger.nostr_job_fail(job uuid, message text)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    j payledger.nostr_jobs := payledger.nostr_job_lock(job);
BEGIN
    PERFORM payledger.require(message, 'message');
    IF j.state IN ('success', 'error') THEN
        RAISE EXCEPTION 'job % is already %', job, j.state USING ERRCODE = 'PL027';
    END IF;
    UPDATE payledger.nostr_jobs x SET state = 'error', error = message, pay_by = NULL, updated_at = now() WHERE x.id = j.id;
    RETURN 'error';
END;
$$;

-- Fail the jobs whose payment did not come in time ('payment timeout');
-- returns how many. Jobs locked by another session are left for the next run.
CREATE FUNCTION payledger.nostr_expire_jobs(max_jobs integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM payledger.require_limit(max_jobs, 'max_jobs');
    WITH due AS (
        SELECT x.id FROM payledger.nostr_jobs x
         WHERE x.state IN ('payment_required', 'delivered') AND x.pay_by <= clock_timestamp()
         ORDER BY x.pay_by LIMIT max_jobs FOR UPDATE SKIP LOCKED)
    UPDATE payledger.nostr_jobs x
       SET state = 'error', error = format('payment timeout: paid %s of %s msat', x.paid_msat, x.requested_msat),
           pay_by = NULL, updated_at = now()
      FROM due WHERE x.id = due.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

-- Invariants of jobs (part of payledger.check_invariants()).
CREATE FUNCTION payledger.nostr_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT 'nostr_job_paid', j.id::text, format('paid_msat %s, credited payments %s', j.paid_msat, coalesce(p.total, 0))
      FROM payledger.nostr_jobs j
      LEFT JOIN (SELECT p.job_id, sum(p.amount_msat) AS total FROM payledger.nostr_job_payments p GROUP BY p.job_id) p
        ON p.job_id = j.id
     WHERE j.paid_msat <> coalesce(p.total, 0)
    UNION ALL
    SELECT 'nostr_job_requested', j.id::text, format('requested_msat %s, published amounts %s', j.requested_msat, coalesce(e.total, 0))
      FROM payledger.nostr_jobs j
      LEFT JOIN (SELECT e.job_id, sum(e.amount_msat) AS total FROM payledger.nostr_job_events e GROUP BY e.job_id) e
        ON e.job_id = j.id
     WHERE j.requested_msat <> coalesce(e.total, 0)
    UNION ALL
    SELECT 'nostr_payment_paid_in', p.payment_hash, format('pay-in %s', p.payin_id)
      FROM payledger.nostr_job_payments p LEFT JOIN payledger.payins x ON x.id = p.payin_id
     WHERE x.id IS NULL OR x.state <> 'PAID' OR x.cost <> p.amount_msat OR coalesce(x.external_ref, 'payin:' || x.id) <> p.payment_hash
    UNION ALL
    SELECT 'nostr_invoice_credited', x.id::text, format('job %s', x.metadata ->> 'job')
      FROM payledger.payins x
     WHERE x.type = 'NOSTR_JOB' AND x.state = 'PAID' AND x.metadata ->> 'via' = 'invoice'
       AND NOT EXISTS (SELECT 1 FROM payledger.nostr_job_payments p WHERE p.payin_id = x.id)
    UNION ALL
    SELECT 'nostr_job_state', j.id::text, format('%s with paid %s of requested %s', j.state, j.paid_msat, j.requested_msat)
      FROM payledger.nostr_jobs j
     WHERE (j.state = 'success' AND j.paid_msat < j.requested_msat)
        OR (j.state = 'payment_required' AND j.policy <> 'upfront')
$$;

-- What a service provider (by its owner key) sees of its jobs.
CREATE VIEW payledger.my_nostr_jobs WITH (security_barrier) AS
SELECT j.id, j.request_id, j.request_kind, j.customer_pubkey, j.policy, j.price_msat, j.requested_msat, j.paid_msat,
       j.state, j.error, j.pay_by, j.created_at, j.updated_at
  FROM payledger.nostr_jobs j
 WHERE j.owner_id = payledger.current_owner_id();

-- payledger providers: the SQL API. Admin functions set up profiles,
-- providers, routes and hooks; the application asks for invoices, passes
-- webhooks and manages subscriptions; the worker's three steps (claim, call,
-- record) and its housekeeping are functions too, so `CALL
-- payledger.run_tick()` does exactly what the background worker does.

---------------------------------------------------------------------------
-- Settings the SQL side reads (defined in src/gucs.rs; defaults here too,
-- for sessions that have not loaded the library)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.setting_int(name text, fallback integer)
RETURNS integer LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('payledger.' || name, true), '')::integer, fallback);
$$;

-- Exponential backoff after n failures: 2^n seconds, at most worker_max_backoff.
CREATE FUNCTION payledger.backoff(n integer)
RETURNS interval LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(secs => least(power(2, least(greatest(n, 0), 30)),
                                       payledger.setting_int('worker_max_backoff', 600)));
$$;

---------------------------------------------------------------------------
-- Profiles, providers, routes (admin)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.create_merchant_profile(
    name       text,
    owner_id   text DEFAULT NULL,
    is_default boolean DEFAULT false,
    metadata   jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.merchant_profiles;
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid profile name %', name USING ERRCODE = '22023';
    END IF;
    SELECT * INTO p FROM payledger.merchant_profiles m WHERE m.name = create_merchant_profile.name;
    IF FOUND THEN
        IF p.owner_id IS DISTINCT FROM create_merchant_profile.owner_id
           OR p.is_default <> coalesce(create_merchant_profile.is_default, false) THEN
            RAISE EXCEPTION 'merchant profile % exists with other settings', name USING ERRCODE = 'PL014';
        END IF;
        RETURN p.id;
    END IF;
    IF is_default THEN
        UPDATE payledger.merchant_profiles m SET is_default = false WHERE m.is_default;
    END IF;
    INSERT INTO payledger.merchant_profiles (id, name, owner_id, is_default, metadata)
    VALUES (payledger.new_id(), name, owner_id, coalesce(is_default, false), coalesce(metadata, '{}'))
    RETURNING * INTO p;
    RETURN p.id;
END;
$$;

CREATE FUNCTION payledger.profile_id(profile text)
RETURNS uuid LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    SELECT m.id INTO id FROM payledger.merchant_profiles m WHERE m.name = profile;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'merchant profile % does not exist', profile USING ERRCODE = 'PL028';
    END IF;
    RETURN id;
END;
$$;

-- The credential field each kind needs (checked when a provider is added).
CREATE FUNCTION payledger.provider_credential_field(kind payledger.provider_kind)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE kind WHEN 'lnbits' THEN 'invoice_key' WHEN 'lnd_rest' THEN 'macaroon'
                     WHEN 'cln_rest' THEN 'rune' WHEN 'btcpay' THEN 'api_key' WHEN 'stripe' THEN 'secret_key' END;
$$;

CREATE FUNCTION payledger.add_provider(
    profile        text,
    name           text,
    kind           payledger.provider_kind,
    base_url       text,
    credentials    jsonb,
    config         jsonb DEFAULT '{}'::jsonb,
    rail           text DEFAULT NULL,
    asset          text DEFAULT NULL,
    invoice_expiry interval DEFAULT '1 hour',
    monitoring     interval DEFAULT '1 hour',
    priority       integer DEFAULT 0,
    webhook_secret text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pid uuid;
    prov payledger.providers;
    field text;
BEGIN
    PERFORM payledger.require(profile, 'profile');
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(kind, 'kind');
    PERFORM payledger.require(base_url, 'base_url');
    PERFORM payledger.require(credentials, 'credentials');
    -- (the worker reads both back: nothing it cannot parse gets stored)
    PERFORM payledger.json_readable(credentials), payledger.json_readable(coalesce(config, '{}'));
    pid := payledger.profile_id(profile);
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid provider name %', name USING ERRCODE = '22023';
    END IF;
    IF base_url !~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$' THEN
        RAISE EXCEPTION 'base_url must be an http(s) URL without credentials, query or fragment'
            USING ERRCODE = '22023';
    END IF;
    field := payledger.provider_credential_field(kind);
    IF jsonb_typeof(credentials) <> 'object' OR jsonb_typeof(credentials -> field) IS DISTINCT FROM 'string' THEN
        -- the message names the field, never the value
        RAISE EXCEPTION 'credentials of a % provider need a string "%"', kind, field USING ERRCODE = '22023';
    END IF;
    IF kind = 'btcpay' AND jsonb_typeof(config -> 'store_id') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'a btcpay provider needs config {"store_id": …}' USING ERRCODE = '22023';
    END IF;
    asset := coalesce(asset, CASE WHEN kind = 'stripe' THEN NULL ELSE 'msat' END);
    PERFORM payledger.require(asset, 'asset');
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = add_provider.asset) THEN
        RAISE EXCEPTION 'asset % does not exist', asset USING ERRCODE = 'PL003';
    END IF;
    INSERT INTO payledger.providers AS p (id, profile_id, name, kind, base_url, rail, asset, config,
                                          invoice_expiry, monitoring, priority)
    VALUES (payledger.new_id(), pid, name, kind, base_url,
            coalesce(rail, CASE WHEN kind = 'stripe' THEN 'card' ELSE 'invoice' END), asset,
            coalesce(config, '{}'), coalesce(invoice_expiry, '1 hour'), coalesce(monitoring, '1 hour'),
            coalesce(priority, 0))
    ON CONFLICT ON CONSTRAINT providers_profile_id_name_key DO NOTHING
    RETURNING * INTO prov;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % already exists in profile %', name, profile USING ERRCODE = 'PL014',
            HINT = 'Change its credentials with set_provider_credentials; retire it with set_provider_active.';
    END IF;
    INSERT INTO payledger.provider_secrets (provider_id, credentials, webhook_secret)
    VALUES (prov.id, credentials, webhook_secret);
    RETURN prov.id;
END;
$$;

CREATE FUNCTION payledger.set_provider_credentials(provider uuid, credentials jsonb, webhook_secret text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k payledger.provider_kind;
    field text;
BEGIN
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(credentials, 'credentials');
    PERFORM payledger.json_readable(credentials);
    SELECT p.kind INTO k FROM payledger.providers p WHERE p.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    field := payledger.provider_credential_field(k);
    IF jsonb_typeof(credentials) <> 'object' OR jsonb_typeof(credentials -> field) IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'credentials of a % provider need a string "%"', k, field USING ERRCODE = '22023';
    END IF;
    UPDATE payledger.provider_secrets s
       SET credentials = set_provider_credentials.credentials,
           webhook_secret = coalesce(set_provider_credentials.webhook_secret, s.webhook_secret),
           updated_at = now()
     WHERE s.provider_id = provider;
END;
$$;

CREATE FUNCTION payledger.set_provider_active(provider uuid, active boolean)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(active, 'active');
    UPDATE payledger.providers p SET active = set_provider_active.active WHERE p.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
END;
$$;

-- Route a pay-in type's invoices to a profile. Existing invoices and
-- subscriptions keep the provider they were pinned to.
CREATE FUNCTION payledger.route_payin_type(payin_type text, profile text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pid uuid;
BEGIN
    PERFORM payledger.require(payin_type, 'payin_type');
    PERFORM payledger.require(profile, 'profile');
    pid := payledger.profile_id(profile);
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = payin_type) THEN
        RAISE EXCEPTION 'pay-in type % is not registered', payin_type USING ERRCODE = 'PL022';
    END IF;
    INSERT INTO payledger.payin_routes AS r (payin_type, profile_id) VALUES (payin_type, pid)
    ON CONFLICT ON CONSTRAINT payin_routes_pkey DO UPDATE SET profile_id = excluded.profile_id;
END;
$$;

-- The provider for a new invoice: in the given profile (else the type's
-- route, else the default profile), the first active provider serving the
-- rail in the asset, by priority then name. NULL when none does.
CREATE FUNCTION payledger.pick_provider(payin_type text, asset text, rail text, profile uuid DEFAULT NULL)
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT p.id FROM payledger.providers p
     WHERE p.profile_id = coalesce(profile,
                                   (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = pick_provider.payin_type),
                                   (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default))
       AND p.active AND p.rail = pick_provider.rail AND p.asset = pick_provider.asset
     ORDER BY p.priority, p.name
     LIMIT 1;
$$;

---------------------------------------------------------------------------
-- Invoices
---------------------------------------------------------------------------

-- Open the invoice row of a pay-in that waits for one (status creating; the
-- worker creates it at the provider). Idempotent: the pay-in's existing
-- invoice is returned as it is. Without a provider to issue it: PL028.
CREATE FUNCTION payledger.open_invoice(
    payin        uuid,
    provider     uuid DEFAULT NULL,
    expiry       interval DEFAULT NULL,
    memo         text DEFAULT NULL,
    subscription uuid DEFAULT NULL)
RETURNS payledger.invoices
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    prov payledger.providers;
    inv payledger.invoices;
    max_age interval := make_interval(secs => payledger.setting_int('worker_max_invoice_age', 259200));
BEGIN
    PERFORM payledger.require(payin, 'payin');
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF p.state <> 'PENDING_INVOICE_CREATION' THEN
        RAISE EXCEPTION 'pay-in % is %, not waiting for an invoice', payin, p.state USING ERRCODE = 'PL020';
    END IF;
    IF expiry IS NOT NULL AND expiry <= '0' THEN
        RAISE EXCEPTION 'expiry must be positive' USING ERRCODE = '22023';
    END IF;
    -- (the row lock above makes a concurrent call wait, then find the row)
    SELECT * INTO inv FROM payledger.invoices i WHERE i.payin_id = payin;
    IF FOUND THEN
        RETURN inv;
    END IF;
    IF provider IS NOT NULL THEN
        SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
        END IF;
        IF prov.asset <> p.asset OR prov.rail <> p.external_method THEN
            RAISE EXCEPTION 'provider % serves % in %, not % in %', prov.name, prov.rail, prov.asset,
                p.external_method, p.asset USING ERRCODE = 'PL004';
        END IF;
    ELSE
        SELECT * INTO prov FROM payledger.providers x
         WHERE x.id = payledger.pick_provider(p.type, p.asset, p.external_method);
    END IF;
    IF prov.id IS NULL THEN
        RAISE EXCEPTION 'no active provider serves % in % for pay-in type %', p.external_method, p.asset, p.type
            USING ERRCODE = 'PL028', HINT = 'Add one with add_provider, or route the type with route_payin_type.';
    END IF;
    INSERT INTO payledger.invoices (id, payin_id, provider_id, provider_kind, provider_name, profile_id, subscription_id,
                                    asset, amount, memo, expiry, status, monitor_until, next_check_at)
    VALUES (payledger.new_id(), p.id, prov.id, prov.kind, prov.name, prov.profile_id, subscription,
            p.asset, p.external_amount, coalesce(memo, p.type || ' ' || p.id), coalesce(expiry, prov.invoice_expiry),
            -- the creation deadline: an invoice not created within its own
            -- expiry (a long outage) fails its pay-in; due at once and first
            -- in line (a payer is waiting for it), in this tick too
            'creating', now() + least(max_age, coalesce(expiry, prov.invoice_expiry)), '-infinity')
    RETURNING * INTO inv;
    RETURN inv;
END;
$$;

-- For the application: pin the provider, expiry or memo of a pay-in's
-- invoice right after creating the pay-in (else the worker opens it with the
-- route's provider and defaults).
CREATE FUNCTION payledger.request_invoice(
    payin    uuid,
    provider uuid DEFAULT NULL,
    expiry   interval DEFAULT NULL,
    memo     text DEFAULT NULL)
RETURNS TABLE (invoice_id uuid, status payledger.invoice_status, provider_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
BEGIN
    inv := payledger.open_invoice(payin, provider, expiry, memo);
    RETURN QUERY SELECT inv.id, inv.status, inv.provider_id;
END;
$$;

-- Money that arrived for a pay-in that had already failed: from the rail's
-- clearing account to the suspense account 'late_payments', with an event,
-- so that nothing received goes unrecorded. What to do with it (credit the
-- payer, refund) is the operator's call.
CREATE FUNCTION payledger.record_late_payment(inv payledger.invoices, received bigint)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    late uuid;
    j uuid;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id;
    late := payledger.open_account('payledger', p.asset, 'suspense', 'late_payments');
    j := payledger.transfer(p.external_account, late, received, 'late-payment:' || inv.id,
                            jsonb_build_object('invoice', inv.id, 'payin', p.id), NULL, 'late_payment');
    PERFORM payledger.emit_event('invoice.paid_late', inv.id, p.owner_id,
        jsonb_build_object('invoice', inv.id, 'payin', p.id, 'payin_state', p.state, 'amount', received,
                           'asset', p.asset, 'journal', j));
    RETURN j;
END;
$$;

-- When to check an unsettled invoice again: after a tenth of its age, at
-- most a minute until it expires and at most ten minutes after (while it is
-- watched for late money). Young invoices (the ones customers are paying)
-- are checked at every tick, old ones rarely, so that the checks a provider
-- must answer do not grow with the invoices left unpaid; webhooks bring news
-- sooner. (The soak found both: every pending invoice checked at every
-- tick, then every expired one, outgrew what LNbits answers.)
CREATE FUNCTION payledger.invoice_recheck_at(i payledger.invoices)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT now() + least((now() - i.created_at) / 10,
                         CASE WHEN i.expires_at IS NULL OR now() < i.expires_at THEN interval '1 minute'
                              ELSE interval '10 minutes' END);
$$;

-- Apply what was learnt about an invoice: by the worker after a call, or by
-- a verified webhook. The invoice row is locked first (then the pay-in, then
-- accounts), and every change is guarded by the state it comes from, so two
-- reports of the same payment settle it once.
--   {"op": "create", "ok": true, "external_id", "payment_hash", "payment_request", "expires_at", "monitor_until"}
--   {"op": "create", "ok": false, "error", "retryable"}
--   {"op": "check", "status": "paid", "received", "preimage"}
--   {"op": "check", "status": "pending" | "expired" | "invalid" | "not_found", "note"}
--   {"op": "check", "ok": false, "error", "retryable"}
-- Returns what it did, in a word.
CREATE FUNCTION payledger.invoice_apply(invoice uuid, result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv payledger.invoices;
    p payledger.payins;
    prov payledger.providers;
    t record;
    received bigint;
    said text := result ->> 'status';
    max_attempts integer := payledger.setting_int('worker_create_attempts', 5);
BEGIN
    SELECT * INTO inv FROM payledger.invoices i WHERE i.id = invoice FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invoice % does not exist', invoice USING ERRCODE = 'PL029';
    END IF;
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = inv.provider_id;

    IF result ->> 'op' = 'create' THEN
        IF inv.status <> 'creating' THEN
            RETURN 'ignored';
        END IF;
        IF result ->> 'ok' = 'false' THEN
            -- an unreachable provider does not use up the tries (its backoff
            -- paces them); the creation deadline (monitor_until) still holds
            IF coalesce((result ->> 'retryable')::boolean, false) THEN
                UPDATE payledger.invoices i
                   SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                       create_attempts = greatest(i.create_attempts - 1, 0),
                       next_check_at = now(), locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                RETURN 'creation_unreachable';
            END IF;
            IF inv.create_attempts >= max_attempts THEN
                UPDATE payledger.invoices i
                   SET status = 'failed', last_error = left(result ->> 'error', 500), next_check_at = NULL,
                       locked_until = NULL, updated_at = now()
                 WHERE i.id = inv.id;
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED', 'INVOICE_CREATION_FAILED');
                RETURN 'creation_failed';
            END IF;
            UPDATE payledger.invoices i
               SET last_error = left(result ->> 'error', 500), errors = i.errors + 1,
                   next_check_at = now() + payledger.backoff(i.create_attempts), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'creation_retry';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'pending', external_id = result ->> 'external_id', payment_hash = result ->> 'payment_hash',
               payment_request = result ->> 'payment_request',
               expires_at = coalesce(to_timestamp((result ->> 'expires_at')::double precision), now() + i.expiry),
               monitor_until = least(i.created_at + make_interval(secs => payledger.setting_int('worker_max_invoice_age', 259200)),
                                     coalesce(to_timestamp((result ->> 'monitor_until')::double precision),
                                              coalesce(to_timestamp((result ->> 'expires_at')::double precision),
                                                       now() + i.expiry) + prov.monitoring)),
               errors = 0, last_error = NULL, next_check_at = now(), locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        SELECT * INTO t FROM payledger.transition_payin(inv.payin_id, 'PENDING', NULL,
                                                        coalesce(result ->> 'payment_hash', result ->> 'external_id'));
        RETURN CASE WHEN t.changed THEN 'created' ELSE 'created_for_' || lower(t.state::text) END;
    END IF;

    -- a check (or a webhook's news)
    IF result ->> 'ok' = 'false' OR said = 'not_found' THEN
        UPDATE payledger.invoices i
           SET errors = i.errors + 1, checks = i.checks + 1,
               last_error = left(coalesce(result ->> 'error', 'not found at the provider'), 500),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL
                                    ELSE now() + payledger.backoff(i.errors + 1) END,
               locked_until = NULL, updated_at = now()
         WHERE i.id = inv.id;
        RETURN 'error';
    END IF;

    IF said = 'paid' THEN
        IF inv.status = 'paid' THEN
            UPDATE payledger.invoices i SET next_check_at = NULL, locked_until = NULL WHERE i.id = inv.id;
            RETURN 'already_paid';
        END IF;
        received := coalesce((result ->> 'received')::bigint, inv.amount);
        IF received < inv.amount THEN
            -- not all of it: keep watching, and say so
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, last_error = format('underpaid: %s of %s', received, inv.amount),
                   next_check_at = now(), locked_until = NULL, updated_at = now()
             WHERE i.id = inv.id;
            RETURN 'underpaid';
        END IF;
        UPDATE payledger.invoices i
           SET status = 'paid', amount_received = received, preimage = result ->> 'preimage', paid_at = now(),
               checks = i.checks + 1, errors = 0, last_error = NULL, next_check_at = NULL, locked_until = NULL,
               updated_at = now()
         WHERE i.id = inv.id
        RETURNING * INTO inv;
        -- locked, so that a cancel or failure committing meanwhile is seen
        -- (then the money is a late payment, not lost)
        SELECT * INTO p FROM payledger.payins x WHERE x.id = inv.payin_id FOR NO KEY UPDATE;
        IF p.state IN ('PENDING_INVOICE_CREATION', 'PENDING', 'HELD') THEN
            IF p.state = 'PENDING_INVOICE_CREATION' THEN
                PERFORM payledger.transition_payin(p.id, 'PENDING', NULL, coalesce(inv.payment_hash, inv.external_id));
            END IF;
            SELECT * INTO t FROM payledger.transition_payin(p.id, 'PAID');
            RETURN 'paid';
        END IF;
        IF p.state = 'PAID' THEN
            RETURN 'already_paid';
        END IF;
        -- FAILED or CANCELLED before the money came
        UPDATE payledger.invoices i SET paid_late = true, late_journal = payledger.record_late_payment(inv, received)
         WHERE i.id = inv.id;
        RETURN 'paid_late';
    END IF;

    IF said = 'pending' THEN
        UPDATE payledger.invoices i
           SET checks = i.checks + 1, errors = 0, last_error = NULL, locked_until = NULL, updated_at = now(),
               next_check_at = CASE WHEN i.next_check_at IS NULL THEN NULL ELSE payledger.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        RETURN 'pending';
    END IF;

    IF said IN ('expired', 'invalid') THEN
        IF inv.status IN ('paid', 'failed') OR (inv.status = 'expired' AND said = 'expired') THEN
            UPDATE payledger.invoices i
               SET checks = i.checks + 1, locked_until = NULL,
                   next_check_at = CASE WHEN i.next_check_at IS NOT NULL AND i.monitor_until > now()
                                        THEN payledger.invoice_recheck_at(i) END
             WHERE i.id = inv.id;
            RETURN 'unchanged';
        END IF;
        UPDATE payledger.invoices i
           SET status = CASE WHEN said = 'expired' THEN 'expired' ELSE 'failed' END::payledger.invoice_status,
               checks = i.checks + 1, errors = 0, locked_until = NULL, updated_at = now(),
               last_error = left(coalesce(result ->> 'note', result ->> 'error'), 500),
               -- an expired invoice is still watched for late money until monitor_until
               next_check_at = CASE WHEN said = 'expired' AND i.monitor_until > now() THEN payledger.invoice_recheck_at(i) END
         WHERE i.id = inv.id;
        IF result ->> 'note' IS NOT NULL THEN
            PERFORM payledger.emit_event('invoice.partial_payment', inv.id, NULL,
                jsonb_build_object('invoice', inv.id, 'payin', inv.payin_id, 'note', result ->> 'note'));
        END IF;
        PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
            CASE WHEN said = 'expired' THEN 'INVOICE_EXPIRED' ELSE 'UNKNOWN_FAILURE' END::payledger.payin_failure_reason);
        RETURN said;
    END IF;
    RAISE EXCEPTION 'unknown invoice result %', result USING ERRCODE = '22023';
END;
$$;

---------------------------------------------------------------------------
-- The worker's steps
---------------------------------------------------------------------------

-- Step 1, in its own short transaction: open invoices for pay-ins waiting
-- for one, then claim due invoices (SKIP LOCKED, with a lease so that a
-- crashed worker's claims come back) and return what to call. No secrets.
CREATE FUNCTION payledger.worker_claim(batch integer, due_before timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    lease interval := make_interval(secs => 30 + 2 * payledger.setting_int('worker_http_timeout', 10000) / 1000.0);
    w record;
    claims jsonb;
BEGIN
    PERFORM payledger.require_limit(batch, 'batch');
    -- (pay-ins no provider serves are the application's to invoice: left alone)
    FOR w IN SELECT p.id FROM payledger.payins p
              WHERE p.state = 'PENDING_INVOICE_CREATION' AND p.external_amount > 0
                AND NOT EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payin_id = p.id)
                AND payledger.pick_provider(p.type, p.asset, p.external_method) IS NOT NULL
              ORDER BY p.state_changed_at LIMIT batch
              FOR NO KEY UPDATE OF p SKIP LOCKED LOOP
        PERFORM payledger.open_invoice(w.id);
    END LOOP;

    WITH due AS (
        SELECT i.id FROM payledger.invoices i JOIN payledger.providers pr ON pr.id = i.provider_id
         WHERE i.next_check_at <= due_before
           AND (i.locked_until IS NULL OR i.locked_until < now())
           AND (pr.retry_after IS NULL OR pr.retry_after <= now())
         ORDER BY i.next_check_at
         LIMIT batch
         FOR UPDATE OF i SKIP LOCKED),
    claimed AS (
        UPDATE payledger.invoices i
           SET locked_until = now() + lease,
               create_attempts = i.create_attempts + (i.status = 'creating')::integer
          FROM due WHERE i.id = due.id
        RETURNING i.*)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'invoice_id', c.id, 'op', CASE WHEN c.status = 'creating' THEN 'create' ELSE 'check' END,
               'provider_id', c.provider_id, 'kind', pr.kind, 'base_url', pr.base_url, 'config', pr.config,
               'amount', c.amount, 'asset', c.asset, 'memo', c.memo,
               'expiry_secs', greatest(1, extract(epoch FROM c.expiry)::bigint),
               'external_id', c.external_id)), '[]')
      INTO claims
      FROM claimed c JOIN payledger.providers pr ON pr.id = c.provider_id;
    RETURN claims;
END;
$$;

-- Step 3: apply one result, in its own short transaction (the worker and
-- run_tick commit after each). One result per transaction is the lock order:
-- settling locks the invoice, then its pay-in, then that pay-in's accounts in
-- one pass, as a client's call does; a transaction settling two pay-ins would
-- lock two passes of accounts, out of order with a client's single pass, and
-- could deadlock with it. A result that cannot be applied is recorded on the
-- invoice (backoff) with a WARNING, never lost. Returns the outcome in a word.
CREATE FUNCTION payledger.worker_apply(result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(result, 'result');
    BEGIN
        RETURN payledger.invoice_apply((result ->> 'invoice_id')::uuid, result);
    EXCEPTION WHEN OTHERS THEN
        UPDATE payledger.invoices i
           SET last_error = left('applying the result: ' || SQLERRM, 500), locked_until = NULL,
               errors = i.errors + 1, next_check_at = now() + payledger.backoff(i.errors + 1)
         WHERE i.id = (result ->> 'invoice_id')::uuid;
        RAISE WARNING 'payledger worker: invoice %: %', result ->> 'invoice_id', SQLERRM;
        RETURN 'apply_error';
    END;
END;
$$;

-- After a batch's results are applied, in one more short transaction: the
-- providers' health (providers in id order). One that answered anything is
-- up; one that answered nothing backs off.
CREATE FUNCTION payledger.worker_provider_health(results jsonb)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    PERFORM payledger.require(results, 'results');
    FOR h IN SELECT (x ->> 'provider_id')::uuid AS id,
                    bool_or(NOT (x ->> 'ok' = 'false' AND coalesce((x ->> 'retryable')::boolean, false))) AS answered,
                    max(x ->> 'error') AS error
               FROM jsonb_array_elements(results) x
              WHERE x ? 'provider_id'
              GROUP BY 1 ORDER BY 1 LOOP
        IF h.answered THEN
            UPDATE payledger.providers x SET consecutive_failures = 0, retry_after = NULL, last_ok_at = now()
             WHERE x.id = h.id;
        ELSE
            UPDATE payledger.providers x
               SET consecutive_failures = x.consecutive_failures + 1,
                   retry_after = now() + payledger.backoff(x.consecutive_failures + 1),
                   last_error = left(h.error, 500)
             WHERE x.id = h.id;
        END IF;
    END LOOP;
END;
$$;

-- Invoices past their deadline: one unpaid past monitoring (or never created
-- in time) expires (or fails) and fails its pay-in, which gives back its
-- custodial legs; an expired one past monitoring is no longer watched.
-- Returns how many it closed. The worker calls it with max_invoices 1, one
-- transaction each (one pay-in's accounts per transaction: see worker_apply).
CREATE FUNCTION payledger.expire_invoices(max_invoices integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    inv record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger.require_limit(max_invoices, 'max_invoices');
    FOR inv IN SELECT i.id, i.status, i.payin_id FROM payledger.invoices i
                WHERE i.next_check_at IS NOT NULL AND i.monitor_until < now()
                  AND (i.locked_until IS NULL OR i.locked_until < now())
                LIMIT max_invoices FOR UPDATE SKIP LOCKED LOOP
        -- an invoice whose closing fails (its pay-in's move raises) is
        -- backed off and reported, so that it holds up neither the others
        -- nor the worker
        BEGIN
            UPDATE payledger.invoices i
               SET status = CASE WHEN i.status = 'creating' THEN 'failed'
                                 WHEN i.status = 'pending' THEN 'expired' ELSE i.status END,
                   last_error = CASE WHEN i.status IN ('creating', 'pending') THEN coalesce(i.last_error, 'past its deadline')
                                     ELSE i.last_error END,
                   next_check_at = NULL, updated_at = now()
             WHERE i.id = inv.id;
            IF inv.status IN ('creating', 'pending') THEN
                PERFORM payledger.transition_payin(inv.payin_id, 'FAILED',
                    CASE WHEN inv.status = 'creating' THEN 'INVOICE_CREATION_FAILED' ELSE 'INVOICE_EXPIRED' END::payledger.payin_failure_reason);
            END IF;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.invoices i
               SET errors = i.errors + 1, last_error = left('closing failed: ' || msg, 500),
                   locked_until = now() + payledger.backoff(i.errors + 1), updated_at = now()
             WHERE i.id = inv.id;
            RAISE WARNING 'payledger: closing invoice % failed: %', inv.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

-- The housekeeping after a tick's calls, as steps: each call of a step is
-- its own transaction, taking up to per_call items; a step is called again
-- while a call comes back full, at most max_calls times (and, for the seals,
-- within budget). A step that moves money for several owners takes one item
-- per transaction (the lock order, see worker_apply); a step that moves it
-- in one engine batch (holds, credit expiry) or moves none takes a batch.
-- The worker (src/worker.rs) and run_tick both follow this plan.
CREATE FUNCTION payledger.housekeeping_plan(batch integer DEFAULT 1000)
RETURNS TABLE (step text, per_call integer, max_calls integer, budget interval)
LANGUAGE sql IMMUTABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    VALUES ('invoices_closed', 1, batch, NULL::interval),
           ('holds_expired', batch, 1, NULL),
           ('credit_grants_expired', batch, 1, NULL),
           ('credit_expiry_events', batch, 1, NULL),
           ('jobs_expired', batch, 1, NULL),
           ('hooks_run', 1, batch, NULL),
           ('subscriptions_renewed', 1, batch, NULL),
           -- tamper evidence, off the hot path: blocks of up to 100,000
           -- entries, for about 5 seconds a tick at most
           ('entries_sealed', 100000, 2147483647, interval '5 seconds');
$$;

-- One call of a housekeeping step (see housekeeping_plan); returns how many
-- items it took.
CREATE FUNCTION payledger.housekeeping_step(step text, per_call integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    msg text;
    code text;
BEGIN
    PERFORM payledger.require(step, 'step');
    IF step NOT IN (SELECT p.step FROM payledger.housekeeping_plan() p) THEN
        RAISE EXCEPTION 'unknown housekeeping step %', step USING ERRCODE = '22023',
            HINT = 'The steps are in payledger.housekeeping_plan().';
    END IF;
    -- A step that fails is reported and skipped until the next tick: the
    -- other steps still run, and the worker does not end (and restart) over it.
    BEGIN
        RETURN CASE step
            WHEN 'invoices_closed' THEN payledger.expire_invoices(per_call)
            WHEN 'holds_expired' THEN payledger.expire_holds(per_call)
            WHEN 'credit_grants_expired' THEN payledger.expire_credits(per_call)
            WHEN 'credit_expiry_events' THEN payledger.credit_check_expiring(per_call)
            WHEN 'jobs_expired' THEN payledger.nostr_expire_jobs(per_call)
            WHEN 'hooks_run' THEN payledger.retry_hooks(per_call)
            WHEN 'subscriptions_renewed' THEN payledger.renew_due_subscriptions(per_call)
            WHEN 'entries_sealed' THEN payledger.seal_ledger(per_call)
        END;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
        RAISE WARNING 'payledger housekeeping: step % failed (%): %', step, code, msg;
        RETURN 0;
    END;
END;
$$;

CREATE FUNCTION payledger.worker_note_tick(result jsonb, worker_pid integer DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_status
       SET last_tick_at = now(), ticks = ticks + 1, last_result = result,
           pid = coalesce(worker_pid, pid), started_at = CASE WHEN worker_pid IS DISTINCT FROM pid THEN now() ELSE started_at END;
$$;

-- One tick on demand, by the same steps as the background worker: claim and
-- commit, call the providers in a statement that holds no row lock and no
-- transaction id, record and commit, until nothing is due; then the
-- housekeeping. For operators and tests (a procedure: CALL it outside an
-- explicit transaction block).
-- (No SET search_path: a procedure with one cannot COMMIT. Every name in it
-- is qualified, and pg_catalog is searched first anyway.)
CREATE PROCEDURE payledger.run_tick(batch integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    claims jsonb;
    results jsonb;
    r jsonb;
    outcome text;
    counts jsonb := '{}';
    h record;
    calls integer;
    got bigint;
    took bigint;
    step_started timestamptz;
    n integer := coalesce(batch, payledger.setting_int('worker_batch_size', 500));
    m_orgs integer;
    m_charged integer;
    m_blocked integer;
    m_failed integer;
BEGIN
    LOOP
        claims := payledger.worker_claim(n, started);
        COMMIT;
        EXIT WHEN jsonb_array_length(claims) = 0;
        results := payledger.provider_call(claims);
        -- one result per transaction (see worker_apply)
        FOR r IN SELECT x FROM jsonb_array_elements(results) x LOOP
            outcome := payledger.worker_apply(r);
            COMMIT;
            counts := jsonb_set(counts, ARRAY[outcome], to_jsonb(coalesce((counts ->> outcome)::integer, 0) + 1));
        END LOOP;
        PERFORM payledger.worker_provider_health(results);
        COMMIT;
        EXIT WHEN jsonb_array_length(claims) < n;
    END LOOP;
    -- the housekeeping, a transaction per call (see housekeeping_plan)
    FOR h IN SELECT * FROM payledger.housekeeping_plan(n) LOOP
        calls := 0;
        took := 0;
        step_started := clock_timestamp();
        LOOP
            got := payledger.housekeeping_step(h.step, h.per_call);
            COMMIT;
            calls := calls + 1;
            took := took + got;
            EXIT WHEN got < h.per_call OR calls >= h.max_calls
                   OR clock_timestamp() - step_started > coalesce(h.budget, interval '100 years');
        END LOOP;
        counts := counts || jsonb_build_object(h.step, took);
    END LOOP;
    -- metering, every payledger.metering_interval seconds (four times a day)
    IF payledger.metering_due() THEN
        CALL payledger.meter_all(n, m_orgs, m_charged, m_blocked, m_failed);
        counts := counts || jsonb_build_object('orgs_metered', m_orgs, 'metering_failed', m_failed);
    END IF;
    PERFORM payledger.worker_note_tick(counts);
    COMMIT;
    PERFORM payledger.announce_events();
    COMMIT;
    RAISE NOTICE 'payledger tick: %', counts;
END;
$$;

---------------------------------------------------------------------------
-- Webhooks
---------------------------------------------------------------------------

-- The application passes a provider's webhook as received: the raw body
-- (exactly the bytes signed) and the headers as a JSON object. A bad
-- signature is PL026 and changes nothing. A signed settlement or failure is
-- applied like the reconciler's; anything else (and every unsigned hint)
-- makes the invoice due for a check at the next tick.
CREATE FUNCTION payledger.provider_webhook(provider uuid, headers jsonb, body text)
RETURNS TABLE (invoice_id uuid, event text, action text, outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prov payledger.providers;
    secret text;
    v record;
    inv payledger.invoices;
BEGIN
    PERFORM payledger.require(provider, 'provider');
    PERFORM payledger.require(body, 'body');
    SELECT * INTO prov FROM payledger.providers x WHERE x.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    SELECT s.webhook_secret INTO secret FROM payledger.provider_secrets s WHERE s.provider_id = provider;
    SELECT * INTO v FROM payledger.webhook_verify_core(prov.kind::text, secret, coalesce(headers, '{}'), body);
    IF v.sqlstate IS NOT NULL THEN
        PERFORM payledger.raise_failure(v.sqlstate, v.message, NULL);
    END IF;
    SELECT * INTO inv FROM payledger.invoices i
     WHERE i.provider_id = provider AND (i.external_id = v.reference OR i.payment_hash = v.reference)
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no invoice of provider % has reference %', prov.name, v.reference USING ERRCODE = 'PL029';
    END IF;
    IF v.action = 'paid' THEN
        RETURN QUERY SELECT inv.id, v.event, v.action,
            payledger.invoice_apply(inv.id, jsonb_build_object('op', 'webhook', 'status', 'paid', 'received', v.received));
    ELSIF v.action = 'invalid' THEN
        RETURN QUERY SELECT inv.id, v.event, v.action,
            payledger.invoice_apply(inv.id, jsonb_build_object('op', 'webhook', 'status', 'invalid', 'error', v.note));
    ELSE
        UPDATE payledger.invoices i SET next_check_at = now(), errors = 0
         WHERE i.id = inv.id AND i.next_check_at IS NOT NULL;
        RETURN QUERY SELECT inv.id, v.event, v.action, CASE WHEN FOUND THEN 'check_scheduled' ELSE 'not_watched' END;
    END IF;
END;
$$;

---------------------------------------------------------------------------
-- Events (outbox) and settle hooks
---------------------------------------------------------------------------

-- Only the row: a NOTIFY in the writing transaction would take PostgreSQL's
-- cluster-wide notify lock at every commit (it serializes committing
-- notifiers, and cut pay-in throughput by about a third in the benchmark).
-- announce_events() sends one NOTIFY for all rows written since the last.
-- (PL/pgSQL: its INSERT's plan is kept for the session; a SQL function with
-- SET is planned again at every call)
CREATE FUNCTION payledger.emit_event(topic text, subject uuid, owner text, payload jsonb)
RETURNS bigint LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    event_id bigint;
BEGIN
    INSERT INTO payledger.events AS e (topic, subject_id, owner_id, payload)
    VALUES (emit_event.topic, subject, owner, payload) RETURNING e.id INTO event_id;
    RETURN event_id;
END;
$$;

-- NOTIFY payledger_events once, with {"last_id": n}, when events were written
-- since the last announcement; returns n (NULL: nothing new). The worker calls
-- it every payledger.worker_notify_interval ms, run_tick at its end. The
-- UPDATE makes concurrent announcers take turns.
CREATE FUNCTION payledger.announce_events()
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    last_id bigint;
BEGIN
    SELECT max(e.id) INTO last_id FROM payledger.events e;
    UPDATE payledger.worker_status w SET announced_id = last_id WHERE w.announced_id < last_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('payledger_events', jsonb_build_object('last_id', last_id)::text);
    RETURN last_id;
END;
$$;

CREATE FUNCTION payledger.events_since(after_id bigint DEFAULT 0, max_events integer DEFAULT 100)
RETURNS SETOF payledger.events LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require_limit(coalesce(max_events, 100), 'max_events');
    RETURN QUERY SELECT * FROM payledger.events e WHERE e.id > coalesce(after_id, 0) ORDER BY e.id
                  LIMIT least(coalesce(max_events, 100), 10000);
END;
$$;

-- The hook runs with the search_path of the session that registers it, as
-- it would there: so this wrapper is SECURITY INVOKER and has no SET clause
-- (inside one, current_setting would see the function's own search_path).
CREATE FUNCTION payledger.register_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[] DEFAULT '{PAID}',
    max_attempts integer DEFAULT 10)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT payledger.define_settle_hook(name, function, on_states, max_attempts,
                                        pg_catalog.current_setting('search_path'));
$$;

CREATE FUNCTION payledger.define_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[],
    max_attempts integer,
    caller_search_path text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(function, 'function');
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                    WHERE p.oid = function AND p.pronargs = 2 AND p.proargtypes[0] = 'uuid'::regtype
                      AND p.proargtypes[1] = 'payledger.payin_state'::regtype) THEN
        RAISE EXCEPTION 'a settle hook takes (payin uuid, state payledger.payin_state), not %', function
            USING ERRCODE = '22023';
    END IF;
    IF NOT coalesce(on_states <@ '{PAID,FAILED,CANCELLED}'::payledger.payin_state[], false) THEN
        RAISE EXCEPTION 'hooks run on PAID, FAILED or CANCELLED' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.settle_hooks AS h (name, function, on_states, max_attempts, search_path)
    VALUES (name, function, on_states, coalesce(max_attempts, 10), coalesce(caller_search_path, ''))
    ON CONFLICT ON CONSTRAINT settle_hooks_pkey DO UPDATE
       SET function = excluded.function, on_states = excluded.on_states, max_attempts = excluded.max_attempts,
           search_path = excluded.search_path, active = true;
END;
$$;

CREATE FUNCTION payledger.unregister_settle_hook(name text)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.settle_hooks h SET active = false WHERE h.name = unregister_settle_hook.name;
$$;

-- Run one hook run in a subtransaction: a failing hook is recorded (and
-- retried by the worker with backoff), never undoing the settlement.
CREATE FUNCTION payledger.run_hook(hook_name text, payin uuid, state payledger.payin_state)
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h payledger.settle_hooks;
    run payledger.hook_runs;
    msg text;
BEGIN
    SELECT * INTO h FROM payledger.settle_hooks x WHERE x.name = hook_name;
    SELECT * INTO run FROM payledger.hook_runs r
     WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state FOR UPDATE;
    IF run.status <> 'pending' THEN
        RETURN run.status = 'done';
    END IF;
    BEGIN
        -- local to this function call (its SET clause restores ours after)
        PERFORM pg_catalog.set_config('search_path', h.search_path, true);
        EXECUTE format('SELECT %s($1, $2)', h.function::oid::regproc) USING payin, state;
        PERFORM pg_catalog.set_config('search_path', 'payledger, pg_catalog, pg_temp', true);
        UPDATE payledger.hook_runs r SET status = 'done', attempts = r.attempts + 1, done_at = now(),
                                         last_error = NULL, next_attempt_at = NULL
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state;
        RETURN true;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        UPDATE payledger.hook_runs r
           SET attempts = r.attempts + 1, last_error = left(msg, 500),
               status = CASE WHEN r.attempts + 1 >= h.max_attempts THEN 'failed' ELSE 'pending' END,
               next_attempt_at = CASE WHEN r.attempts + 1 >= h.max_attempts THEN NULL
                                      ELSE now() + payledger.backoff(r.attempts + 1) END
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state
        RETURNING * INTO run;
        IF run.status = 'failed' THEN
            PERFORM payledger.emit_event('hook.failed', payin, NULL,
                jsonb_build_object('hook', hook_name, 'payin', payin, 'state', state, 'error', left(msg, 500)));
        END IF;
        RETURN false;
    END;
END;
$$;

CREATE FUNCTION payledger.retry_hooks(max_runs integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    PERFORM payledger.require_limit(max_runs, 'max_runs');
    FOR r IN SELECT x.hook, x.payin_id, x.state FROM payledger.hook_runs x
              WHERE x.status = 'pending' AND x.next_attempt_at <= now()
              ORDER BY x.next_attempt_at LIMIT max_runs FOR UPDATE SKIP LOCKED LOOP
        PERFORM payledger.run_hook(r.hook, r.payin_id, r.state);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- A pay-in reached PAID, FAILED or CANCELLED: the outbox event, and the
-- hooks, in the same transaction. Called by the state trigger for a move,
-- and by create_payin / retry_payin for a pay-in PAID at creation (not a
-- trigger on INSERT: a restore's COPY must not announce old pay-ins again).
CREATE FUNCTION payledger.payin_reached(payin uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    h record;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;
    -- a paid credit package grants its credits (src/credits/api.sql)
    IF p.state = 'PAID' AND p.type = 'CREDIT_PACKAGE' THEN
        PERFORM payledger.credits_payin_paid(p.id);
    END IF;
    -- a paid invoice of a NIP-90 job credits the job (src/nostr/jobs.sql)
    IF p.state = 'PAID' AND p.type = 'NOSTR_JOB' AND p.metadata ->> 'via' = 'invoice' THEN
        PERFORM payledger.nostr_job_invoice_paid(p.id);
    END IF;
    PERFORM payledger.emit_event('payin.' || lower(p.state::text), p.id, p.owner_id,
        jsonb_build_object('payin', p.id, 'type', p.type, 'state', p.state, 'failure_reason', p.failure_reason,
                           'cost', p.cost, 'asset', p.asset, 'at', p.state_changed_at));
    FOR h IN SELECT x.name FROM payledger.settle_hooks x WHERE x.active AND p.state = ANY (x.on_states) LOOP
        INSERT INTO payledger.hook_runs (hook, payin_id, state, status, next_attempt_at)
        VALUES (h.name, p.id, p.state, 'pending', now())
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            PERFORM payledger.run_hook(h.name, p.id, p.state);
        END IF;
    END LOOP;
END;
$$;

CREATE FUNCTION payledger.payins_final() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.payin_reached(NEW.id);
    RETURN NULL;
END;
$$;

-- (named to fire after payins_moved: the history row is written first)
CREATE TRIGGER payins_reached AFTER UPDATE OF state ON payledger.payins
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state AND NEW.state IN ('PAID', 'FAILED', 'CANCELLED'))
    EXECUTE FUNCTION payledger.payins_final();

---------------------------------------------------------------------------
-- Subscriptions
---------------------------------------------------------------------------

-- The profile and provider are snapshotted now: renewals are invoiced there
-- even after the type is routed elsewhere.
CREATE FUNCTION payledger.create_subscription(
    owner_id   text,
    payin_type text,
    asset      text,
    amount     bigint,
    period     interval,
    methods    jsonb DEFAULT '[{"external": "invoice"}]',
    payouts    jsonb DEFAULT NULL,
    split      text DEFAULT NULL,
    payees     jsonb DEFAULT NULL,
    profile    text DEFAULT NULL,
    starts_at  timestamptz DEFAULT NULL,
    metadata   jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prof uuid;
    prov uuid;
    rail text;
    id uuid := payledger.new_id();
BEGIN
    PERFORM payledger.require(owner_id, 'owner_id');
    PERFORM payledger.require(payin_type, 'payin_type');
    PERFORM payledger.require(asset, 'asset');
    PERFORM payledger.require(amount, 'amount');
    PERFORM payledger.require(period, 'period');
    IF amount <= 0 THEN
        RAISE EXCEPTION 'amount must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF period <= '0' THEN
        RAISE EXCEPTION 'period must be positive' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = payin_type) THEN
        RAISE EXCEPTION 'pay-in type % is not registered', payin_type USING ERRCODE = 'PL022';
    END IF;
    IF jsonb_typeof(methods) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'methods must be a JSON array' USING ERRCODE = '22023';
    END IF;
    prof := coalesce(CASE WHEN profile IS NOT NULL THEN payledger.profile_id(profile) END,
                     (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = create_subscription.payin_type),
                     (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default));
    SELECT x ->> 'external' INTO rail FROM jsonb_array_elements(methods) x WHERE x ? 'external' LIMIT 1;
    IF rail IS NOT NULL THEN
        prov := payledger.pick_provider(payin_type, asset, rail, prof);
    END IF;
    INSERT INTO payledger.subscriptions (id, owner_id, payin_type, asset, amount, period, methods, payouts, split,
                                         payees, profile_id, provider_id, next_renewal_at, metadata)
    VALUES (id, owner_id, payin_type, asset, amount, period, methods, payouts, split, payees, prof, prov,
            coalesce(starts_at, now()), coalesce(metadata, '{}'));
    RETURN id;
END;
$$;

CREATE FUNCTION payledger.cancel_subscription(subscription uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(subscription, 'subscription');
    UPDATE payledger.subscriptions s SET status = 'cancelled' WHERE s.id = subscription;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
    END IF;
END;
$$;

-- Bill the subscription's next period: one pay-in per period (its
-- idempotency key is the subscription and period number, so a repeat returns
-- the same pay-in), invoiced at the snapshot's provider. Rows without a
-- snapshot fall back to the profile's current provider, then to the type's
-- route and the default profile, like any pay-in.
CREATE FUNCTION payledger.renew_subscription(subscription uuid)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s payledger.subscriptions;
    c record;
    prov uuid;
BEGIN
    PERFORM payledger.require(subscription, 'subscription');
    SELECT * INTO s FROM payledger.subscriptions x WHERE x.id = subscription FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
    END IF;
    IF s.status <> 'active' THEN
        RAISE EXCEPTION 'subscription % is %', subscription, s.status USING ERRCODE = 'PL020';
    END IF;
    SELECT * INTO c FROM payledger.create_payin(s.owner_id, s.payin_type, s.asset, s.amount, s.methods, s.payouts,
        s.split, s.payees, 'subscription:' || s.id || ':' || s.renewals, NULL,
        s.metadata || jsonb_build_object('subscription', s.id, 'period', s.renewals));
    IF c.state = 'PENDING_INVOICE_CREATION' THEN
        prov := coalesce(s.provider_id, (SELECT p.id FROM payledger.payins x, LATERAL
                    (SELECT payledger.pick_provider(x.type, x.asset, x.external_method, s.profile_id) AS id) p
                  WHERE x.id = c.payin_id));
        PERFORM payledger.open_invoice(c.payin_id, prov, NULL, NULL, s.id);
    END IF;
    UPDATE payledger.subscriptions x
       SET renewals = x.renewals + 1, next_renewal_at = x.next_renewal_at + x.period, last_payin_id = c.payin_id,
           errors = 0, last_error = NULL, retry_at = NULL
     WHERE x.id = s.id;
    RETURN c.payin_id;
END;
$$;

CREATE FUNCTION payledger.renew_due_subscriptions(max_subscriptions integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s record;
    n integer := 0;
    msg text;
BEGIN
    PERFORM payledger.require_limit(max_subscriptions, 'max_subscriptions');
    FOR s IN SELECT x.id, x.owner_id, x.errors FROM payledger.subscriptions x
              WHERE x.status = 'active' AND x.next_renewal_at <= now() AND (x.retry_at IS NULL OR x.retry_at <= now())
              ORDER BY x.next_renewal_at LIMIT max_subscriptions FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            PERFORM payledger.renew_subscription(s.id);
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE payledger.subscriptions x
               SET errors = x.errors + 1, last_error = left(msg, 500), retry_at = now() + payledger.backoff(x.errors + 1)
             WHERE x.id = s.id;
            PERFORM payledger.emit_event('subscription.renewal_failed', s.id, s.owner_id,
                jsonb_build_object('subscription', s.id, 'error', left(msg, 500), 'errors', s.errors + 1));
            RAISE WARNING 'payledger: renewing subscription %: %', s.id, msg;
        END;
    END LOOP;
    RETURN n;
END;
$$;

---------------------------------------------------------------------------
-- Views for end users
---------------------------------------------------------------------------

CREATE VIEW payledger.my_invoices WITH (security_barrier) AS
SELECT i.id, i.payin_id, i.status, i.asset, i.amount, i.payment_request, i.payment_hash, i.expires_at,
       i.paid_at, i.amount_received, i.created_at
  FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
 WHERE p.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_events WITH (security_barrier) AS
SELECT e.id, e.topic, e.subject_id, e.payload, e.created_at
  FROM payledger.events e
 WHERE e.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_subscriptions WITH (security_barrier) AS
SELECT s.id, s.payin_type, s.asset, s.amount, s.period, s.status, s.renewals, s.next_renewal_at, s.last_payin_id,
       s.created_at
  FROM payledger.subscriptions s
 WHERE s.owner_id = payledger.current_owner_id();

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

CREATE FUNCTION payledger.provider_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a paid invoice's pay-in is PAID, or its money went to the late account
    SELECT 'invoice_paid_payin_paid', i.id::text, format('pay-in %s is %s', p.id, p.state)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.status = 'paid' AND NOT i.paid_late AND p.state <> 'PAID'
    UNION ALL
    -- a PAID pay-in with an external leg has its invoice paid (when payledger issued one)
    SELECT 'payin_paid_invoice_paid', p.id::text, format('invoice %s is %s', i.id, i.status)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE p.state = 'PAID' AND i.status <> 'paid'
    UNION ALL
    -- late money is in the ledger, once
    SELECT 'late_payment_journal', i.id::text, 'no journal ' || i.late_journal
      FROM payledger.invoices i
     WHERE i.paid_late AND NOT EXISTS (SELECT 1 FROM payledger.journals j WHERE j.id = i.late_journal)
    UNION ALL
    -- an invoice's amount is what its pay-in owes on the rail
    SELECT 'invoice_amount', i.id::text, format('%s, the pay-in owes %s', i.amount, p.external_amount)
      FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id
     WHERE i.amount <> p.external_amount
    UNION ALL
    -- a hook ran at most once per pay-in and state, and only for a state the pay-in reached
    SELECT 'hook_run_state', r.hook || ' ' || r.payin_id, 'the pay-in never reached ' || r.state
      FROM payledger.hook_runs r
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = r.payin_id AND h.to_state = r.state);
$$;

-- payledger credits: prepaid credits in grants (lots), burnt in one order,
-- metered against plans, blocked per metric. The model is Capgo's usage
-- credits (issue #941) with the semantics of OpenMeter, Lago, Stripe and Orb
-- (../shared/reference/credits-semantics.md); see docs/credits.md.
--
-- Every movement of credits is a ledger journal in the credits asset: each
-- grant has its own account (kind credit_grant) whose balance is what is
-- left of it; issuing, consuming, expiring and voiding move money between
-- that account and the system accounts credits_issued / credits_consumed /
-- credits_expired / credits_voided. Grant rows are never edited.

INSERT INTO payledger.account_kinds (kind, description, builtin) VALUES
    ('credit_sink', 'where consumed, expired or voided credits go', true);

-- At most one row (none: the defaults); set with credits_configure().
CREATE TABLE payledger.credit_settings (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    asset text NOT NULL DEFAULT 'credit',
    -- how long after a grant's expiry usage from before it may still burn it
    -- (metering runs late; the sweep waits this long)
    expiry_grace interval NOT NULL DEFAULT '1 day' CHECK (expiry_grace >= '0')
);

CREATE TABLE payledger.credit_metrics (
    metric     text PRIMARY KEY CHECK (metric ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- counter: usage adds up over the cycle (MAU, bandwidth, build time);
    -- gauge: the cycle's usage is its highest reading (storage)
    kind       text NOT NULL CHECK (kind IN ('counter', 'gauge')),
    unit       text NOT NULL DEFAULT 'unit',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.credit_grants (
    id              uuid PRIMARY KEY,
    org_id          text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),   -- in the credits asset's minor unit
    metric          text,                                 -- NULL: any metric
    priority        integer NOT NULL DEFAULT 10 CHECK (priority BETWEEN 0 AND 1000),  -- lower burns first
    category        text NOT NULL CHECK (category IN ('paid', 'promotional')),
    source          text NOT NULL CHECK (source IN ('purchase', 'recurring_purchase', 'gift_code', 'promotion',
                                                    'manual', 'rollover')),
    effective_at    timestamptz NOT NULL,
    expires_at      timestamptz,                          -- NULL: never
    cost_basis      numeric CHECK (cost_basis >= 0),      -- what one credit cost, in cost_asset
    cost_asset      text,
    payin_id        uuid,                                 -- the pay-in that bought it
    account_id      uuid NOT NULL UNIQUE,                 -- what is left of it
    grant_journal   uuid NOT NULL,
    idempotency_key text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at IS NULL OR expires_at > effective_at)
);
CREATE UNIQUE INDEX credit_grants_key ON payledger.credit_grants (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX credit_grants_payin ON payledger.credit_grants (payin_id) WHERE payin_id IS NOT NULL;
CREATE INDEX credit_grants_org ON payledger.credit_grants (org_id, effective_at);

-- The burn queue: the grants in effect or to come, in burn order. A grant
-- leaves it when it has expired (and been swept) or is voided; its history
-- stays in the ledger. Balances and burns read these rows, never the past.
CREATE TABLE payledger.credit_live_grants (
    grant_id     uuid PRIMARY KEY,
    org_id       text NOT NULL,
    metric       text,
    priority     integer NOT NULL,
    expires_at   timestamptz,
    promo_first  smallint NOT NULL,   -- 0 promotional, 1 paid
    effective_at timestamptz NOT NULL,
    account_id   uuid NOT NULL
);
CREATE INDEX credit_live_burn ON payledger.credit_live_grants
    (org_id, priority, expires_at NULLS LAST, promo_first, effective_at, grant_id);
CREATE INDEX credit_live_expiry ON payledger.credit_live_grants (expires_at) WHERE expires_at IS NOT NULL;

-- A consumption: credits burnt for a metric at a time, by key; its parts say
-- which grants paid for it. An undo restores the same grants.
CREATE TABLE payledger.credit_consumptions (
    id              uuid PRIMARY KEY,
    org_id          text NOT NULL,
    metric          text NOT NULL,
    amount          bigint NOT NULL CHECK (amount >= 0),  -- burnt (may be less than asked)
    requested       bigint NOT NULL CHECK (requested > 0),
    usage_at        timestamptz NOT NULL,
    idempotency_key text NOT NULL,
    journal_id      uuid,
    undone_at       timestamptz,
    undo_journal    uuid,
    source          text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'metering')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, idempotency_key),
    CHECK ((amount > 0) = (journal_id IS NOT NULL)),
    CHECK ((undone_at IS NULL) = (undo_journal IS NULL) OR amount = 0)
);
CREATE INDEX credit_consumptions_org ON payledger.credit_consumptions (org_id, usage_at);

CREATE TABLE payledger.credit_consumption_parts (
    consumption_id uuid NOT NULL,
    grant_id       uuid NOT NULL,
    amount         bigint NOT NULL CHECK (amount > 0),
    category       text NOT NULL,
    PRIMARY KEY (consumption_id, grant_id)
);
CREATE INDEX credit_consumption_parts_grant ON payledger.credit_consumption_parts (grant_id);

-- Expiries and voids, one row per grant event (the journal says how much).
CREATE TABLE payledger.credit_grant_events (
    grant_id   uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('expired', 'voided', 'restored_expired')),
    amount     bigint NOT NULL CHECK (amount > 0),
    journal_id uuid NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    reason     text,
    PRIMARY KEY (grant_id, journal_id)
);

-- Overage prices, in credits per unit, by step of the cycle's overage
-- (graduated: each step prices the units that fall in it).
CREATE TABLE payledger.credit_price_tiers (
    metric          text NOT NULL REFERENCES payledger.credit_metrics,
    from_units      numeric NOT NULL CHECK (from_units >= 0),
    to_units        numeric CHECK (to_units > from_units),      -- NULL: no upper bound
    credits_per_unit numeric NOT NULL CHECK (credits_per_unit >= 0),
    PRIMARY KEY (metric, from_units)
);

CREATE TABLE payledger.credit_packages (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    metric       text REFERENCES payledger.credit_metrics,  -- NULL: any metric
    credits      bigint NOT NULL CHECK (credits > 0),
    price_asset  text NOT NULL,
    price        bigint NOT NULL CHECK (price > 0),
    -- NULL: one-time; else each period of a subscription grants again
    period       interval CHECK (period > '0'),
    validity     interval NOT NULL DEFAULT '1 year' CHECK (validity > '0'),
    priority     integer NOT NULL DEFAULT 10,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.gift_codes (
    code            text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9_-]{4,64}$'),
    credits         bigint NOT NULL CHECK (credits > 0),
    metric          text REFERENCES payledger.credit_metrics,
    valid_until     timestamptz,                 -- the code's own expiry
    validity        interval NOT NULL DEFAULT '1 year' CHECK (validity > '0'),  -- of each grant
    max_redemptions integer CHECK (max_redemptions > 0),  -- NULL: no total limit
    per_org_limit   integer NOT NULL DEFAULT 1 CHECK (per_org_limit > 0),
    redemptions     integer NOT NULL DEFAULT 0 CHECK (redemptions >= 0),
    priority        integer NOT NULL DEFAULT 5,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (max_redemptions IS NULL OR redemptions <= max_redemptions)
);

CREATE TABLE payledger.gift_redemptions (
    code     text NOT NULL,
    org_id   text NOT NULL,
    n        integer NOT NULL CHECK (n > 0),
    grant_id uuid NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, org_id, n)
);

-- Plans: a monthly limit per metric; usage beyond it is paid with credits.
CREATE TABLE payledger.credit_plans (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payledger.credit_plan_limits (
    plan   text NOT NULL REFERENCES payledger.credit_plans,
    metric text NOT NULL REFERENCES payledger.credit_metrics,
    monthly_limit numeric NOT NULL CHECK (monthly_limit >= 0),
    PRIMARY KEY (plan, metric)
);
CREATE TABLE payledger.credit_orgs (
    org_id      text PRIMARY KEY,
    plan        text REFERENCES payledger.credit_plans,  -- NULL: no plan, every unit is overage
    cycle_anchor timestamptz NOT NULL DEFAULT date_trunc('month', now()),  -- cycles are months from here
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Usage readings: counters add up over the cycle; gauges keep the highest.
CREATE TABLE payledger.credit_usage (
    org_id      text NOT NULL,
    metric      text NOT NULL,
    cycle_start timestamptz NOT NULL,
    usage       numeric NOT NULL DEFAULT 0 CHECK (usage >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, cycle_start)
);

-- The metering watermark and blocking state per org, metric and cycle: the
-- credits charged so far for the cycle's overage, and what could not be
-- paid. A run charges cost(overage) - charged, under this row's lock.
CREATE TABLE payledger.credit_meters (
    org_id      text NOT NULL,
    metric      text NOT NULL,
    cycle_start timestamptz NOT NULL,
    overage     numeric NOT NULL DEFAULT 0,
    cost        bigint NOT NULL DEFAULT 0 CHECK (cost >= 0),     -- credits the overage costs
    charged     bigint NOT NULL DEFAULT 0 CHECK (charged >= 0),  -- credits burnt for it
    forgiven    bigint NOT NULL DEFAULT 0 CHECK (forgiven >= 0), -- charges undone (refunded)
    blocked     boolean NOT NULL DEFAULT false,                  -- owed and out of credits
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, cycle_start),
    CHECK (charged + forgiven <= cost),
    CHECK (blocked = (charged + forgiven < cost))
);
CREATE INDEX credit_meters_blocked ON payledger.credit_meters (org_id) WHERE blocked;

-- A meter as a metering run sees it (meter_batch's working set).
CREATE TYPE payledger.credit_meter_due AS (
    org_id      text,
    metric      text,
    cycle_start timestamptz,
    usage_at    timestamptz,  -- the latest reading's time (at most now): the burn is judged then
    overage     numeric,
    owed        bigint,       -- what the overage costs now, never less than settled
    settled     bigint,       -- charged + forgiven so far
    charged     bigint,
    is_new      boolean,      -- no meter row yet
    changed     boolean       -- overage or cost differ from the row's
);

-- Threshold rules: an event is written when an organisation's credits cross
-- one (once per crossing): used_pct (share of active granted credit used, in
-- percent), depleted (nothing left; its falling edge is "recovered"),
-- expiring (credit left expires within `days`).
CREATE TABLE payledger.credit_thresholds (
    name   text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind   text NOT NULL CHECK (kind IN ('used_pct', 'depleted', 'expiring')),
    value  numeric NOT NULL DEFAULT 0 CHECK (value >= 0),  -- percent, or days
    active boolean NOT NULL DEFAULT true
);
-- Whether each rule holds for each organisation, as last seen.
CREATE TABLE payledger.credit_threshold_state (
    org_id     text NOT NULL,
    threshold  text NOT NULL,
    crossed    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, threshold)
);

ALTER TABLE payledger.credit_thresholds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_threshold_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_live_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_consumptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_consumption_parts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_grant_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_price_tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_packages ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.gift_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.gift_redemptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_plan_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_meters ENABLE ROW LEVEL SECURITY;

CREATE TRIGGER credit_grants_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_grants
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER credit_consumption_parts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_consumption_parts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER credit_grant_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_grant_events
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();

SELECT pg_catalog.pg_extension_config_dump('payledger.credit_settings', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_grants', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_live_grants', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_consumptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_consumption_parts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_grant_events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_price_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_packages', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.gift_codes', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.gift_redemptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_plans', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_plan_limits', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_orgs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_usage', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_meters', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_thresholds', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_threshold_state', '');

-- payledger credits: the SQL API. Amounts in and out are credits as numeric
-- (exact, up to the credits asset's scale); stored as its minor unit.
-- Everything done to one organisation's credits runs under a transaction
-- advisory lock on the organisation, taken first: concurrent consumers queue
-- and never overspend, and the lock order stays org, then accounts.

---------------------------------------------------------------------------
-- Settings and system accounts
---------------------------------------------------------------------------

CREATE FUNCTION payledger.credit_asset()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.asset FROM payledger.credit_settings s), 'credit');
$$;

-- The credits asset (created on first use), its scale and the expiry grace.
CREATE FUNCTION payledger.credits_configure(
    asset        text DEFAULT 'credit',
    scale        integer DEFAULT 6,
    expiry_grace interval DEFAULT '1 day')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(asset, 'asset');
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = credits_configure.asset) THEN
        PERFORM payledger.create_asset(asset, coalesce(scale, 6), 'prepaid credits');
    END IF;
    IF expiry_grace < '0' THEN
        RAISE EXCEPTION 'expiry_grace must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_settings AS s (id, asset, expiry_grace)
    VALUES (true, asset, coalesce(expiry_grace, '1 day'))
    ON CONFLICT ON CONSTRAINT credit_settings_pkey DO UPDATE
       SET asset = excluded.asset, expiry_grace = excluded.expiry_grace;
    -- consumption credits one account for every organisation: shard it
    PERFORM payledger.set_account_shards(payledger.credit_system_account('credits_consumed'), 16);
    RETURN asset;
END;
$$;

-- A system account of the credits asset: credits_issued (the source of
-- grants, may go negative), credits_consumed, credits_expired, credits_voided.
CREATE FUNCTION payledger.credit_system_account(name text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger.open_account('payledger', payledger.credit_asset(),
                                  CASE WHEN name = 'credits_issued' THEN 'system' ELSE 'credit_sink' END,
                                  name, name = 'credits_issued');
$$;

-- Credits (numeric) to the asset's minor unit; too many decimals is PL001.
CREATE FUNCTION payledger.credits_minor(credits numeric, what text DEFAULT 'credits')
RETURNS bigint LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    scale integer;
    v numeric;
BEGIN
    PERFORM payledger.require(credits, what);
    SELECT a.scale INTO scale FROM payledger.assets a WHERE a.code = payledger.credit_asset();
    IF scale IS NULL THEN
        RAISE EXCEPTION 'the credits asset % does not exist: call credits_configure()', payledger.credit_asset()
            USING ERRCODE = 'PL003';
    END IF;
    v := credits * (10::numeric ^ scale);
    IF v <> trunc(v) OR v <= 0 OR v > 9223372036854775807 THEN
        RAISE EXCEPTION '% must be positive with at most % decimals, got %', what, scale, credits USING ERRCODE = 'PL001';
    END IF;
    RETURN v::bigint;
END;
$$;

CREATE FUNCTION payledger.credits_of(minor bigint)
RETURNS numeric LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(minor / (10::numeric ^ (SELECT a.scale FROM payledger.assets a WHERE a.code = payledger.credit_asset())));
$$;

CREATE FUNCTION payledger.credit_lock(org text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

-- For sweeps over many organisations (expiry, metering): they hold the
-- shared sink accounts' rows while moving on to the next organisation, so
-- waiting for an organisation there could deadlock with its own consumer.
-- They skip a busy organisation instead; the next sweep takes it.
CREATE FUNCTION payledger.credit_try_lock(org text)
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

---------------------------------------------------------------------------
-- Registries (admin)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.register_credit_metric(metric text, kind text DEFAULT 'counter', unit text DEFAULT 'unit')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(metric, 'metric');
    IF metric !~ '^[a-z][a-z0-9_]{0,62}$' OR kind IS NULL OR kind NOT IN ('counter', 'gauge') THEN
        RAISE EXCEPTION 'a metric is a lower-case name, of kind counter or gauge' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_metrics AS m (metric, kind, unit) VALUES (metric, kind, coalesce(unit, 'unit'))
    ON CONFLICT ON CONSTRAINT credit_metrics_pkey DO NOTHING;
    IF NOT FOUND AND (SELECT m.kind FROM payledger.credit_metrics m WHERE m.metric = register_credit_metric.metric) <> kind THEN
        RAISE EXCEPTION 'metric % exists with another kind', metric USING ERRCODE = 'PL014';
    END IF;
    RETURN metric;
END;
$$;

CREATE FUNCTION payledger.credit_require_metric(metric text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF metric IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_metrics m WHERE m.metric = credit_require_metric.metric) THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
END;
$$;

-- tiers: [{"from": 0, "to": 1000000, "price": 0.003}, {"from": 1000000, "price": 0.0022}]
-- in credits per unit of overage, contiguous from 0, the last one open.
CREATE FUNCTION payledger.set_credit_price_tiers(metric text, tiers jsonb)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    t record;
    expect numeric := 0;
    n integer := 0;
    last_open boolean := false;
BEGIN
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(tiers, 'tiers');
    PERFORM payledger.credit_require_metric(metric);
    IF jsonb_typeof(tiers) <> 'array' OR jsonb_array_length(tiers) = 0 THEN
        RAISE EXCEPTION 'tiers must be a non-empty JSON array' USING ERRCODE = '22023';
    END IF;
    DELETE FROM payledger.credit_price_tiers p WHERE p.metric = set_credit_price_tiers.metric;
    FOR t IN SELECT (x ->> 'from')::numeric AS f, (x ->> 'to')::numeric AS u, (x ->> 'price')::numeric AS price
               FROM jsonb_array_elements(tiers) x LOOP
        IF last_open OR t.f IS DISTINCT FROM expect OR t.price IS NULL OR t.price < 0 OR (t.u IS NOT NULL AND t.u <= t.f) THEN
            RAISE EXCEPTION 'tiers must run contiguously from 0 (each "from" the previous "to"), with a price >= 0'
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO payledger.credit_price_tiers VALUES (metric, t.f, t.u, t.price);
        expect := t.u;
        last_open := t.u IS NULL;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- What an overage costs, in credits (graduated tiers), rounded up to the
-- asset's minor unit once, on the total.
CREATE FUNCTION payledger.credit_cost(metric text, overage numeric)
RETURNS numeric LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(ceil(coalesce(sum((least(overage, coalesce(p.to_units, overage)) - p.from_units) * p.credits_per_unit), 0)
                           * (10::numeric ^ a.scale)) / (10::numeric ^ a.scale))
      FROM payledger.assets a
      LEFT JOIN payledger.credit_price_tiers p ON p.metric = credit_cost.metric AND p.from_units < greatest(overage, 0)
     WHERE a.code = payledger.credit_asset()
     GROUP BY a.scale;
$$;

CREATE FUNCTION payledger.define_credit_plan(name text, limits jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' OR jsonb_typeof(limits) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a plan has a name and limits as {"metric": monthly limit}' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(limits) LOOP
        PERFORM payledger.credit_require_metric(k);
        IF jsonb_typeof(limits -> k) <> 'number' OR (limits ->> k)::numeric < 0 THEN
            RAISE EXCEPTION 'the limit of % must be a number >= 0', k USING ERRCODE = '22023';
        END IF;
    END LOOP;
    INSERT INTO payledger.credit_plans (name) VALUES (name) ON CONFLICT DO NOTHING;
    DELETE FROM payledger.credit_plan_limits l WHERE l.plan = define_credit_plan.name;
    INSERT INTO payledger.credit_plan_limits (plan, metric, monthly_limit)
    SELECT name, e.key, e.value::text::numeric FROM jsonb_each(limits) e;
    RETURN name;
END;
$$;

-- An organisation's plan and billing-cycle anchor (cycles are months from it).
CREATE FUNCTION payledger.set_credit_org(org text, plan text DEFAULT NULL, cycle_anchor timestamptz DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    IF plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_plans p WHERE p.name = set_credit_org.plan) THEN
        RAISE EXCEPTION 'plan % does not exist', plan USING ERRCODE = 'PL031';
    END IF;
    INSERT INTO payledger.credit_orgs AS o (org_id, plan, cycle_anchor)
    VALUES (org, plan, coalesce(cycle_anchor, date_trunc('month', now())))
    ON CONFLICT ON CONSTRAINT credit_orgs_pkey DO UPDATE
       SET plan = excluded.plan, cycle_anchor = coalesce(set_credit_org.cycle_anchor, o.cycle_anchor);
END;
$$;

-- The start of the monthly cycle containing t: anchor + m months, for the m
-- that lands in t's own month, or the one before it (months clamp to their
-- last day: from Jan 31 the cycles start Feb 28, Mar 31, ...).
CREATE FUNCTION payledger.credit_cycle_start(anchor timestamptz, t timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m integer := (extract(year FROM t) - extract(year FROM anchor)) * 12 + extract(month FROM t) - extract(month FROM anchor);
BEGIN
    RETURN anchor + make_interval(months => m - (anchor + make_interval(months => m) > t)::integer);
END;
$$;

---------------------------------------------------------------------------
-- Grants
---------------------------------------------------------------------------

-- Grant credits to an organisation: a lot with its own account, funded by
-- one journal. Idempotent per (org, idempotency_key): a repeat returns the
-- first grant; with other terms it is PL008. Topping up settles the
-- organisation's unpaid overage at once (and lifts its blocks).
CREATE FUNCTION payledger.grant_credits(
    org             text,
    credits         numeric,
    source          text DEFAULT 'manual',
    metric          text DEFAULT NULL,
    priority        integer DEFAULT 10,
    expires_at      timestamptz DEFAULT NULL,
    effective_at    timestamptz DEFAULT NULL,
    never_expires   boolean DEFAULT false,
    cost_basis      numeric DEFAULT NULL,
    cost_asset      text DEFAULT NULL,
    payin           uuid DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    g payledger.credit_grants;
    amount bigint;
    id uuid := payledger.new_id();
    acc uuid;
    eff timestamptz := coalesce(effective_at, now());
    exp timestamptz;
    cat text;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(source, 'source');
    IF source NOT IN ('purchase', 'recurring_purchase', 'gift_code', 'promotion', 'manual', 'rollover') THEN
        RAISE EXCEPTION 'unknown grant source %', source USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN 0 AND 1000 THEN
        RAISE EXCEPTION 'priority must be between 0 and 1000' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    amount := payledger.credits_minor(credits);
    PERFORM payledger.credit_require_metric(metric);
    exp := CASE WHEN never_expires THEN NULL ELSE coalesce(expires_at, eff + interval '1 year') END;
    IF exp IS NOT NULL AND exp <= eff THEN
        RAISE EXCEPTION 'a grant must expire after it takes effect' USING ERRCODE = '22023';
    END IF;
    cat := CASE WHEN source IN ('gift_code', 'promotion') THEN 'promotional' ELSE 'paid' END;
    PERFORM payledger.credit_lock(org);
    IF idempotency_key IS NOT NULL OR payin IS NOT NULL THEN
        SELECT * INTO g FROM payledger.credit_grants x
         WHERE (x.org_id = org AND x.idempotency_key = grant_credits.idempotency_key)
            OR x.payin_id = grant_credits.payin;
        IF FOUND THEN
            IF (g.org_id, g.amount, g.metric, g.source, g.priority) IS DISTINCT FROM (org, amount, metric, source, priority) THEN
                RAISE EXCEPTION 'idempotency key % (or pay-in %) was used for another grant', idempotency_key, payin
                    USING ERRCODE = 'PL008', DETAIL = 'grant ' || g.id;
            END IF;
            RETURN g.id;
        END IF;
    END IF;
    acc := payledger.open_account(org, payledger.credit_asset(), 'credit_grant', 'grant:' || id);
    INSERT INTO payledger.credit_grants (id, org_id, amount, metric, priority, category, source, effective_at, expires_at,
                                         cost_basis, cost_asset, payin_id, account_id, grant_journal, idempotency_key, metadata)
    VALUES (id, org, amount, metric, priority, cat, source, eff, exp, cost_basis, cost_asset, payin, acc,
            payledger.transfer(payledger.credit_system_account('credits_issued'), acc, amount, NULL,
                               jsonb_build_object('grant', id), eff, 'credit_grant'),
            idempotency_key, coalesce(metadata, '{}'));
    INSERT INTO payledger.credit_live_grants VALUES
        (id, org, metric, priority, exp, CASE cat WHEN 'promotional' THEN 0 ELSE 1 END, eff, acc);
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    -- the new credit pays what metering could not (and lifts the blocks)
    IF EXISTS (SELECT 1 FROM payledger.credit_meters m WHERE m.org_id = org AND m.blocked) THEN
        PERFORM payledger.meter_batch(ARRAY[org], true);
    END IF;
    PERFORM payledger.credit_check_thresholds(org);
    RETURN id;
END;
$$;

-- Forfeit what is left of a grant (idempotent: a voided grant has nothing left).
CREATE FUNCTION payledger.void_grant(grant_id uuid, reason text DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    g payledger.credit_grants;
    left_ bigint;
    j uuid;
BEGIN
    PERFORM payledger.require(grant_id, 'grant_id');
    SELECT * INTO g FROM payledger.credit_grants x WHERE x.id = grant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'grant % does not exist', grant_id USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger.credit_lock(g.org_id);
    DELETE FROM payledger.credit_live_grants l WHERE l.grant_id = g.id;
    left_ := payledger.balance(g.account_id);
    IF left_ > 0 THEN
        j := payledger.transfer(g.account_id, payledger.credit_system_account('credits_voided'), left_, NULL,
                                jsonb_build_object('grant', g.id, 'reason', reason), NULL, 'credit_void');
        INSERT INTO payledger.credit_grant_events VALUES (g.id, 'voided', left_, j, now(), reason);
        PERFORM payledger.credit_check_thresholds(g.org_id);
    END IF;
    RETURN payledger.credits_of(coalesce(left_, 0));
END;
$$;

-- Expire what is left of grants past their expiry (and its grace, so that
-- late metering of usage from before the expiry can still burn them): one
-- engine batch, so every account is locked in one pass (a loop of transfers
-- would lock them out of order and could deadlock with a consumer). An
-- organisation busy at that moment is skipped and left to the next sweep.
-- Returns the grants expired.
CREATE FUNCTION payledger.expire_credits(max_grants integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    grace interval := coalesce((SELECT s.expiry_grace FROM payledger.credit_settings s), '1 day');
    sink uuid;
    orgs text[];
    locked text[];
    g_id uuid[];
    g_account uuid[];
    g_left bigint[];
    r record;
BEGIN
    PERFORM payledger.require_limit(max_grants, 'max_grants');
    max_grants := least(max_grants, payledger.setting_int('max_batch_size', 10000));
    SELECT coalesce(array_agg(DISTINCT l.org_id ORDER BY l.org_id), '{}') INTO orgs
      FROM (SELECT l.org_id FROM payledger.credit_live_grants l WHERE l.expires_at < now() - grace
             ORDER BY l.org_id, l.expires_at LIMIT max_grants) l;
    -- (try-locks, in org_id order: a sweep never waits for an organisation)
    SELECT coalesce(array_agg(x.org_id ORDER BY x.o), '{}') INTO locked
      FROM unnest(orgs) WITH ORDINALITY AS x(org_id, o) WHERE payledger.credit_try_lock(x.org_id);
    IF cardinality(locked) = 0 THEN
        RETURN 0;
    END IF;
    -- under the organisations' locks a grant's balance does not change
    WITH gone AS (
        DELETE FROM payledger.credit_live_grants l
         WHERE l.grant_id IN (SELECT x.grant_id FROM payledger.credit_live_grants x
                               WHERE x.org_id = ANY (locked) AND x.expires_at < now() - grace
                               ORDER BY x.org_id, x.expires_at LIMIT max_grants)
        RETURNING l.grant_id, l.account_id)
    SELECT coalesce(array_agg(g.grant_id ORDER BY g.grant_id), '{}'), coalesce(array_agg(g.account_id ORDER BY g.grant_id), '{}'),
           coalesce(array_agg(a.balance ORDER BY g.grant_id), '{}')
      INTO g_id, g_account, g_left
      FROM gone g JOIN payledger.accounts a ON a.id = g.account_id;
    IF EXISTS (SELECT 1 FROM unnest(g_left) b WHERE b > 0) THEN
        sink := payledger.credit_system_account('credits_expired');
        FOR r IN
            WITH x AS (
                SELECT x.grant_id, x.account_id, x.amount, row_number() OVER (ORDER BY x.grant_id) AS i
                  FROM unnest(g_id, g_account, g_left) AS x(grant_id, account_id, amount) WHERE x.amount > 0),
            b AS (  -- (a CTE: the batch runs once)
                SELECT * FROM payledger.transfer_batch((
                    SELECT jsonb_agg(jsonb_build_object(
                               'postings', jsonb_build_array(jsonb_build_object('account', x.account_id, 'amount', -x.amount),
                                                             jsonb_build_object('account', sink, 'amount', x.amount)),
                               'idempotency_key', 'credit-expire:' || x.grant_id,
                               'metadata', jsonb_build_object('grant', x.grant_id), 'kind', 'credit_expire') ORDER BY x.i)
                      FROM x)))
            SELECT b.status, b.journal_id, b.sqlstate, b.message, b.detail, x.grant_id, x.amount
              FROM x JOIN b ON b.item = x.i LOOP
            IF r.status = 'error' THEN
                PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
            END IF;
            INSERT INTO payledger.credit_grant_events VALUES (r.grant_id, 'expired', r.amount, r.journal_id, now(), NULL);
        END LOOP;
    END IF;
    PERFORM payledger.credit_thresholds(locked);
    RETURN cardinality(g_id);
END;
$$;

---------------------------------------------------------------------------
-- Consumption
---------------------------------------------------------------------------

-- Burn credits for a metric, judged at the usage's own time, in the one burn
-- order: priority, then soonest expiry (never last), then promotional before
-- paid, then oldest, then id. Only grants scoped to the metric (or to any)
-- that had not expired at usage_at count, and that are in effect by now (a
-- later top-up pays earlier usage: overage carries forward). Idempotent per (org, key): a repeat returns the
-- first consumption; with other terms it is PL008. Not enough credit: PL006,
-- unless partial, which burns what there is and reports the shortfall.
CREATE FUNCTION payledger.consume_credits(
    org             text,
    metric          text,
    credits         numeric,
    idempotency_key text,
    usage_at        timestamptz DEFAULT NULL,
    partial         boolean DEFAULT false)
RETURNS TABLE (consumption_id uuid, consumed numeric, shortfall numeric, parts jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    want bigint;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(idempotency_key, 'idempotency_key');
    PERFORM payledger.credit_require_metric(metric);
    want := payledger.credits_minor(credits);
    c := payledger.credit_burn(org, metric, want, idempotency_key, usage_at, coalesce(partial, false));
    RETURN QUERY SELECT c.id, payledger.credits_of(c.amount), payledger.credits_of(c.requested - c.amount),
        (SELECT coalesce(jsonb_agg(jsonb_build_object('grant', p.grant_id, 'credits', payledger.credits_of(p.amount),
                                                      'category', p.category) ORDER BY p.amount DESC), '[]')
           FROM payledger.credit_consumption_parts p WHERE p.consumption_id = c.id);
END;
$$;

-- The burn itself, in minor units (metering burns set-based: meter_batch).
CREATE FUNCTION payledger.credit_burn(org text, metric text, want bigint, key text, usage_at timestamptz,
                                      partial boolean)
RETURNS payledger.credit_consumptions
LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    g record;
    left_ bigint := want;
    take bigint;
    postings jsonb := '[]';
    id uuid := payledger.new_id();
    j uuid;
    part_grants uuid[] := '{}';
    part_amounts bigint[] := '{}';
    part_categories text[] := '{}';
BEGIN
    PERFORM payledger.credit_lock(org);
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.org_id = org AND x.idempotency_key = key;
    -- (usage_at NULL: now; a repeat without it matches whatever time the first had)
    IF FOUND THEN
        IF (c.metric, c.requested) IS DISTINCT FROM (metric, want) OR c.usage_at <> coalesce(usage_at, c.usage_at) THEN
            RAISE EXCEPTION 'idempotency key % was used for another consumption', key
                USING ERRCODE = 'PL008', DETAIL = 'consumption ' || c.id;
        END IF;
        RETURN c;
    END IF;
    usage_at := coalesce(usage_at, now());
    FOR g IN SELECT l.grant_id, l.account_id, l.promo_first, a.balance
               FROM payledger.credit_live_grants l JOIN payledger.accounts a ON a.id = l.account_id
              WHERE l.org_id = org AND (l.metric IS NULL OR l.metric = credit_burn.metric)
                AND l.effective_at <= greatest(usage_at, now()) AND (l.expires_at IS NULL OR l.expires_at > usage_at)
              ORDER BY l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id LOOP
        EXIT WHEN left_ = 0;
        CONTINUE WHEN g.balance <= 0;
        take := least(g.balance, left_);
        left_ := left_ - take;
        postings := postings || jsonb_build_object('account', g.account_id, 'amount', -take);
        part_grants := part_grants || g.grant_id;
        part_amounts := part_amounts || take;
        part_categories := part_categories || CASE g.promo_first WHEN 0 THEN 'promotional' ELSE 'paid' END;
    END LOOP;
    IF left_ > 0 AND NOT partial THEN
        RAISE EXCEPTION 'organisation % has % credits for %, needs %', org, payledger.credits_of(want - left_), metric,
            payledger.credits_of(want) USING ERRCODE = 'PL006';
    END IF;
    IF want > left_ THEN
        j := payledger.post_journal(postings || jsonb_build_object('account', payledger.credit_system_account('credits_consumed'),
                                                                   'amount', want - left_),
                                    NULL, jsonb_build_object('consumption', id, 'org', org, 'metric', metric),
                                    NULL, 'credit_consume');
    END IF;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id)
    VALUES (id, org, metric, want - left_, want, usage_at, key, j)
    RETURNING * INTO c;
    INSERT INTO payledger.credit_consumption_parts (consumption_id, grant_id, amount, category)
    SELECT id, x.g, x.a, x.c FROM unnest(part_grants, part_amounts, part_categories) AS x(g, a, c);
    PERFORM payledger.credit_check_thresholds(org);
    RETURN c;
END;
$$;

-- Give a consumption back to the grants that paid for it; what returns to a
-- grant that has expired or was voided since expires again at once.
-- Idempotent.
CREATE FUNCTION payledger.undo_consumption(consumption uuid, reason text DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c payledger.credit_consumptions;
    p record;
    postings jsonb := '[]';
    j uuid;
    j2 uuid;
BEGIN
    PERFORM payledger.require(consumption, 'consumption');
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumption % does not exist', consumption USING ERRCODE = 'PL031';
    END IF;
    PERFORM payledger.credit_lock(c.org_id);
    SELECT * INTO c FROM payledger.credit_consumptions x WHERE x.id = consumption FOR UPDATE;
    IF c.undone_at IS NOT NULL OR c.amount = 0 THEN
        RETURN 0;
    END IF;
    FOR p IN SELECT cp.grant_id, cp.amount, g.account_id FROM payledger.credit_consumption_parts cp
               JOIN payledger.credit_grants g ON g.id = cp.grant_id WHERE cp.consumption_id = c.id LOOP
        postings := postings || jsonb_build_object('account', p.account_id, 'amount', p.amount);
    END LOOP;
    j := payledger.post_journal(postings || jsonb_build_object('account', payledger.credit_system_account('credits_consumed'),
                                                               'amount', -c.amount),
                                NULL, jsonb_build_object('undo', c.id, 'reason', reason), NULL, 'credit_undo');
    UPDATE payledger.credit_consumptions x SET undone_at = now(), undo_journal = j WHERE x.id = c.id;
    -- a metering charge undone is forgiven: its meter is settled without it
    -- (and not charged again)
    IF c.source = 'metering' THEN
        UPDATE payledger.credit_meters m
           SET charged = m.charged - c.amount, forgiven = m.forgiven + c.amount, updated_at = now()
         WHERE m.org_id = c.org_id AND m.metric = c.metric
           AND m.cycle_start = to_timestamp(split_part(c.idempotency_key, ':', 3)::bigint);
    END IF;
    FOR p IN SELECT cp.grant_id, cp.amount, g.account_id, g.org_id, g.metric, g.priority, g.expires_at, g.category,
                    g.effective_at,
                    (g.expires_at IS NOT NULL AND g.expires_at <= now())
                    OR EXISTS (SELECT 1 FROM payledger.credit_grant_events e WHERE e.grant_id = g.id AND e.kind = 'voided') AS dead
               FROM payledger.credit_consumption_parts cp JOIN payledger.credit_grants g ON g.id = cp.grant_id
              WHERE cp.consumption_id = c.id LOOP
        IF p.dead THEN
            j2 := payledger.transfer(p.account_id, payledger.credit_system_account('credits_expired'), p.amount, NULL,
                                     jsonb_build_object('grant', p.grant_id, 'undo', c.id), NULL, 'credit_expire');
            INSERT INTO payledger.credit_grant_events VALUES (p.grant_id, 'restored_expired', p.amount, j2, now(), reason);
        ELSE
            INSERT INTO payledger.credit_live_grants VALUES
                (p.grant_id, p.org_id, p.metric, p.priority, p.expires_at,
                 CASE p.category WHEN 'promotional' THEN 0 ELSE 1 END, p.effective_at, p.account_id)
            ON CONFLICT DO NOTHING;
        END IF;
    END LOOP;
    PERFORM payledger.credit_check_thresholds(c.org_id);
    RETURN payledger.credits_of(c.amount);
END;
$$;

---------------------------------------------------------------------------
-- Balances
---------------------------------------------------------------------------

-- An organisation's credits: available (what it may spend now, or at `at`),
-- the active grants' total, the next expiry of credit still available, and
-- the same by metric scope ("*" for grants usable on any metric). With a
-- metric: the grants usable for it. Reads the live grants only (now) or the
-- organisation's grants and one balance lookup each (at a past time): never
-- the history of consumption.
CREATE FUNCTION payledger.get_total_credits(org text, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.credit_require_metric(metric);
    -- now: the live grants; in the past: the grants in effect then, each
    -- with its balance at that time from the ledger (one branch runs)
    RETURN QUERY
    WITH g AS (
        SELECT coalesce(l.metric, '*') AS scope, a.balance AS left_, cg.amount, l.expires_at
          FROM payledger.credit_live_grants l
          JOIN payledger.accounts a ON a.id = l.account_id
          JOIN payledger.credit_grants cg ON cg.id = l.grant_id
         WHERE (get_total_credits.at IS NULL OR get_total_credits.at >= now())
           AND l.org_id = org AND (get_total_credits.metric IS NULL OR l.metric IS NULL OR l.metric = get_total_credits.metric)
           AND l.effective_at <= coalesce(get_total_credits.at, now())
           AND (l.expires_at IS NULL OR l.expires_at > coalesce(get_total_credits.at, now()))
        UNION ALL
        SELECT coalesce(cg.metric, '*'), payledger.balance_at(cg.account_id, get_total_credits.at), cg.amount, cg.expires_at
          FROM payledger.credit_grants cg
         WHERE get_total_credits.at < now()
           AND cg.org_id = org AND (get_total_credits.metric IS NULL OR cg.metric IS NULL OR cg.metric = get_total_credits.metric)
           AND cg.effective_at <= get_total_credits.at AND (cg.expires_at IS NULL OR cg.expires_at > get_total_credits.at))
    SELECT payledger.credits_of(coalesce(sum(g.left_), 0)::bigint),
           payledger.credits_of(coalesce(sum(g.amount), 0)::bigint),
           min(g.expires_at) FILTER (WHERE g.left_ > 0),
           coalesce((SELECT jsonb_object_agg(s.scope, payledger.credits_of(s.total))
                       FROM (SELECT g2.scope, sum(g2.left_)::bigint AS total FROM g g2 GROUP BY g2.scope) s), '{}')
      FROM g;
END;
$$;

CREATE FUNCTION payledger.get_total_credits(org uuid, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.get_total_credits(org::text, metric, at);
$$;

CREATE FUNCTION payledger.get_total_credits(org bigint, metric text DEFAULT NULL, at timestamptz DEFAULT NULL)
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.get_total_credits(org::text, metric, at);
$$;

---------------------------------------------------------------------------
-- Gift codes
---------------------------------------------------------------------------

CREATE FUNCTION payledger.create_gift_code(
    code            text,
    credits         numeric,
    metric          text DEFAULT NULL,
    valid_until     timestamptz DEFAULT NULL,
    validity        interval DEFAULT '1 year',
    max_redemptions integer DEFAULT NULL,
    per_org_limit   integer DEFAULT 1,
    priority        integer DEFAULT 5)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(code, 'code');
    IF code !~ '^[A-Za-z0-9_-]{4,64}$' THEN
        RAISE EXCEPTION 'a gift code is 4 to 64 letters, digits, _ or -' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    PERFORM payledger.credit_require_metric(metric);
    IF coalesce(max_redemptions, 1) <= 0 OR coalesce(per_org_limit, 0) <= 0 OR coalesce(validity, '0') <= '0' THEN
        RAISE EXCEPTION 'limits and validity must be positive' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.gift_codes (code, credits, metric, valid_until, validity, max_redemptions, per_org_limit, priority)
    VALUES (code, payledger.credits_minor(credits), metric, valid_until, validity, max_redemptions, per_org_limit,
            coalesce(priority, 5))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gift code % exists', code USING ERRCODE = 'PL014';
    END IF;
    RETURN code;
END;
$$;

-- A promotional grant from a code. Errors change nothing: an unknown code
-- PL031; expired or used up PL032; redeemed already by this organisation (as
-- often as its per-organisation limit allows) PL033.
CREATE FUNCTION payledger.redeem_gift_code(code text, org text)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    gc payledger.gift_codes;
    n integer;
    gid uuid;
BEGIN
    PERFORM payledger.require(code, 'code');
    PERFORM payledger.require(org, 'org');
    SELECT * INTO gc FROM payledger.gift_codes x WHERE x.code = redeem_gift_code.code FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'gift code % does not exist', code USING ERRCODE = 'PL031';
    END IF;
    IF gc.valid_until IS NOT NULL AND gc.valid_until <= now() THEN
        RAISE EXCEPTION 'gift code % has expired', code USING ERRCODE = 'PL032';
    END IF;
    IF gc.max_redemptions IS NOT NULL AND gc.redemptions >= gc.max_redemptions THEN
        RAISE EXCEPTION 'gift code % has been redeemed % times, its limit', code, gc.redemptions USING ERRCODE = 'PL032';
    END IF;
    SELECT count(*) INTO n FROM payledger.gift_redemptions r WHERE r.code = gc.code AND r.org_id = org;
    IF n >= gc.per_org_limit THEN
        RAISE EXCEPTION 'organisation % has already redeemed gift code %', org, code USING ERRCODE = 'PL033';
    END IF;
    gid := payledger.grant_credits(org, payledger.credits_of(gc.credits), 'gift_code', gc.metric, gc.priority,
                                   now() + gc.validity, idempotency_key => 'gift:' || gc.code || ':' || (n + 1),
                                   metadata => jsonb_build_object('gift_code', gc.code));
    INSERT INTO payledger.gift_redemptions (code, org_id, n, grant_id) VALUES (gc.code, org, n + 1, gid);
    UPDATE payledger.gift_codes x SET redemptions = x.redemptions + 1 WHERE x.code = gc.code;
    RETURN gid;
END;
$$;

---------------------------------------------------------------------------
-- Packages, bought with a pay-in
---------------------------------------------------------------------------

CREATE FUNCTION payledger.define_credit_package(
    name            text,
    credits         numeric,
    price_asset     text,
    price           bigint,
    metric          text DEFAULT NULL,
    period          interval DEFAULT NULL,
    validity        interval DEFAULT '1 year',
    priority        integer DEFAULT 10)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    id uuid;
BEGIN
    PERFORM payledger.require(name, 'name');
    PERFORM payledger.require(price_asset, 'price_asset');
    PERFORM payledger.require(price, 'price');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid package name %', name USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = price_asset) THEN
        RAISE EXCEPTION 'asset % does not exist', price_asset USING ERRCODE = 'PL003';
    END IF;
    IF price <= 0 THEN
        RAISE EXCEPTION 'price must be positive' USING ERRCODE = 'PL001';
    END IF;
    IF coalesce(validity, '0') <= '0' OR coalesce(period, '1 day') <= '0' THEN
        RAISE EXCEPTION 'validity and period must be positive' USING ERRCODE = '22023';
    END IF;
    PERFORM payledger.credit_require_metric(metric);
    INSERT INTO payledger.credit_packages (id, name, metric, credits, price_asset, price, period, validity, priority)
    VALUES (payledger.new_id(), name, metric, payledger.credits_minor(credits), price_asset, price, period, validity,
            coalesce(priority, 10))
    ON CONFLICT DO NOTHING
    RETURNING credit_packages.id INTO id;
    IF id IS NULL THEN
        RAISE EXCEPTION 'package % exists', name USING ERRCODE = 'PL014';
    END IF;
    -- the pay-in and pay-out types a purchase uses
    PERFORM payledger.register_payin_type('CREDIT_PACKAGE', 'a credit package');
    PERFORM payledger.register_payout_type('CREDIT_SALE', 'the sale of credits');
    RETURN id;
END;
$$;

-- Buy a package: a pay-in of its price (paid by the given methods, to the
-- seller's revenue account); the grant is made when the pay-in is PAID
-- (at once when balances cover it), exactly once per pay-in.
CREATE FUNCTION payledger.buy_credit_package(
    org             text,
    package         text,
    methods         jsonb,
    revenue_account uuid,
    payer           text DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS TABLE (payin_id uuid, state payledger.payin_state, grant_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
    p record;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(package, 'package');
    PERFORM payledger.require(revenue_account, 'revenue_account');
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = package AND x.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % does not exist', package USING ERRCODE = 'PL031';
    END IF;
    SELECT * INTO p FROM payledger.create_payin(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, methods,
        jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, idempotency_key, NULL, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
    RETURN QUERY SELECT p.payin_id, p.state, (SELECT g.id FROM payledger.credit_grants g WHERE g.payin_id = p.payin_id);
END;
$$;

-- Called when a pay-in reaches PAID (payin_reached): a credit package's
-- pay-in grants its credits; a subscription's renewals are recurring.
CREATE FUNCTION payledger.credits_payin_paid(payin uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    pk payledger.credit_packages;
BEGIN
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = p.metadata ->> 'credit_package';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM payledger.grant_credits(coalesce(p.metadata ->> 'credit_org', p.owner_id), payledger.credits_of(pk.credits),
        CASE WHEN p.metadata ? 'subscription' THEN 'recurring_purchase' ELSE 'purchase' END,
        pk.metric, pk.priority, now() + pk.validity,
        cost_basis => round(pk.price::numeric / payledger.credits_of(pk.credits), 12), cost_asset => pk.price_asset,
        payin => p.id, metadata => jsonb_build_object('package', pk.name));
END;
$$;

-- A recurring package: a subscription whose every paid period grants.
CREATE FUNCTION payledger.subscribe_credit_package(
    org             text,
    package         text,
    revenue_account uuid,
    methods         jsonb DEFAULT '[{"external": "invoice"}]',
    payer           text DEFAULT NULL,
    starts_at       timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    PERFORM payledger.require(org, 'org');
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = package AND x.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % does not exist', package USING ERRCODE = 'PL031';
    END IF;
    IF pk.period IS NULL THEN
        RAISE EXCEPTION 'credit package % is one-time, not recurring', package USING ERRCODE = '22023';
    END IF;
    RETURN payledger.create_subscription(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, pk.period,
        methods, jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, NULL, starts_at, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
END;
$$;

---------------------------------------------------------------------------
-- Usage, metering, access
---------------------------------------------------------------------------

-- A usage reading: counters add up over the cycle, gauges keep the highest.
CREATE FUNCTION payledger.record_usage(org text, metric text, amount numeric, at timestamptz DEFAULT NULL)
RETURNS numeric LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
    o payledger.credit_orgs;
    cyc timestamptz;
    total numeric;
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.require(metric, 'metric');
    PERFORM payledger.require(amount, 'amount');
    SELECT m.kind INTO k FROM payledger.credit_metrics m WHERE m.metric = record_usage.metric;
    IF k IS NULL THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
    IF amount < 0 THEN
        RAISE EXCEPTION 'usage must not be negative' USING ERRCODE = 'PL001';
    END IF;
    INSERT INTO payledger.credit_orgs (org_id) VALUES (org) ON CONFLICT DO NOTHING;
    SELECT * INTO o FROM payledger.credit_orgs x WHERE x.org_id = org;
    cyc := payledger.credit_cycle_start(o.cycle_anchor, coalesce(at, now()));
    INSERT INTO payledger.credit_usage AS u (org_id, metric, cycle_start, usage, updated_at)
    VALUES (org, metric, cyc, amount, coalesce(at, now()))
    ON CONFLICT ON CONSTRAINT credit_usage_pkey DO UPDATE
       SET usage = CASE WHEN k = 'counter' THEN u.usage + excluded.usage ELSE greatest(u.usage, excluded.usage) END,
           updated_at = greatest(u.updated_at, excluded.updated_at)
    RETURNING u.usage INTO total;
    RETURN total;
END;
$$;

-- Metering's core, set-based over a batch of organisations: for each meter
-- (organisation, metric, cycle), cost(overage) - what is settled, burnt from
-- credits at the time of the latest reading, in burn order; one journal per
-- organisation; what cannot be paid blocks that metric. The meters looked at
-- are the current and the previous cycle's (readings arrive late) and any
-- older one still blocked; only_unpaid: just the blocked ones (after a
-- top-up). The caller holds each organisation's credit lock, under which
-- alone meter rows and grant balances change. Returns the meters charged.
CREATE FUNCTION payledger.meter_batch(orgs text[], only_unpaid boolean)
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    unit numeric;
    due payledger.credit_meter_due[];
    grants payledger.credit_live_grants[];
    g_id uuid[];
    g_account uuid[];
    g_promo smallint[];
    g_left bigint[];
    want bigint[];
    pair_due integer[];
    pair_grant integer[];
    part_due integer[] := '{}';
    part_grant uuid[] := '{}';
    part_account uuid[] := '{}';
    part_promo smallint[] := '{}';
    part_take bigint[] := '{}';
    parts integer := 0;
    d integer;
    g integer;
    take bigint;
    sink uuid;
    items jsonb[];
    j_orgs text[];
    j_ids uuid[] := '{}';
    cons uuid[];
    r record;
BEGIN
    IF cardinality(orgs) = 0 THEN
        RETURN 0;
    END IF;
    unit := 10::numeric ^ (SELECT a.scale FROM payledger.assets a WHERE a.code = payledger.credit_asset());
    -- 1. the meters and what their overage costs now (graduated tiers,
    -- rounded up to the minor unit once, on the total; never less than what
    -- is settled: a lower reading refunds nothing)
    SELECT coalesce(array_agg(ROW(x.org_id, x.metric, x.cycle_start, x.usage_at, x.overage, x.owed, x.settled, x.charged,
                                  x.old_cost IS NULL, x.overage IS DISTINCT FROM x.old_overage OR x.owed IS DISTINCT FROM x.old_cost
                                  )::payledger.credit_meter_due ORDER BY x.org_id, x.cycle_start, x.metric), '{}')
      INTO due
      FROM (WITH o AS MATERIALIZED (  -- (the cycle bounds once per organisation)
                SELECT o.org_id, o.plan,
                       payledger.credit_cycle_start(o.cycle_anchor, payledger.credit_cycle_start(o.cycle_anchor, now())
                                                                    - interval '1 microsecond') AS since
                  FROM payledger.credit_orgs o WHERE o.org_id = ANY (orgs))
            SELECT u.org_id, u.metric, u.cycle_start, least(u.updated_at, now()) AS usage_at, v.overage,
                   greatest(least(ceil(coalesce(t.credits, 0) * unit), 9223372036854775807)::bigint,
                            coalesce(m.charged + m.forgiven, 0)) AS owed,
                   coalesce(m.charged + m.forgiven, 0) AS settled, coalesce(m.charged, 0) AS charged,
                   m.overage AS old_overage, m.cost AS old_cost
              FROM o
              JOIN payledger.credit_usage u ON u.org_id = o.org_id
              LEFT JOIN payledger.credit_meters m
                ON m.org_id = u.org_id AND m.metric = u.metric AND m.cycle_start = u.cycle_start
              LEFT JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.metric = u.metric
              -- no plan: every unit is overage
              CROSS JOIN LATERAL (SELECT greatest(u.usage - coalesce(l.monthly_limit, 0), 0) AS overage) v
              LEFT JOIN LATERAL (
                   SELECT sum((least(v.overage, coalesce(p.to_units, v.overage)) - p.from_units) * p.credits_per_unit) AS credits
                     FROM payledger.credit_price_tiers p WHERE p.metric = u.metric AND p.from_units < v.overage) t ON true
             WHERE m.blocked OR NOT only_unpaid AND u.cycle_start >= o.since) x;

    IF cardinality(due) = 0 THEN
        RETURN 0;
    END IF;

    -- 2. who pays what: each owed meter in turn (by organisation, cycle,
    -- metric) takes from its eligible grants in burn order (as credit_burn)
    -- (flat arrays of fixed-width values: subscripting them is cheap)
    SELECT coalesce(array_agg(l ORDER BY l.grant_id), '{}'), coalesce(array_agg(a.balance ORDER BY l.grant_id), '{}'),
           coalesce(array_agg(l.grant_id ORDER BY l.grant_id), '{}'), coalesce(array_agg(l.account_id ORDER BY l.grant_id), '{}'),
           coalesce(array_agg(l.promo_first ORDER BY l.grant_id), '{}')
      INTO grants, g_left, g_id, g_account, g_promo
      FROM payledger.credit_live_grants l JOIN payledger.accounts a ON a.id = l.account_id
     WHERE l.org_id IN (SELECT x.org_id FROM unnest(due) x WHERE x.owed > x.settled) AND a.balance > 0;
    SELECT coalesce(array_agg(x.owed - x.settled ORDER BY x.i), '{}') INTO want
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i);
    SELECT coalesce(array_agg(x.i ORDER BY x.i, l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id), '{}'),
           coalesce(array_agg(l.gi ORDER BY x.i, l.priority, l.expires_at NULLS LAST, l.promo_first, l.effective_at, l.grant_id), '{}')
      INTO pair_due, pair_grant
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i)
      JOIN unnest(grants) WITH ORDINALITY AS l(grant_id, org_id, metric, priority, expires_at, promo_first, effective_at,
                                              account_id, gi)
        ON l.org_id = x.org_id AND (l.metric IS NULL OR l.metric = x.metric)
       AND l.effective_at <= greatest(x.usage_at, now()) AND (l.expires_at IS NULL OR l.expires_at > x.usage_at)
     WHERE x.owed > x.settled;
    FOR k IN 1 .. cardinality(pair_due) LOOP
        d := pair_due[k];
        g := pair_grant[k];
        CONTINUE WHEN want[d] = 0 OR g_left[g] = 0;
        take := least(want[d], g_left[g]);
        want[d] := want[d] - take;
        g_left[g] := g_left[g] - take;
        parts := parts + 1;
        part_due[parts] := d;
        part_grant[parts] := g_id[g];
        part_account[parts] := g_account[g];
        part_promo[parts] := g_promo[g];
        part_take[parts] := take;
    END LOOP;
    IF parts = 0 AND NOT EXISTS (SELECT 1 FROM unnest(due) x WHERE x.is_new OR x.changed) THEN
        RETURN 0;
    END IF;

    -- 3. one journal per organisation: each grant gives what it paid, the
    -- consumed sink takes the total (posted in engine batches)
    sink := payledger.credit_system_account('credits_consumed');
    SELECT coalesce(array_agg(j.org_id ORDER BY j.org_id), '{}'), coalesce(array_agg(j.item ORDER BY j.org_id), '{}')
      INTO j_orgs, items
      FROM (SELECT s.org_id, jsonb_build_object(
                       'kind', 'credit_consume',
                       'postings', jsonb_agg(jsonb_build_object('account', s.account_id, 'amount', -s.total))
                                   || jsonb_build_object('account', sink, 'amount', sum(s.total)),
                       'metadata', jsonb_build_object('metering', s.org_id)) AS item
              FROM (SELECT x.org_id, p.account_id, sum(p.take) AS total
                      FROM unnest(part_due, part_account, part_take) AS p(d, account_id, take)
                      JOIN unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled,
                                                           charged, is_new, changed, i) ON x.i = p.d
                     GROUP BY 1, 2) s
             GROUP BY s.org_id) j;
    FOR k IN 0 .. (cardinality(items) - 1) / 1000 LOOP
        FOR r IN SELECT * FROM payledger.transfer_batch(to_jsonb(items[k * 1000 + 1 : k * 1000 + 1000])) b ORDER BY b.item LOOP
            IF r.status = 'error' THEN
                PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
            END IF;
            j_ids := j_ids || r.journal_id;
        END LOOP;
    END LOOP;

    -- 4. the consumptions (keyed by the cycle and the watermark, as before
    -- any charge), which grants paid them, the meters, the thresholds
    SELECT array_agg(CASE WHEN x.d IS NOT NULL THEN payledger.new_id() END ORDER BY g.i) INTO cons
      FROM generate_series(1, cardinality(due)) g(i) LEFT JOIN (SELECT DISTINCT p.d FROM unnest(part_due) p(d)) x ON x.d = g.i;
    INSERT INTO payledger.credit_consumptions (id, org_id, metric, amount, requested, usage_at, idempotency_key, journal_id,
                                               source)
    SELECT cons[b.d], x.org_id, x.metric, b.burnt, x.owed - x.settled, x.usage_at,
           format('meter:%s:%s:%s', x.metric, extract(epoch FROM x.cycle_start)::bigint, x.settled), j.id, 'metering'
      FROM (SELECT p.d, sum(p.take) AS burnt FROM unnest(part_due, part_take) AS p(d, take) GROUP BY p.d) b
      JOIN unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i) ON x.i = b.d
      JOIN unnest(j_orgs, j_ids) AS j(org_id, id) ON j.org_id = x.org_id;
    INSERT INTO payledger.credit_consumption_parts (consumption_id, grant_id, amount, category)
    SELECT cons[p.d], p.grant_id, p.take, CASE p.promo WHEN 0 THEN 'promotional' ELSE 'paid' END
      FROM unnest(part_due, part_grant, part_promo, part_take) AS p(d, grant_id, promo, take);
    -- (a meter is written only when something about it changed)
    INSERT INTO payledger.credit_meters AS m (org_id, metric, cycle_start, overage, cost, charged, forgiven, blocked, updated_at)
    SELECT x.org_id, x.metric, x.cycle_start, x.overage, x.owed, x.charged + coalesce(b.burnt, 0), x.settled - x.charged,
           x.settled + coalesce(b.burnt, 0) < x.owed, now()
      FROM unnest(due) WITH ORDINALITY AS x(org_id, metric, cycle_start, usage_at, overage, owed, settled, charged,
                                           is_new, changed, i)
      LEFT JOIN (SELECT p.d, sum(p.take) AS burnt FROM unnest(part_due, part_take) AS p(d, take) GROUP BY p.d) b ON b.d = x.i
     WHERE x.is_new OR x.changed OR b.burnt IS NOT NULL
    ON CONFLICT ON CONSTRAINT credit_meters_pkey DO UPDATE
       SET overage = excluded.overage, cost = excluded.cost, charged = excluded.charged, blocked = excluded.blocked,
           updated_at = excluded.updated_at;
    PERFORM payledger.credit_thresholds(j_orgs);
    RETURN (SELECT count(DISTINCT p.d) FROM unnest(part_due) AS p(d));
END;
$$;

-- Charge one organisation's overage now (waits for its lock).
CREATE FUNCTION payledger.meter_org(org text, only_unpaid boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    PERFORM payledger.credit_lock(org);
    RETURN payledger.meter_batch(ARRAY[org], coalesce(only_unpaid, false));
END;
$$;

-- One step of a metering run: up to max_orgs organisations with usage in the
-- current or the previous cycle (or a meter still blocked), in org_id order
-- after after_org, charged in one transaction; with parts > 1, only the
-- organisations of share `part` (by a hash of the id), so that that many
-- sessions can meter at once. An organisation busy at that moment (a
-- consumer, another run) is skipped and left to the next run; two runs at
-- once charge each overage once (the meter rows are the watermark).
-- last_org is where the next step starts; NULL: the share is done. The
-- worker runs a whole run every payledger.metering_interval seconds over
-- payledger.metering_workers sessions; CALL payledger.meter_all() runs one
-- on demand in the calling session.
CREATE FUNCTION payledger.run_metering(max_orgs integer DEFAULT 1000, after_org text DEFAULT NULL,
                                       part integer DEFAULT 0, parts integer DEFAULT 1)
RETURNS TABLE (orgs integer, charged integer, blocked integer, failed integer, last_org text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    picked text[];
    locked text[];
    n integer := 0;
    lost integer := 0;
BEGIN
    IF max_orgs IS NULL OR max_orgs NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_orgs must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    IF parts IS NULL OR parts NOT BETWEEN 1 AND 16 OR part IS NULL OR part NOT BETWEEN 0 AND parts - 1 THEN
        RAISE EXCEPTION 'part must be between 0 and parts - 1, parts between 1 and 16' USING ERRCODE = '22023';
    END IF;
    -- (usage in the last three months: a cheap superset of "the current or
    -- the previous cycle", whose exact rule meter_batch applies)
    SELECT coalesce(array_agg(o.org_id ORDER BY o.org_id), '{}') INTO picked
      FROM (SELECT o.org_id FROM payledger.credit_orgs o
             WHERE (after_org IS NULL OR o.org_id > after_org)
               AND (parts = 1 OR (pg_catalog.hashtextextended(o.org_id, 0) & 1023) % parts = part)
               -- (one EXISTS over a UNION ALL: a probe per organisation; two
               -- EXISTS joined by OR would hash all the usage at every step)
               AND EXISTS (SELECT 1 FROM payledger.credit_usage u
                            WHERE u.org_id = o.org_id AND u.cycle_start > now() - interval '3 months'
                           UNION ALL
                           SELECT 1 FROM payledger.credit_meters b WHERE b.org_id = o.org_id AND b.blocked)
             ORDER BY o.org_id LIMIT max_orgs) o;
    -- (try-locks, in org_id order: a sweep never waits for an organisation)
    SELECT coalesce(array_agg(x.org_id ORDER BY x.o), '{}') INTO locked
      FROM unnest(picked) WITH ORDINALITY AS x(org_id, o) WHERE payledger.credit_try_lock(x.org_id);
    -- a step that fails (a bug, bad configuration) changes nothing, is
    -- logged and counted, and does not stop the run: its organisations are
    -- tried again by the next one
    BEGIN
        n := payledger.meter_batch(locked, false);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'payledger metering: % organisations from % not charged: % (SQLSTATE %)',
            cardinality(locked), locked[1], SQLERRM, SQLSTATE;
        lost := cardinality(locked);
    END;
    RETURN QUERY SELECT cardinality(locked) - lost, n, (SELECT count(*)::integer FROM payledger.credit_meters b WHERE b.blocked),
                        lost, CASE WHEN cardinality(picked) = max_orgs THEN picked[max_orgs] END;
END;
$$;

-- Record a whole metering run as done (the worker and meter_all, at the end).
CREATE FUNCTION payledger.metering_done()
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_status w SET last_metering_at = now();
$$;

-- Is a metering run due (payledger.metering_interval since the last one)?
CREATE FUNCTION payledger.metering_due()
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT w.last_metering_at IS NULL
                            OR w.last_metering_at <= now() - make_interval(secs => payledger.setting_int('metering_interval', 21600))
                       FROM payledger.worker_status w), true);
$$;

-- A whole metering run on demand, a transaction per step (a procedure: CALL
-- it outside a transaction block). No SET search_path (it could not COMMIT):
-- every name is qualified.
CREATE PROCEDURE payledger.meter_all(batch integer DEFAULT 1000, INOUT orgs integer DEFAULT NULL,
                                     INOUT charged integer DEFAULT NULL, INOUT blocked integer DEFAULT NULL,
                                     INOUT failed integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    after_org text;
BEGIN
    orgs := 0;
    charged := 0;
    failed := 0;
    LOOP
        SELECT * INTO r FROM payledger.run_metering(batch, after_org);
        COMMIT;
        orgs := orgs + r.orgs;
        charged := charged + r.charged;
        failed := failed + r.failed;
        blocked := r.blocked;
        after_org := r.last_org;
        EXIT WHEN after_org IS NULL;
    END LOOP;
    PERFORM payledger.metering_done();
END;
$$;
-- May the organisation do an action that uses these metrics? No when any of
-- them is over its plan in the current cycle with the overage unpaid (out
-- of credits); the others stay allowed (a download does not need storage).
CREATE FUNCTION payledger.credit_access(org text, metrics text[])
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM payledger.credit_meters b JOIN payledger.credit_orgs o ON o.org_id = b.org_id
         WHERE b.org_id = org AND b.blocked AND b.metric = ANY (metrics)
           AND b.cycle_start = payledger.credit_cycle_start(o.cycle_anchor, now()));
$$;

---------------------------------------------------------------------------
-- Views for end users (the organisation is payledger.current_owner_id())
---------------------------------------------------------------------------

CREATE VIEW payledger.my_credit_grants WITH (security_barrier) AS
SELECT g.id, g.metric, g.source, g.category, g.priority, g.effective_at, g.expires_at,
       payledger.credits_of(g.amount) AS granted, payledger.credits_of(a.balance) AS remaining
  FROM payledger.credit_grants g JOIN payledger.accounts a ON a.id = g.account_id
 WHERE g.org_id = payledger.current_owner_id();

-- (a function, not get_total_credits itself: end users may not ask for
-- another organisation's credits)
CREATE FUNCTION payledger.my_total_credits()
RETURNS TABLE (available numeric, granted_active numeric, next_expiry timestamptz, by_metric jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT t.* FROM payledger.get_total_credits(payledger.current_owner_id()) t
     WHERE payledger.current_owner_id() IS NOT NULL;
$$;

CREATE VIEW payledger.my_credit_balance AS
SELECT * FROM payledger.my_total_credits();

CREATE VIEW payledger.my_credit_meters WITH (security_barrier) AS
SELECT m.metric, m.cycle_start, m.overage, payledger.credits_of(m.cost) AS cost,
       payledger.credits_of(m.charged) AS charged, m.blocked
  FROM payledger.credit_meters m
 WHERE m.org_id = payledger.current_owner_id();

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

CREATE FUNCTION payledger.credit_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a grant's account: granted - consumed (not undone) - expired - voided
    -- (set-based: one pass over the parts and the events, whatever the history)
    SELECT 'credit_grant_balance', g.id::text,
           format('balance %s, history says %s', a.balance, g.amount - coalesce(u.total, 0) - coalesce(e.total, 0))
      FROM payledger.credit_grants g
      JOIN payledger.accounts a ON a.id = g.account_id
      LEFT JOIN (SELECT p.grant_id, sum(p.amount) AS total
                   FROM payledger.credit_consumption_parts p
                   JOIN payledger.credit_consumptions c ON c.id = p.consumption_id
                  WHERE c.undone_at IS NULL GROUP BY p.grant_id) u ON u.grant_id = g.id
      LEFT JOIN (SELECT e.grant_id, sum(e.amount) AS total FROM payledger.credit_grant_events e GROUP BY e.grant_id) e
        ON e.grant_id = g.id
     WHERE a.balance <> g.amount - coalesce(u.total, 0) - coalesce(e.total, 0)
    UNION ALL
    -- a live grant has its grant; a grant with credit left in effect is live or past its expiry
    SELECT 'credit_live_grant', l.grant_id::text, 'no such grant'
      FROM payledger.credit_live_grants l
     WHERE NOT EXISTS (SELECT 1 FROM payledger.credit_grants g WHERE g.id = l.grant_id)
    UNION ALL
    SELECT 'credit_grant_not_live', g.id::text, 'credit left but not in the burn queue'
      FROM payledger.credit_grants g JOIN payledger.accounts a ON a.id = g.account_id
     WHERE a.balance > 0 AND NOT EXISTS (SELECT 1 FROM payledger.credit_live_grants l WHERE l.grant_id = g.id)
    UNION ALL
    -- a consumption's parts add up to it
    SELECT 'credit_consumption_parts', c.id::text, format('%s consumed, parts %s', c.amount, coalesce(s.total, 0))
      FROM payledger.credit_consumptions c
      LEFT JOIN (SELECT p.consumption_id, sum(p.amount) AS total FROM payledger.credit_consumption_parts p GROUP BY 1) s
        ON s.consumption_id = c.id
     WHERE c.amount <> coalesce(s.total, 0)
    UNION ALL
    -- a meter charged what its consumptions burnt
    SELECT 'credit_meter_charged', m.org_id || ' ' || m.metric || ' ' || m.cycle_start,
           format('charged %s, burnt %s', m.charged, coalesce(s.total, 0))
      FROM payledger.credit_meters m
      LEFT JOIN (SELECT c.org_id, c.metric, split_part(c.idempotency_key, ':', 3) AS cyc, sum(c.amount) AS total
                   FROM payledger.credit_consumptions c WHERE c.source = 'metering' AND c.undone_at IS NULL
                  GROUP BY 1, 2, 3) s
        ON s.org_id = m.org_id AND s.metric = m.metric AND s.cyc = extract(epoch FROM m.cycle_start)::bigint::text
     WHERE m.charged <> coalesce(s.total, 0);
$$;

---------------------------------------------------------------------------
-- Threshold events
---------------------------------------------------------------------------

-- The rules in force: the table's, or, while it is empty, the defaults
-- (50, 75, 90 and 100 % used; depleted/recovered; expiring within 7 days).
CREATE FUNCTION payledger.credit_threshold_rules()
RETURNS TABLE (name text, kind text, value numeric)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT t.name, t.kind, t.value FROM payledger.credit_thresholds t WHERE t.active
    UNION ALL
    SELECT d.name, d.kind, d.value
      FROM (VALUES ('used_50', 'used_pct', 50::numeric), ('used_75', 'used_pct', 75), ('used_90', 'used_pct', 90),
                   ('used_100', 'used_pct', 100), ('depleted', 'depleted', 0), ('expiring_7d', 'expiring', 7))
           AS d(name, kind, value)
     WHERE NOT EXISTS (SELECT 1 FROM payledger.credit_thresholds);
$$;

CREATE FUNCTION payledger.set_credit_threshold(name text, kind text, value numeric DEFAULT 0, active boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(name, 'name');
    IF name !~ '^[a-z][a-z0-9_]{0,62}$' OR kind IS NULL OR kind NOT IN ('used_pct', 'depleted', 'expiring')
       OR coalesce(value, -1) < 0 THEN
        RAISE EXCEPTION 'a threshold has a lower-case name, a kind (used_pct, depleted, expiring) and a value >= 0'
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_thresholds AS t (name, kind, value, active)
    VALUES (name, kind, value, coalesce(active, true))
    ON CONFLICT ON CONSTRAINT credit_thresholds_pkey DO UPDATE
       SET kind = excluded.kind, value = excluded.value, active = excluded.active;
END;
$$;

-- Evaluate an organisation's rules against its credits now; write an event
-- (credits.threshold, credits.depleted, credits.recovered, credits.expiring)
-- for each rule whose state changed, once per crossing. Percentages are of
-- the active granted credit only (expired credit is not "used").
-- Threshold crossings for a batch of organisations (the caller holds their
-- credit locks, so two checks cannot both see one crossing): each rule's
-- state is compared with the organisation's credits now; a change is
-- recorded, and a rising edge (or depleted's falling edge, "recovered") is
-- written to the outbox. Returns the events written.
CREATE FUNCTION payledger.credit_thresholds(orgs text[])
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    WITH t AS (
        -- get_total_credits(org), for many
        -- (in minor units; credits in the events)
        SELECT o.org_id, coalesce(sum(a.balance), 0) AS available, coalesce(sum(g.amount), 0) AS granted_active,
               min(l.expires_at) FILTER (WHERE a.balance > 0) AS next_expiry
          FROM unnest(orgs) AS o(org_id)
          LEFT JOIN payledger.credit_live_grants l
            ON l.org_id = o.org_id AND l.effective_at <= now() AND (l.expires_at IS NULL OR l.expires_at > now())
          LEFT JOIN payledger.accounts a ON a.id = l.account_id
          LEFT JOIN payledger.credit_grants g ON g.id = l.grant_id
         GROUP BY o.org_id),
    c AS (
        SELECT q.* FROM (
            SELECT t.*, r.name, r.kind, r.value, r.n, coalesce(s.crossed, false) AS was,
                   coalesce(CASE r.kind
                       WHEN 'used_pct' THEN t.granted_active > 0 AND (t.granted_active - t.available) * 100 >= r.value * t.granted_active
                       WHEN 'depleted' THEN t.granted_active > 0 AND t.available = 0
                       WHEN 'expiring' THEN t.available > 0 AND t.next_expiry <= now() + make_interval(days => r.value::integer)
                   END, false) AS crossed
              FROM t CROSS JOIN payledger.credit_threshold_rules() WITH ORDINALITY AS r(name, kind, value, n)
              LEFT JOIN payledger.credit_threshold_state s ON s.org_id = t.org_id AND s.threshold = r.name) q
         WHERE q.crossed <> q.was),
    changed AS (
        INSERT INTO payledger.credit_threshold_state AS s (org_id, threshold, crossed, changed_at)
        SELECT c.org_id, c.name, c.crossed, now() FROM c
        ON CONFLICT ON CONSTRAINT credit_threshold_state_pkey DO UPDATE
           SET crossed = excluded.crossed, changed_at = excluded.changed_at)
    INSERT INTO payledger.events (topic, subject_id, owner_id, payload)
    SELECT CASE WHEN c.kind = 'depleted' AND c.crossed THEN 'credits.depleted'
                WHEN c.kind = 'depleted' THEN 'credits.recovered'
                WHEN c.kind = 'expiring' THEN 'credits.expiring'
                ELSE 'credits.threshold' END,
           NULL, c.org_id,
           jsonb_build_object('org', c.org_id, 'threshold', c.name, 'kind', c.kind, 'value', c.value,
                              'available', payledger.credits_of(c.available::bigint),
                              'granted_active', payledger.credits_of(c.granted_active::bigint), 'next_expiry', c.next_expiry)
      FROM c WHERE c.crossed OR c.kind = 'depleted'
     ORDER BY c.org_id, c.n;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END;
$$;

CREATE FUNCTION payledger.credit_check_thresholds(org text)
RETURNS integer LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger.credit_lock(org);
    SELECT payledger.credit_thresholds(ARRAY[org]);
$$;

-- Organisations whose credit expires within the longest "expiring" window:
-- time alone crosses that rule, so the worker asks (housekeeping).
CREATE FUNCTION payledger.credit_check_expiring(max_orgs integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    days numeric := (SELECT max(r.value) FROM payledger.credit_threshold_rules() r WHERE r.kind = 'expiring');
BEGIN
    PERFORM payledger.require_limit(max_orgs, 'max_orgs');
    IF days IS NULL THEN
        RETURN 0;
    END IF;
    RETURN payledger.credit_thresholds(ARRAY(
        SELECT o.org_id
          FROM (SELECT DISTINCT l.org_id FROM payledger.credit_live_grants l
                 WHERE l.expires_at BETWEEN now() - interval '1 day' AND now() + make_interval(days => days::integer)
                 ORDER BY l.org_id LIMIT max_orgs) o
         WHERE payledger.credit_try_lock(o.org_id)));
END;
$$;

---------------------------------------------------------------------------
-- History
---------------------------------------------------------------------------

-- Month by month (calendar months, UTC, the current one included) for an
-- organisation: per metric, the cycle's usage, plan limit and overage, the
-- credits used for it (paid and promotional), credit expired and voided from
-- grants scoped to it, and what was left for it at the month's end; the
-- metric '*' holds what concerns grants usable for any metric.
CREATE FUNCTION payledger.credit_history(org text, months integer DEFAULT 12)
RETURNS TABLE (month date, metric text, usage numeric, monthly_limit numeric, overage numeric,
               credits_used numeric, paid_used numeric, promotional_used numeric, expired numeric, voided numeric,
               closing_balance numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger.require(org, 'org');
    IF months IS NULL OR months NOT BETWEEN 1 AND 120 THEN
        RAISE EXCEPTION 'months must be between 1 and 120' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH m AS (
        SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => g))::date AS month
          FROM generate_series(0, months - 1) g),
    metrics AS (SELECT x.metric FROM payledger.credit_metrics x UNION ALL SELECT '*'),
    used AS (
        SELECT date_trunc('month', c.usage_at AT TIME ZONE 'UTC')::date AS month, c.metric,
               sum(p.amount) AS total, sum(p.amount) FILTER (WHERE p.category = 'paid') AS paid,
               sum(p.amount) FILTER (WHERE p.category = 'promotional') AS promo
          FROM payledger.credit_consumptions c JOIN payledger.credit_consumption_parts p ON p.consumption_id = c.id
         WHERE c.org_id = org AND c.undone_at IS NULL
         GROUP BY 1, 2),
    lost AS (
        SELECT date_trunc('month', e.at AT TIME ZONE 'UTC')::date AS month, coalesce(g.metric, '*') AS metric,
               sum(e.amount) FILTER (WHERE e.kind IN ('expired', 'restored_expired')) AS expired,
               sum(e.amount) FILTER (WHERE e.kind = 'voided') AS voided
          FROM payledger.credit_grant_events e JOIN payledger.credit_grants g ON g.id = e.grant_id
         WHERE g.org_id = org
         GROUP BY 1, 2),
    meter AS (
        SELECT date_trunc('month', u.cycle_start AT TIME ZONE 'UTC')::date AS month, u.metric,
               sum(u.usage) AS usage, max(l.monthly_limit) AS monthly_limit, sum(mt.overage) AS overage
          FROM payledger.credit_usage u
          JOIN payledger.credit_orgs o ON o.org_id = u.org_id
          LEFT JOIN payledger.credit_plan_limits l ON l.plan = o.plan AND l.metric = u.metric
          LEFT JOIN payledger.credit_meters mt ON mt.org_id = u.org_id AND mt.metric = u.metric AND mt.cycle_start = u.cycle_start
         WHERE u.org_id = org
         GROUP BY 1, 2)
    SELECT m.month, x.metric, meter.usage, meter.monthly_limit, meter.overage,
           payledger.credits_of(coalesce(used.total, 0)::bigint), payledger.credits_of(coalesce(used.paid, 0)::bigint),
           payledger.credits_of(coalesce(used.promo, 0)::bigint), payledger.credits_of(coalesce(lost.expired, 0)::bigint),
           payledger.credits_of(coalesce(lost.voided, 0)::bigint),
           (SELECT t.available FROM payledger.get_total_credits(org, nullif(x.metric, '*'),
                                   least(now(), ((m.month + interval '1 month') AT TIME ZONE 'UTC') - interval '1 microsecond')) t)
      FROM m CROSS JOIN metrics x
      LEFT JOIN used ON used.month = m.month AND used.metric = x.metric
      LEFT JOIN lost ON lost.month = m.month AND lost.metric = x.metric
      LEFT JOIN meter ON meter.month = m.month AND meter.metric = x.metric
     ORDER BY m.month DESC, x.metric;
END;
$$;

CREATE FUNCTION payledger.my_credit_history(months integer DEFAULT 12)
RETURNS TABLE (month date, metric text, usage numeric, monthly_limit numeric, overage numeric,
               credits_used numeric, paid_used numeric, promotional_used numeric, expired numeric, voided numeric,
               closing_balance numeric)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.credit_history(payledger.current_owner_id(), months)
     WHERE payledger.current_owner_id() IS NOT NULL;
$$;

CREATE VIEW payledger.my_credit_history AS
SELECT * FROM payledger.my_credit_history(12);

-- Every violation of payledger's invariants, from every module; empty when healthy.
CREATE FUNCTION payledger.check_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.ledger_invariants()
    UNION ALL
    SELECT * FROM payledger.payin_invariants()
    UNION ALL
    SELECT * FROM payledger.nostr_invariants()
    UNION ALL
    SELECT * FROM payledger.provider_invariants()
    UNION ALL
    SELECT * FROM payledger.credit_invariants()
$$;

CREATE TRIGGER entries_guard AFTER INSERT ON payledger.entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.entries_balance_guard();
CREATE TRIGGER accounts_floor BEFORE INSERT OR UPDATE OF balance, pending_debits, min_available
    ON payledger.accounts FOR EACH ROW EXECUTE FUNCTION payledger.accounts_floor_guard();

-- transfer() calls transfer_journal().
CREATE OR REPLACE FUNCTION payledger.transfer(
    from_account    uuid,
    to_account      uuid,
    amount          bigint,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    effective_at    timestamptz DEFAULT NULL,
    kind            text DEFAULT 'transfer')
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    journal uuid;
    r record;
BEGIN
    IF from_account IS NULL OR to_account IS NULL OR amount IS NULL THEN
        RAISE EXCEPTION 'from_account, to_account and amount must not be null' USING ERRCODE = '22004';
    END IF;
    journal := payledger.transfer_journal(from_account, to_account, amount, idempotency_key, metadata,
                                          effective_at, kind);
    IF journal IS NULL THEN
        SELECT * INTO r FROM payledger.engine_failure();
        PERFORM payledger.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    RETURN journal;
END;
$$;

-- Privileges, as src/security.sql gives them on a fresh install (granting
-- again what 0.1.0 granted changes nothing).
REVOKE ALL ON ALL TABLES IN SCHEMA payledger FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA payledger FROM PUBLIC;
GRANT SELECT ON payledger.assets, payledger.account_kinds, payledger.accounts, payledger.journals,
                payledger.entries, payledger.holds,
                payledger.payin_transitions, payledger.payin_types, payledger.payout_types, payledger.split_rules,
                payledger.payins, payledger.payin_legs, payledger.payouts, payledger.payin_refunds,
                payledger.payin_history, payledger.nostr_jobs, payledger.nostr_job_events, payledger.nostr_job_payments,
                payledger.merchant_profiles, payledger.providers, payledger.payin_routes, payledger.subscriptions,
                payledger.invoices, payledger.settle_hooks, payledger.hook_runs, payledger.events,
                payledger.worker_status,
                payledger.credit_settings, payledger.credit_metrics, payledger.credit_grants,
                payledger.credit_live_grants, payledger.credit_consumptions, payledger.credit_consumption_parts,
                payledger.credit_grant_events, payledger.credit_price_tiers, payledger.credit_packages,
                payledger.gift_codes, payledger.gift_redemptions, payledger.credit_plans, payledger.credit_plan_limits,
                payledger.credit_orgs, payledger.credit_usage, payledger.credit_meters,
                payledger.credit_thresholds, payledger.credit_threshold_state
    TO payledger_admin, payledger_app;
-- Provider credentials: the admin role (and the worker, a superuser connection) only.
GRANT SELECT ON payledger.provider_secrets TO payledger_admin;
CREATE POLICY admin_read ON payledger.provider_secrets FOR SELECT TO payledger_admin USING (true);
CREATE POLICY backend_read ON payledger.payin_transitions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_types FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payout_types FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.split_rules FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payins FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_legs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payouts FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_refunds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_history FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_jobs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_job_events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.nostr_job_payments FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.merchant_profiles FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.providers FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.payin_routes FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.subscriptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.invoices FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.settle_hooks FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.hook_runs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.worker_status FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_settings FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_metrics FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_grants FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_live_grants FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_consumptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_consumption_parts FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_grant_events FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_price_tiers FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_packages FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.gift_codes FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.gift_redemptions FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_plans FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_plan_limits FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_orgs FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_usage FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_meters FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_thresholds FOR SELECT TO payledger_admin, payledger_app USING (true);
CREATE POLICY backend_read ON payledger.credit_threshold_state FOR SELECT TO payledger_admin, payledger_app USING (true);
GRANT SELECT ON payledger.my_accounts, payledger.my_entries, payledger.my_holds,
                payledger.my_payins, payledger.my_payouts, payledger.my_payin_history, payledger.my_nostr_jobs,
                payledger.my_invoices, payledger.my_events, payledger.my_subscriptions,
                payledger.my_credit_grants, payledger.my_credit_balance, payledger.my_credit_meters,
                payledger.my_credit_history
    TO payledger_enduser, payledger_app, payledger_admin;
GRANT EXECUTE ON FUNCTION payledger.current_owner_id(), payledger.format_amount(text, bigint),
    payledger.parse_amount(text, numeric), payledger.my_total_credits(), payledger.credits_of(bigint),
    payledger.credit_asset(), payledger.my_credit_history(integer)
TO payledger_enduser, payledger_app, payledger_admin;
GRANT EXECUTE ON FUNCTION
    payledger.create_payin(text, text, text, bigint, jsonb, jsonb, text, jsonb, text, uuid, jsonb),
    payledger.split_payouts(text, bigint, jsonb),
    payledger.transition_payin(uuid, payledger.payin_state, payledger.payin_failure_reason, text),
    payledger.settle_payin(uuid),
    payledger.fail_payin(uuid, payledger.payin_failure_reason),
    payledger.cancel_payin(uuid, payledger.payin_failure_reason),
    payledger.refund_payin(uuid, bigint, uuid, text, text),
    payledger.retry_payin(uuid, jsonb, jsonb, text, jsonb, text, text),
    payledger.payin_stats(timestamptz, timestamptz, text),
    payledger.payin_audit(uuid),
    payledger.bolt11_decode(text),
    payledger.nostr_event_id(jsonb),
    payledger.nostr_verify_event(jsonb),
    payledger.bip340_verify(bytea, bytea, bytea),
    payledger.verify_zap_receipt(jsonb, text, text, bigint, text),
    payledger.nostr_job_open(jsonb, text, text, uuid, text, bigint, regproc, interval),
    payledger.nostr_job_feedback(uuid, text, bigint, text, text),
    payledger.nostr_job_result(uuid, text, bigint, text),
    payledger.nostr_job_published(uuid, jsonb),
    payledger.nostr_job_pay_zap(jsonb),
    payledger.nostr_job_pay_invoice(uuid, text, bigint),
    payledger.nostr_job_invoice(uuid, bigint, uuid, interval),
    payledger.nostr_job_fail(uuid, text),
    payledger.nostr_expire_jobs(integer),
    payledger.request_invoice(uuid, uuid, interval, text),
    payledger.provider_webhook(uuid, jsonb, text),
    payledger.events_since(bigint, integer),
    payledger.create_subscription(text, text, text, bigint, interval, jsonb, jsonb, text, jsonb, text, timestamptz, jsonb),
    payledger.cancel_subscription(uuid),
    payledger.renew_subscription(uuid),
    payledger.grant_credits(text, numeric, text, text, integer, timestamptz, timestamptz, boolean, numeric, text, uuid, text, jsonb),
    payledger.void_grant(uuid, text),
    payledger.consume_credits(text, text, numeric, text, timestamptz, boolean),
    payledger.undo_consumption(uuid, text),
    payledger.get_total_credits(text, text, timestamptz),
    payledger.get_total_credits(uuid, text, timestamptz),
    payledger.get_total_credits(bigint, text, timestamptz),
    payledger.credit_cost(text, numeric),
    payledger.redeem_gift_code(text, text),
    payledger.buy_credit_package(text, text, jsonb, uuid, text, text),
    payledger.subscribe_credit_package(text, text, uuid, jsonb, text, timestamptz),
    payledger.record_usage(text, text, numeric, timestamptz),
    payledger.set_credit_org(text, text, timestamptz),
    payledger.credit_access(text, text[]),
    payledger.credit_history(text, integer)
TO payledger_app, payledger_admin;
GRANT EXECUTE ON FUNCTION
    payledger.register_payin_type(text, text, boolean, boolean, integer),
    payledger.register_payout_type(text, text),
    payledger.define_split_rule(text, jsonb, text),
    payledger.nostr_sign_event(jsonb, bytea),
    payledger.bolt11_create(bytea, bigint, bytea, text, bytea, bigint, text, timestamptz),
    payledger.check_invariants(),
    payledger.create_merchant_profile(text, text, boolean, jsonb),
    payledger.add_provider(text, text, payledger.provider_kind, text, jsonb, jsonb, text, text, interval, interval, integer, text),
    payledger.set_provider_credentials(uuid, jsonb, text),
    payledger.set_provider_active(uuid, boolean),
    payledger.route_payin_type(text, text),
    payledger.register_settle_hook(text, regprocedure, payledger.payin_state[], integer),
    payledger.define_settle_hook(text, regprocedure, payledger.payin_state[], integer, text),
    payledger.unregister_settle_hook(text),
    payledger.worker_claim(integer, timestamptz),
    payledger.provider_call(jsonb),
    payledger.worker_apply(jsonb),
    payledger.worker_provider_health(jsonb),
    payledger.expire_invoices(integer),
    payledger.housekeeping_plan(integer),
    payledger.housekeeping_step(text, integer),
    payledger.worker_note_tick(jsonb, integer),
    payledger.announce_events(),
    payledger.invoice_apply(uuid, jsonb),
    payledger.retry_hooks(integer),
    payledger.renew_due_subscriptions(integer),
    payledger.credits_configure(text, integer, interval),
    payledger.register_credit_metric(text, text, text),
    payledger.set_credit_price_tiers(text, jsonb),
    payledger.define_credit_plan(text, jsonb),
    payledger.create_gift_code(text, numeric, text, timestamptz, interval, integer, integer, integer),
    payledger.define_credit_package(text, numeric, text, bigint, text, interval, interval, integer),
    payledger.expire_credits(integer),
    payledger.meter_org(text, boolean),
    payledger.run_metering(integer, text, integer, integer),
    payledger.metering_due(),
    payledger.seal_ledger(integer),
    payledger.ledger_head(),
    payledger.verify_ledger(),
    payledger.metering_done(),
    payledger.set_credit_threshold(text, text, numeric, boolean),
    payledger.credit_check_expiring(integer)
TO payledger_admin;
GRANT EXECUTE ON PROCEDURE payledger.run_tick(integer) TO payledger_admin;
GRANT EXECUTE ON PROCEDURE payledger.meter_all(integer, integer, integer, integer, integer) TO payledger_admin;

-- payledger pay-ins and pay-outs: one action paid by several methods, its
-- earnings declared up front and credited only when it is PAID.
--
-- The pay-in row is the state machine. Its money moves through ledger journals,
-- written by the state trigger for any UPDATE of the state (not only through
-- the API): custodial legs are debited into the payer's escrow account at
-- creation, paid out at PAID, and returned at FAILED or CANCELLED.

CREATE TYPE payledger.payin_state AS ENUM (
    'PENDING_INVOICE_CREATION', 'PENDING_INVOICE_WRAP', 'PENDING_WITHDRAWAL', 'PENDING', 'PENDING_HELD', 'HELD',
    'PAID', 'FAILED', 'FORWARDING', 'FORWARDED', 'FAILED_FORWARD', 'CANCELLED');

CREATE TYPE payledger.payin_failure_reason AS ENUM (
    'INVOICE_CREATION_FAILED', 'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_FEE',
    'INVOICE_WRAPPING_FAILED_HIGH_PREDICTED_EXPIRY', 'INVOICE_WRAPPING_FAILED_UNKNOWN',
    'INVOICE_FORWARDING_CLTV_DELTA_TOO_LOW', 'INVOICE_FORWARDING_FAILED', 'HELD_INVOICE_UNEXPECTED_ERROR',
    'HELD_INVOICE_SETTLED_TOO_SLOW', 'WITHDRAWAL_FAILED', 'USER_CANCELLED', 'SYSTEM_CANCELLED', 'INVOICE_EXPIRED',
    'EXECUTION_FAILED', 'UNKNOWN_FAILURE');

-- Escrow accounts are the pay-in module's: only its transitions move them.
INSERT INTO payledger.account_kinds (kind, description, builtin, module) VALUES
    ('payin_escrow', 'custodial money of a payer''s pending pay-ins', true, 'payin');

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
    ('HELD', 'FORWARDING', NULL),
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
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- a p2p pay-in whose receiver has no wallet left to pay into: retried
    -- with the receiver's share credited to their balance ('credits', as
    -- Stacker News does), or not at all ('none': types paid only p2p)
    p2p_fallback   text NOT NULL DEFAULT 'credits' CHECK (p2p_fallback IN ('credits', 'none'))
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
CREATE FUNCTION payledger_internal.payin_row_violation(p payledger.payins)
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
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER payouts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payouts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER payin_refunds_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payin_refunds
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER payin_history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.payin_history
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER payins_no_delete BEFORE DELETE OR TRUNCATE ON payledger.payins
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();

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

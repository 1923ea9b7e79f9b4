-- payledger ledger core: assets, accounts, journals, entries, holds.
--
-- Amounts are bigint counts of an asset's minor unit (msat, cent, 1e-6 credit).
-- Entries and journals are append-only; balances on the account row are kept
-- equal to the sum of the account's entries by the engine and checked by the
-- statement trigger on entries and by payledger.check_invariants().

CREATE TABLE payledger.assets (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{0,31}$'),
    -- number of decimal places of the minor unit: msat in sat = 3, usd cents = 2
    scale       smallint NOT NULL CHECK (scale BETWEEN 0 AND 18),
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.account_kinds (
    kind        text PRIMARY KEY CHECK (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    description text NOT NULL,
    builtin     boolean NOT NULL DEFAULT false
);

INSERT INTO payledger.account_kinds (kind, description, builtin) VALUES
    ('user',              'a customer''s spendable balance', true),
    ('system',            'an operator-owned account (treasury, float)', true),
    ('provider_clearing', 'money in flight at a payment provider', true),
    ('revenue',           'income of the operator or a merchant', true),
    ('rewards_pool',      'a pool paid out to users later', true),
    ('fees',              'fees collected or paid', true),
    ('credit_grant',      'a lot of prepaid credits', true),
    ('external',          'the outside world: the source of deposits and sink of withdrawals', true),
    ('suspense',          'money whose destination is not yet known', true);

CREATE TABLE payledger.accounts (
    id              uuid PRIMARY KEY,
    -- the application's owner key (a user or organisation id: uuid or bigint as text)
    owner_id        text NOT NULL CHECK (owner_id <> ''),
    asset           text NOT NULL REFERENCES payledger.assets (code),
    kind            text NOT NULL REFERENCES payledger.account_kinds (kind),
    name            text NOT NULL DEFAULT 'main' CHECK (name <> ''),
    allow_negative  boolean NOT NULL DEFAULT false,
    -- with allow_negative: how far below zero the balance may go (NULL = unbounded)
    overdraft_limit bigint CHECK (overdraft_limit >= 0),
    balance         bigint NOT NULL DEFAULT 0,
    pending_debits  bigint NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
    -- sequence number of the account's last entry
    entry_count     bigint NOT NULL DEFAULT 0 CHECK (entry_count >= 0),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    UNIQUE (owner_id, asset, kind, name),
    CONSTRAINT accounts_overdraft_needs_negative CHECK (overdraft_limit IS NULL OR allow_negative),
    -- backstop for the engine's insufficient-funds check
    CONSTRAINT accounts_floor CHECK (
        balance - pending_debits >= 0
        OR (allow_negative AND (overdraft_limit IS NULL OR balance - pending_debits >= -overdraft_limit)))
);
CREATE INDEX accounts_owner_idx ON payledger.accounts (owner_id);

CREATE TABLE payledger.journals (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL DEFAULT 'transfer',
    idempotency_key text UNIQUE,
    -- sha256 of the canonical request, to tell a replay from a conflicting reuse of the key
    request_hash    bytea,
    hold_id         uuid,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    effective_at    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL))
);

CREATE TABLE payledger.entries (
    account_id    uuid NOT NULL,
    seq           bigint NOT NULL CHECK (seq > 0),
    journal_id    uuid NOT NULL,
    owner_id      text NOT NULL,
    asset         text NOT NULL,
    amount        bigint NOT NULL CHECK (amount <> 0),
    balance_after bigint NOT NULL,
    effective_at  timestamptz NOT NULL,
    PRIMARY KEY (account_id, seq)
);
CREATE INDEX entries_journal_idx ON payledger.entries (journal_id);
CREATE INDEX entries_effective_idx ON payledger.entries (account_id, effective_at) INCLUDE (amount);

CREATE TABLE payledger.holds (
    id              uuid PRIMARY KEY,
    owner_id        text NOT NULL,
    debit_account   uuid NOT NULL REFERENCES payledger.accounts (id),
    credit_account  uuid NOT NULL REFERENCES payledger.accounts (id),
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'posted', 'voided', 'expired')),
    posted_amount   bigint,
    expires_at      timestamptz,
    idempotency_key text UNIQUE,
    request_hash    bytea,
    journal_id      uuid REFERENCES payledger.journals (id),
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CHECK (debit_account <> credit_account),
    CHECK ((status = 'posted') = (journal_id IS NOT NULL)),
    CHECK ((status = 'posted') = (posted_amount IS NOT NULL)),
    CHECK (posted_amount IS NULL OR posted_amount BETWEEN 0 AND amount),
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL))
);
CREATE INDEX holds_due_idx ON payledger.holds (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX holds_debit_idx ON payledger.holds (debit_account) WHERE status = 'pending';
CREATE INDEX holds_credit_idx ON payledger.holds (credit_account) WHERE status = 'pending';

-- Append-only tables: history is corrected by new journals, never by edits.
CREATE FUNCTION payledger.reject_mutation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'payledger.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PL015',
              HINT = 'Correct history with a new journal (for example a reversal), never by editing it.';
END;
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.entries
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER journals_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.journals
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
-- Accounts are closed, never deleted: their entries must keep pointing at them.
CREATE TRIGGER accounts_no_delete BEFORE DELETE OR TRUNCATE ON payledger.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();
CREATE TRIGGER holds_no_delete BEFORE DELETE OR TRUNCATE ON payledger.holds
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.reject_mutation();

-- Database-level guard on every INSERT into entries, whoever writes it: the rows
-- of one statement balance per journal and asset, match their account's asset
-- and owner, and leave each account's balance and entry count equal to its last
-- entry. (The engine writes all postings of a journal in one statement, after
-- updating the accounts.)
CREATE FUNCTION payledger.entries_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.journal_id, n.asset, sum(n.amount) AS total INTO bad
      FROM new_entries n GROUP BY n.journal_id, n.asset HAVING sum(n.amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance: its % postings sum to %', bad.journal_id, bad.asset, bad.total
            USING ERRCODE = 'PL007';
    END IF;
    SELECT n.account_id, n.seq INTO bad
      FROM new_entries n
      LEFT JOIN payledger.accounts a ON a.id = n.account_id
     WHERE a.id IS NULL OR a.asset <> n.asset OR a.owner_id <> n.owner_id
        OR (n.seq = a.entry_count AND n.balance_after <> a.balance)
        OR n.seq > a.entry_count
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'entry %/% does not match its account (unknown account, asset, owner or balance)', bad.account_id, bad.seq
            USING ERRCODE = 'PL016';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER entries_guard AFTER INSERT ON payledger.entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION payledger.entries_guard();

-- Tables are read through functions and the owner-filtered views only.
ALTER TABLE payledger.assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.account_kinds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.journals ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.holds ENABLE ROW LEVEL SECURITY;

-- pg_dump keeps the rows of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('payledger.assets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.account_kinds', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('payledger.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.journals', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.entries', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.holds', '');

-- payledger ledger core: assets, accounts, journals, entries, holds.
--
-- Amounts are bigint counts of an asset's minor unit (msat, cent, 1e-6 credit).
-- Entries and journals are append-only; balances on the account row are kept
-- equal to the sum of the account's entries by the engine and checked by the
-- statement trigger on entries and by payledger.check_invariants().

-- The API is the payledger schema; what its functions use inside is in
-- payledger_internal, which no role but the extension's owner may use.
CREATE SCHEMA payledger_internal;

-- The roles, first, so that each module grants its API next to its
-- definition (the grants that follow from the schemas are in
-- src/security.sql, applied last). Roles are cluster-wide, so they may
-- already exist. See docs/security.md.
--   payledger_admin    operators: the whole API, every table
--   payledger_app      the application backend (Supabase: service_role)
--   payledger_enduser  end users (Supabase: authenticated): their own rows, through views
--   payledger_identity logins trusted to say which end user a session serves
--                      (Supabase: authenticator); grants no privilege
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['payledger_admin', 'payledger_app', 'payledger_enduser', 'payledger_identity'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END;
$$;

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
    builtin     boolean NOT NULL DEFAULT false,
    -- the module that owns every account of this kind (NULL: open to anyone);
    -- the generic API neither opens nor moves such accounts (PL034)
    module      text
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
    owner_id        text NOT NULL,
    asset           text NOT NULL REFERENCES payledger.assets (code),
    kind            text NOT NULL REFERENCES payledger.account_kinds (kind),
    name            text NOT NULL DEFAULT 'main',
    allow_negative  boolean NOT NULL DEFAULT false,
    -- with allow_negative: how far below zero the balance may go (NULL = unbounded)
    overdraft_limit bigint,
    balance         bigint NOT NULL DEFAULT 0,
    pending_debits  bigint NOT NULL DEFAULT 0,
    -- sequence number of the account's last entry
    entry_count     bigint NOT NULL DEFAULT 0,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    -- A hot account (one that many sessions credit at once) is split into
    -- shards: extra rows that only receive, so credits do not queue on one row
    -- lock. The account's balance is its own row plus its shards.
    shards          smallint NOT NULL DEFAULT 1,
    parent_id       uuid,  -- checked by the definition trigger (a self-reference would trouble pg_dump)
    -- the latest effective_at among the row's entries (continues entries.effective_max)
    effective_max   timestamptz,
    -- The lowest balance - pending_debits the row may reach, derived from the
    -- limits by payledger_internal.min_available() (checked by the definition trigger).
    -- A sharded account's own row has none: its floor applies to the total.
    min_available   bigint NOT NULL DEFAULT 0,
    -- the module that owns the account (its kind's module when opened): only
    -- that module's functions move it; the generic API refuses it (PL034)
    managed_by      text,
    UNIQUE (owner_id, asset, kind, name)
    -- No CHECK: PostgreSQL compiles a table's CHECKs again for every statement
    -- that writes it, so the rules live in triggers: the balance floor (which
    -- backs up the engine's insufficient-funds check) in src/ledger/guard.rs,
    -- the rules on columns the engine never writes below.
);
CREATE INDEX accounts_owner_idx ON payledger.accounts (owner_id);

-- The floor of an account row's available balance, from its limits.
CREATE FUNCTION payledger_internal.min_available(allow_negative boolean, overdraft_limit bigint, shards smallint)
RETURNS bigint LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN shards > 1 OR (allow_negative AND overdraft_limit IS NULL) THEN -9223372036854775808
                WHEN allow_negative THEN -overdraft_limit
                ELSE 0 END;
$$;
CREATE INDEX accounts_parent_idx ON payledger.accounts (parent_id) WHERE parent_id IS NOT NULL;

-- Rules on an account's definition; runs only when those columns are written.
-- AFTER, so that a restore's COPY may load a shard before its account.
CREATE FUNCTION payledger_internal.accounts_definition_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.owner_id = '' OR NEW.name = '' THEN
        RAISE EXCEPTION 'owner_id and name must not be empty' USING ERRCODE = '23514';
    END IF;
    IF NEW.overdraft_limit IS NOT NULL AND (NEW.overdraft_limit < 0 OR NOT NEW.allow_negative) THEN
        RAISE EXCEPTION 'overdraft_limit must be >= 0 and needs allow_negative' USING ERRCODE = '23514';
    END IF;
    IF NEW.shards NOT BETWEEN 1 AND 256 OR (NEW.parent_id IS NOT NULL AND (NEW.shards <> 1 OR NEW.allow_negative)) THEN
        RAISE EXCEPTION 'shards must be between 1 and 256; a shard has none and may not go negative'
            USING ERRCODE = '23514';
    END IF;
    IF NEW.min_available <> payledger_internal.min_available(NEW.allow_negative, NEW.overdraft_limit, NEW.shards) THEN
        RAISE EXCEPTION 'min_available must be what allow_negative, overdraft_limit and shards make it'
            USING ERRCODE = '23514';
    END IF;
    IF NEW.parent_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM payledger.accounts p
         WHERE p.id = NEW.parent_id AND p.parent_id IS NULL AND p.owner_id = NEW.owner_id AND p.asset = NEW.asset
           AND p.managed_by IS NOT DISTINCT FROM NEW.managed_by) THEN
        RAISE EXCEPTION 'parent account % does not exist or does not match', NEW.parent_id USING ERRCODE = '23503';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER accounts_definition
    AFTER INSERT OR UPDATE OF owner_id, name, allow_negative, overdraft_limit, shards, parent_id, min_available, managed_by
    ON payledger.accounts FOR EACH ROW EXECUTE FUNCTION payledger_internal.accounts_definition_guard();

CREATE TABLE payledger.journals (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL DEFAULT 'transfer',
    idempotency_key text,
    -- sha256 of the canonical request, to tell a replay from a conflicting reuse of the key
    request_hash    bytea,
    hold_id         uuid,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    effective_at    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- where the journal's entries are: (entry_accounts[i], entry_seqs[i]) is the
    -- key of its i-th entry. Cheaper than an index on entries.journal_id.
    entry_accounts  uuid[] NOT NULL DEFAULT '{}',
    entry_seqs      bigint[] NOT NULL DEFAULT '{}'
);

-- Partial: journals without a key (most of them) cost no entry in this index.
CREATE UNIQUE INDEX journals_idempotency_key ON payledger.journals (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE payledger.entries (
    account_id    uuid NOT NULL,
    seq           bigint NOT NULL,
    journal_id    uuid NOT NULL,
    owner_id      text NOT NULL,
    asset         text NOT NULL,
    amount        bigint NOT NULL,
    balance_after bigint NOT NULL,
    effective_at  timestamptz NOT NULL,
    -- the running maximum of effective_at along the account row's entries: it
    -- only grows with seq, so balance_at() can stop scanning back at the first
    -- entry where it is not after the asked time (no index on effective_at).
    effective_max timestamptz NOT NULL,
    PRIMARY KEY (account_id, seq)
);

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
    idempotency_key text,
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
CREATE UNIQUE INDEX holds_idempotency_key ON payledger.holds (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX holds_due_idx ON payledger.holds (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX holds_debit_idx ON payledger.holds (debit_account) WHERE status = 'pending';
CREATE INDEX holds_credit_idx ON payledger.holds (credit_account) WHERE status = 'pending';

-- Append-only tables: history is corrected by new journals, never by edits.
CREATE FUNCTION payledger_internal.reject_mutation() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'payledger.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'PL015',
              HINT = 'Correct history with a new journal (for example a reversal), never by editing it.';
END;
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.entries
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER journals_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.journals
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
-- Accounts are closed, never deleted: their entries must keep pointing at them.
CREATE TRIGGER accounts_no_delete BEFORE DELETE OR TRUNCATE ON payledger.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER holds_no_delete BEFORE DELETE OR TRUNCATE ON payledger.holds
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();

-- Organisations and their members: an end user acts for an organisation
-- they belong to (payledger.current_owner_id), with a role.
CREATE TABLE payledger.org_members (
    org_id   text NOT NULL,
    user_id  text NOT NULL,
    role     text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'read_only')),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_members_user_idx ON payledger.org_members (user_id);

-- (The statement trigger that checks that each INSERT into entries balances
-- is src/ledger/guard.rs.)

-- Tables are read through functions and the owner-filtered views only.
ALTER TABLE payledger.assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.account_kinds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.journals ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.holds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.org_members ENABLE ROW LEVEL SECURITY;

-- pg_dump keeps the rows of extension tables only when they are registered.
SELECT pg_catalog.pg_extension_config_dump('payledger.assets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.account_kinds', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('payledger.accounts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.journals', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.entries', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.holds', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.org_members', '');

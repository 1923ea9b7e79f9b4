-- payledger ledger API: SECURITY DEFINER functions with a pinned search_path.
-- Every failure raises a specific SQLSTATE (docs/errors.md) and changes nothing.



-- The engine prepares its statements once per backend with a generic plan
-- (src/ledger/prepared.rs), so no function needs to SET plan_cache_mode.

-- Apply many transfers and hold operations in one call; each item succeeds or
-- fails on its own; one row per item, in input order.
CREATE FUNCTION payledger.transfer_batch(items jsonb)
RETURNS TABLE (item integer, status text, journal_id uuid, hold_id uuid, sqlstate text, message text, detail text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY SELECT * FROM payledger_internal.engine_batch(items);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.transfer_batch(jsonb) TO payledger_app;

-- Raise an engine failure with its own SQLSTATE (pgrx cannot raise custom codes).
CREATE FUNCTION payledger_internal.raise_failure(code text, message text, detail text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF detail IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
    END IF;
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message, DETAIL = detail;
END;
$$;

-- Run one engine item and raise its failure, if any.
CREATE FUNCTION payledger_internal.apply_one(item jsonb, OUT journal_id uuid, OUT hold_id uuid)
LANGUAGE plpgsql
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO STRICT r FROM payledger_internal.engine_batch(jsonb_build_array(item));
    IF r.status = 'error' THEN
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    journal_id := r.journal_id;
    hold_id := r.hold_id;
END;
$$;

-- A module's money movement: as apply_one, but the item may move the
-- accounts the module manages (accounts.managed_by), which the generic API
-- refuses (PL034). Internal: granted to no one.
CREATE FUNCTION payledger_internal.apply_as(module text, item jsonb, OUT journal_id uuid, OUT hold_id uuid)
LANGUAGE plpgsql
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO STRICT r FROM payledger_internal.engine_batch_as(module, jsonb_build_array(item));
    IF r.status = 'error' THEN
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    journal_id := r.journal_id;
    hold_id := r.hold_id;
END;
$$;

CREATE FUNCTION payledger_internal.require(value anyelement, name text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', name USING ERRCODE = '22004';
    END IF;
END;
$$;

---------------------------------------------------------------------------
-- Assets, account kinds, accounts
---------------------------------------------------------------------------

CREATE FUNCTION payledger.create_asset(code text, scale integer, description text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    existing payledger.assets;
BEGIN
    PERFORM payledger_internal.require(code, 'code');
    PERFORM payledger_internal.require(scale, 'scale');
    IF code !~ '^[a-z][a-z0-9_]{0,31}$' THEN
        RAISE EXCEPTION 'asset code % is not valid', quote_literal(code)
            USING ERRCODE = '22023', HINT = 'Use 1 to 32 lower-case letters, digits or _, starting with a letter.';
    END IF;
    IF scale NOT BETWEEN 0 AND 18 THEN
        RAISE EXCEPTION 'asset scale must be between 0 and 18, got %', scale USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.assets AS a (code, scale, description)
    VALUES (create_asset.code, create_asset.scale, create_asset.description)
    ON CONFLICT ON CONSTRAINT assets_pkey DO NOTHING;
    SELECT * INTO existing FROM payledger.assets a WHERE a.code = create_asset.code;
    IF existing.scale <> create_asset.scale THEN
        RAISE EXCEPTION 'asset % already exists with scale %', code, existing.scale USING ERRCODE = 'PL014';
    END IF;
    RETURN code;
END;
$$;

CREATE FUNCTION payledger.register_account_kind(kind text, description text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(kind, 'kind');
    PERFORM payledger_internal.require(description, 'description');
    IF kind !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'account kind % is not valid', quote_literal(kind) USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.account_kinds AS k (kind, description)
    VALUES (register_account_kind.kind, register_account_kind.description)
    ON CONFLICT ON CONSTRAINT account_kinds_pkey DO NOTHING;
    RETURN kind;
END;
$$;

CREATE FUNCTION payledger.open_account(
    owner_id        text,
    asset           text,
    kind            text DEFAULT 'user',
    name            text DEFAULT 'main',
    allow_negative  boolean DEFAULT false,
    overdraft_limit bigint DEFAULT NULL,
    metadata        jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE sql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.open_account_as(NULL, owner_id, asset, kind, name, allow_negative, overdraft_limit, metadata);
$$;
GRANT EXECUTE ON FUNCTION payledger.open_account(text, text, text, text, boolean, bigint, jsonb) TO payledger_app;

-- Opening, for the generic API (module NULL) and for modules. A kind that a
-- module owns (account_kinds.module) is opened only by that module, and its
-- accounts are managed by it (accounts.managed_by): the generic API neither
-- opens nor moves them (PL034). Internal: granted to no one.
CREATE FUNCTION payledger_internal.open_account_as(
    module          text,
    owner_id        text,
    asset           text,
    kind            text,
    name            text,
    allow_negative  boolean,
    overdraft_limit bigint,
    metadata        jsonb)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts;
    k payledger.account_kinds;
BEGIN
    PERFORM payledger_internal.require(owner_id, 'owner_id');
    PERFORM payledger_internal.require(asset, 'asset');
    PERFORM payledger_internal.require(kind, 'kind');
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(allow_negative, 'allow_negative');
    IF owner_id = '' OR name = '' OR strpos(name, '#') > 0 THEN
        RAISE EXCEPTION 'owner_id and name must not be empty, and a name has no #' USING ERRCODE = '22023',
            HINT = '# marks the shards of an account.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.assets a WHERE a.code = open_account_as.asset) THEN
        RAISE EXCEPTION 'asset % does not exist', quote_literal(asset) USING ERRCODE = 'PL003';
    END IF;
    SELECT * INTO k FROM payledger.account_kinds x WHERE x.kind = open_account_as.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account kind % does not exist', quote_literal(kind)
            USING ERRCODE = 'PL017', HINT = 'Register it with payledger.register_account_kind().';
    END IF;
    IF k.module IS DISTINCT FROM module AND k.module IS NOT NULL THEN
        RAISE EXCEPTION 'accounts of kind % belong to the % module', kind, k.module
            USING ERRCODE = 'PL034', HINT = 'The module opens them itself, and only its functions move them.';
    END IF;
    IF overdraft_limit IS NOT NULL AND (overdraft_limit < 0 OR NOT allow_negative) THEN
        RAISE EXCEPTION 'overdraft_limit must be >= 0 and needs allow_negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.accounts AS a (id, owner_id, asset, kind, name, allow_negative, overdraft_limit,
                                         min_available, metadata, managed_by)
    VALUES (payledger.new_id(), open_account_as.owner_id, open_account_as.asset, open_account_as.kind,
            open_account_as.name, open_account_as.allow_negative, open_account_as.overdraft_limit,
            payledger_internal.min_available(open_account_as.allow_negative, open_account_as.overdraft_limit, 1::smallint),
            coalesce(open_account_as.metadata, '{}'::jsonb), k.module)
    ON CONFLICT ON CONSTRAINT accounts_owner_id_asset_kind_name_key DO NOTHING;
    SELECT * INTO acc FROM payledger.accounts a
     WHERE a.owner_id = open_account_as.owner_id AND a.asset = open_account_as.asset
       AND a.kind = open_account_as.kind AND a.name = open_account_as.name;
    -- Opening is idempotent; the same key with other settings is a conflict.
    IF acc.allow_negative IS DISTINCT FROM open_account_as.allow_negative
       OR acc.overdraft_limit IS DISTINCT FROM open_account_as.overdraft_limit THEN
        RAISE EXCEPTION 'account %/%/%/% already exists with other limits', owner_id, asset, kind, name
            USING ERRCODE = 'PL014', DETAIL = format('existing account %s', acc.id),
                  HINT = 'Change limits with payledger.set_account_limits().';
    END IF;
    RETURN acc.id;
END;
$$;

CREATE FUNCTION payledger.account_id(owner_id text, asset text, kind text DEFAULT 'user', name text DEFAULT 'main')
RETURNS uuid LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    found_id uuid;
BEGIN
    SELECT a.id INTO found_id FROM payledger.accounts a
     WHERE a.owner_id = account_id.owner_id AND a.asset = account_id.asset
       AND a.kind = account_id.kind AND a.name = account_id.name;
    IF found_id IS NULL THEN
        RAISE EXCEPTION 'no account %/%/%/%', owner_id, asset, kind, name USING ERRCODE = 'PL002';
    END IF;
    RETURN found_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.account_id(text, text, text, text) TO payledger_app;

-- Lock an account row for a management change; unknown ids raise PL002.
CREATE FUNCTION payledger_internal.lock_account(account uuid)
RETURNS payledger.accounts LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts;
BEGIN
    PERFORM payledger_internal.require(account, 'account');
    SELECT * INTO acc FROM payledger.accounts a WHERE a.id = lock_account.account FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', account USING ERRCODE = 'PL002';
    END IF;
    RETURN acc;
END;
$$;

-- A module's account is closed or re-limited by no one but the module (PL034).
CREATE FUNCTION payledger_internal.refuse_managed(acc payledger.accounts)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF acc.managed_by IS NOT NULL THEN
        RAISE EXCEPTION 'account % belongs to the % module', acc.id, acc.managed_by
            USING ERRCODE = 'PL034', HINT = 'Only that module''s functions move or change it.';
    END IF;
END;
$$;

CREATE FUNCTION payledger.close_account(account uuid)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts := payledger_internal.lock_account(account);
    total bigint;
BEGIN
    IF acc.closed_at IS NOT NULL THEN
        RAISE EXCEPTION 'account % is already closed', account USING ERRCODE = 'PL005';
    END IF;
    PERFORM payledger_internal.refuse_managed(acc);
    IF acc.parent_id IS NOT NULL THEN
        RAISE EXCEPTION 'account % is a shard: close %', account, acc.parent_id USING ERRCODE = '22023';
    END IF;
    -- lock the shards too, so that no credit lands between the check and the close
    SELECT acc.balance + coalesce(sum(s.balance), 0) INTO total
      FROM (SELECT a.balance FROM payledger.accounts a WHERE a.parent_id = acc.id ORDER BY a.id FOR NO KEY UPDATE) s;
    IF total <> 0 OR acc.pending_debits <> 0 THEN
        RAISE EXCEPTION 'account % is not empty', account
            USING ERRCODE = 'PL013',
                  DETAIL = format('balance %s, pending %s', total, acc.pending_debits),
                  HINT = 'Move the balance out and resolve pending holds first.';
    END IF;
    UPDATE payledger.accounts a SET closed_at = now() WHERE a.id = acc.id OR a.parent_id = acc.id;
END;
$$;

CREATE FUNCTION payledger.set_account_limits(account uuid, allow_negative boolean, overdraft_limit bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts := payledger_internal.lock_account(account);
    available bigint := acc.balance + payledger_internal.shard_balance(acc) - acc.pending_debits;
BEGIN
    PERFORM payledger_internal.require(allow_negative, 'allow_negative');
    IF overdraft_limit IS NOT NULL AND (overdraft_limit < 0 OR NOT allow_negative) THEN
        RAISE EXCEPTION 'overdraft_limit must be >= 0 and needs allow_negative' USING ERRCODE = '22023';
    END IF;
    PERFORM payledger_internal.refuse_managed(acc);
    IF available < 0 AND (NOT allow_negative OR available < -overdraft_limit) THEN
        RAISE EXCEPTION 'account % is below the new limit', account
            USING ERRCODE = 'PL006', DETAIL = format('available %s', available);
    END IF;
    UPDATE payledger.accounts a
       SET allow_negative = set_account_limits.allow_negative,
           overdraft_limit = set_account_limits.overdraft_limit,
           min_available = payledger_internal.min_available(set_account_limits.allow_negative,
                                                   set_account_limits.overdraft_limit, a.shards)
     WHERE a.id = set_account_limits.account;
END;
$$;

-- Split an account that many sessions credit at once into n rows (the account
-- and n - 1 shards that only receive). Credits then take any free shard instead
-- of queueing on one row lock; debits and holds use the account's own row and
-- count the shards' money. Only grows; returns the new count.
CREATE FUNCTION payledger.set_account_shards(account uuid, shards integer)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    acc payledger.accounts := payledger_internal.lock_account(account);
BEGIN
    PERFORM payledger_internal.require(shards, 'shards');
    IF acc.parent_id IS NOT NULL THEN
        RAISE EXCEPTION 'account % is itself a shard of %', account, acc.parent_id USING ERRCODE = '22023';
    END IF;
    IF acc.closed_at IS NOT NULL THEN
        RAISE EXCEPTION 'account % is closed', account USING ERRCODE = 'PL005';
    END IF;
    IF shards NOT BETWEEN acc.shards AND 256 THEN
        RAISE EXCEPTION 'shards must be between the current % and 256, got %', acc.shards, shards
            USING ERRCODE = '22023', HINT = 'Shards are never removed.';
    END IF;
    INSERT INTO payledger.accounts (id, owner_id, asset, kind, name, parent_id, metadata, managed_by)
    SELECT payledger.new_id(), acc.owner_id, acc.asset, acc.kind, acc.name || '#' || k, acc.id,
           jsonb_build_object('shard_of', acc.id), acc.managed_by
      FROM generate_series(acc.shards, set_account_shards.shards - 1) AS k;
    UPDATE payledger.accounts a
       SET shards = set_account_shards.shards,
           min_available = payledger_internal.min_available(a.allow_negative, a.overdraft_limit, set_account_shards.shards::smallint)
     WHERE a.id = acc.id;
    RETURN shards;
END;
$$;

---------------------------------------------------------------------------
-- Transfers and holds (through the engine)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.transfer(
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
    journal := payledger_internal.transfer_journal(from_account, to_account, amount, idempotency_key, metadata,
                                          effective_at, kind);
    IF journal IS NULL THEN
        SELECT * INTO r FROM payledger_internal.engine_failure();
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    RETURN journal;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.transfer(uuid, uuid, bigint, text, jsonb, timestamptz, text) TO payledger_app;

CREATE FUNCTION payledger.post_journal(
    postings        jsonb,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    effective_at    timestamptz DEFAULT NULL,
    kind            text DEFAULT 'transfer')
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(postings, 'postings');
    RETURN (payledger_internal.apply_one(jsonb_build_object(
        'postings', postings, 'idempotency_key', idempotency_key, 'metadata', metadata,
        'effective_at', effective_at, 'kind', kind))).journal_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.post_journal(jsonb, text, jsonb, timestamptz, text) TO payledger_app;

CREATE FUNCTION payledger.create_hold(
    from_account    uuid,
    to_account      uuid,
    amount          bigint,
    timeout         interval DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF from_account IS NULL OR to_account IS NULL OR amount IS NULL THEN
        RAISE EXCEPTION 'from_account, to_account and amount must not be null' USING ERRCODE = '22004';
    END IF;
    IF timeout IS NOT NULL AND timeout <= interval '0' THEN
        RAISE EXCEPTION 'timeout must be positive, got %', timeout USING ERRCODE = '22023';
    END IF;
    RETURN (payledger_internal.apply_one(jsonb_build_object(
        'op', 'hold', 'from', from_account, 'to', to_account, 'amount', amount,
        'timeout_ms', ceil(extract(epoch FROM timeout) * 1000)::bigint,
        'idempotency_key', idempotency_key, 'metadata', metadata))).hold_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.create_hold(uuid, uuid, bigint, interval, text, jsonb) TO payledger_app;

CREATE FUNCTION payledger.post_hold(
    hold            uuid,
    amount          bigint DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    effective_at    timestamptz DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(hold, 'hold');
    RETURN (payledger_internal.apply_one(jsonb_build_object(
        'op', 'post_hold', 'hold', hold, 'amount', amount,
        'idempotency_key', idempotency_key, 'metadata', metadata, 'effective_at', effective_at))).journal_id;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.post_hold(uuid, bigint, text, jsonb, timestamptz) TO payledger_app;

CREATE FUNCTION payledger.void_hold(hold uuid)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(hold, 'hold');
    PERFORM payledger_internal.apply_one(jsonb_build_object('op', 'void_hold', 'hold', hold));
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.void_hold(uuid) TO payledger_app;

-- Release pending holds past their expiry; returns how many were released.
-- Holds locked by another session are skipped (they are being posted or voided).
CREATE FUNCTION payledger.expire_holds(max_holds integer DEFAULT 1000)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    items jsonb;
    released integer;
BEGIN
    IF max_holds IS NULL OR max_holds < 1 THEN
        RAISE EXCEPTION 'max_holds must be a positive integer' USING ERRCODE = '22023';
    END IF;
    SELECT jsonb_agg(jsonb_build_object('op', 'expire_hold', 'hold', s.id) ORDER BY s.id) INTO items
      FROM (SELECT h.id FROM payledger.holds h
             WHERE h.status = 'pending' AND h.expires_at <= clock_timestamp()
             ORDER BY h.expires_at LIMIT max_holds
               FOR UPDATE SKIP LOCKED) s;
    IF items IS NULL THEN
        RETURN 0;
    END IF;
    SELECT count(*) FILTER (WHERE r.status = 'ok') INTO released FROM payledger_internal.engine_batch(items) r;
    RETURN released;
END;
$$;

SELECT payledger_internal.register_housekeeping_step('ledger', 'holds_expired', 20, 'payledger.expire_holds(integer)',
                                            max_calls => 1);

---------------------------------------------------------------------------
-- Balances
---------------------------------------------------------------------------

-- What an account's shards hold (0 for an unsharded account).
CREATE FUNCTION payledger_internal.shard_balance(acc payledger.accounts)
RETURNS bigint LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN acc.shards > 1
                THEN (SELECT coalesce(sum(s.balance), 0)::bigint FROM payledger.accounts s WHERE s.parent_id = acc.id)
                ELSE 0 END;
$$;

CREATE FUNCTION payledger.balance(account uuid)
RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    b bigint;
BEGIN
    SELECT a.balance + payledger_internal.shard_balance(a) INTO b FROM payledger.accounts a WHERE a.id = balance.account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', account USING ERRCODE = 'PL002';
    END IF;
    RETURN b;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.balance(uuid) TO payledger_app;

CREATE FUNCTION payledger.available_balance(account uuid)
RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    b bigint;
BEGIN
    SELECT a.balance + payledger_internal.shard_balance(a) - a.pending_debits INTO b
      FROM payledger.accounts a WHERE a.id = available_balance.account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', account USING ERRCODE = 'PL002';
    END IF;
    RETURN b;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.available_balance(uuid) TO payledger_app;

-- Balance by business time: the sum of the entries effective at or before `at`,
-- back-dated ones included. Walks each row's entries back from the newest and
-- stops where the running maximum of effective_at is no longer after `at`, so
-- the cost is the number of entries after `at`.
CREATE FUNCTION payledger.balance_at(account uuid, at timestamptz)
RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    total bigint := 0;
    later bigint;
    r record;
BEGIN
    PERFORM payledger_internal.require(at, 'at');
    IF NOT EXISTS (SELECT 1 FROM payledger.accounts a WHERE a.id = balance_at.account) THEN
        RAISE EXCEPTION 'account % does not exist', account USING ERRCODE = 'PL002';
    END IF;
    -- the account's own row and its shards, each with its own entry chain
    FOR r IN SELECT a.id, a.balance, a.entry_count FROM payledger.accounts a
              WHERE a.id = balance_at.account OR a.parent_id = balance_at.account LOOP
        SELECT coalesce(sum(e.amount) FILTER (WHERE e.effective_at > balance_at.at), 0) INTO later
          FROM payledger.entries e
         WHERE e.account_id = r.id
           AND e.seq > coalesce((SELECT max(x.seq) FROM payledger.entries x
                                  WHERE x.account_id = r.id AND x.effective_max <= balance_at.at), 0);
        total := total + r.balance - later;
    END LOOP;
    RETURN total;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.balance_at(uuid, timestamptz) TO payledger_app;

-- A journal's entries in posting order, found through the keys the journal
-- stores (entries have no index on journal_id).
CREATE FUNCTION payledger.journal_entries(journal uuid)
RETURNS TABLE (posting integer, account_id uuid, seq bigint, owner_id text, asset text, amount bigint,
               balance_after bigint, effective_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(journal, 'journal');
    IF NOT EXISTS (SELECT 1 FROM payledger.journals j WHERE j.id = journal_entries.journal) THEN
        RAISE EXCEPTION 'journal % does not exist', journal USING ERRCODE = 'PL018';
    END IF;
    RETURN QUERY
    SELECT x.n::integer, e.account_id, e.seq, e.owner_id, e.asset, e.amount, e.balance_after, e.effective_at
      FROM payledger.journals j,
           unnest(j.entry_accounts, j.entry_seqs) WITH ORDINALITY AS x(a, s, n)
      JOIN payledger.entries e ON e.account_id = x.a AND e.seq = x.s
     WHERE j.id = journal_entries.journal
     ORDER BY x.n;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.journal_entries(uuid) TO payledger_app;

---------------------------------------------------------------------------
-- Amount formatting
---------------------------------------------------------------------------

-- Minor units as a decimal string in the asset's display unit: 1234 msat -> '1.234'.
CREATE FUNCTION payledger.format_amount(asset text, amount bigint)
RETURNS text LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s smallint;
BEGIN
    SELECT a.scale INTO s FROM payledger.assets a WHERE a.code = format_amount.asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'asset % does not exist', quote_literal(asset) USING ERRCODE = 'PL003';
    END IF;
    RETURN round(amount::numeric / (10::numeric ^ s), s)::text;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.format_amount(text, bigint) TO payledger_enduser, payledger_app;

-- A decimal amount in display units to exact minor units; more decimals than
-- the asset has is an error, never a silent rounding.
CREATE FUNCTION payledger.parse_amount(asset text, value numeric)
RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s smallint;
    minor numeric;
BEGIN
    PERFORM payledger_internal.require(value, 'value');
    SELECT a.scale INTO s FROM payledger.assets a WHERE a.code = parse_amount.asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'asset % does not exist', quote_literal(asset) USING ERRCODE = 'PL003';
    END IF;
    minor := value * (10::numeric ^ s);
    IF minor <> trunc(minor) THEN
        RAISE EXCEPTION '% has more than % decimal places for asset %', value, s, asset USING ERRCODE = 'PL001';
    END IF;
    IF minor NOT BETWEEN -9223372036854775807 AND 9223372036854775807 THEN
        RAISE EXCEPTION '% is out of range for asset %', value, asset USING ERRCODE = 'PL001';
    END IF;
    RETURN minor::bigint;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.parse_amount(text, numeric) TO payledger_enduser, payledger_app;

---------------------------------------------------------------------------
-- Invariants
---------------------------------------------------------------------------

-- The ledger's part of payledger.check_invariants() (src/invariants.sql).
CREATE FUNCTION payledger_internal.ledger_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- money is neither created nor destroyed, per asset
    SELECT 'conservation', e.asset, format('entries of %s sum to %s', e.asset, sum(e.amount))
      FROM payledger.entries e GROUP BY e.asset HAVING sum(e.amount) <> 0
    UNION ALL
    SELECT 'conservation', a.asset, format('balances of %s sum to %s', a.asset, sum(a.balance))
      FROM payledger.accounts a GROUP BY a.asset HAVING sum(a.balance) <> 0
    UNION ALL
    SELECT 'journal_balanced', e.journal_id::text, format('%s postings sum to %s', e.asset, sum(e.amount))
      FROM payledger.entries e GROUP BY e.journal_id, e.asset HAVING sum(e.amount) <> 0
    UNION ALL
    SELECT 'balance_equals_entries', a.id::text,
           format('balance %s vs entries %s; entry_count %s vs %s entries (last seq %s)',
                  a.balance, coalesce(s.total, 0), a.entry_count, coalesce(s.n, 0), coalesce(s.last_seq, 0))
      FROM payledger.accounts a
      LEFT JOIN (SELECT e.account_id, sum(e.amount) AS total, count(*) AS n, max(e.seq) AS last_seq
                   FROM payledger.entries e GROUP BY e.account_id) s ON s.account_id = a.id
     WHERE a.balance <> coalesce(s.total, 0) OR a.entry_count <> coalesce(s.n, 0)
        OR a.entry_count <> coalesce(s.last_seq, 0)
    UNION ALL
    SELECT 'balance_after_chain', format('%s/%s', c.account_id, c.seq),
           CASE WHEN c.effective_max <> c.running_max THEN 'effective_max is not the running maximum of effective_at'
                ELSE format('previous %s (seq %s) + amount %s <> balance_after %s',
                            c.prev, c.prev_seq, c.amount, c.balance_after) END
      FROM (SELECT e.account_id, e.seq, e.amount, e.balance_after, e.effective_max,
                   lag(e.balance_after, 1, 0::bigint) OVER w AS prev,
                   lag(e.seq, 1, 0::bigint) OVER w AS prev_seq,
                   max(e.effective_at) OVER w AS running_max
              FROM payledger.entries e WINDOW w AS (PARTITION BY e.account_id ORDER BY e.seq)) c
     WHERE c.prev + c.amount <> c.balance_after OR c.seq <> c.prev_seq + 1 OR c.effective_max <> c.running_max
    UNION ALL
    SELECT 'account_effective_max', a.id::text, 'effective_max is not the latest effective_at of its entries'
      FROM payledger.accounts a
      LEFT JOIN (SELECT e.account_id, max(e.effective_at) AS e FROM payledger.entries e GROUP BY e.account_id) m
        ON m.account_id = a.id
     WHERE a.effective_max IS DISTINCT FROM m.e
    UNION ALL
    SELECT 'journal_locates_entries', j.id::text,
           format('the journal lists %s entries, %s carry its id', cardinality(j.entry_accounts), coalesce(n.n, 0))
      FROM payledger.journals j
      LEFT JOIN (SELECT e.journal_id, count(*) AS n FROM payledger.entries e GROUP BY e.journal_id) n ON n.journal_id = j.id
     WHERE cardinality(j.entry_accounts) <> coalesce(n.n, 0)
        OR cardinality(j.entry_seqs) <> cardinality(j.entry_accounts)
        OR EXISTS (SELECT 1 FROM unnest(j.entry_accounts, j.entry_seqs) AS x(a, s)
                    WHERE NOT EXISTS (SELECT 1 FROM payledger.entries e
                                       WHERE e.account_id = x.a AND e.seq = x.s AND e.journal_id = j.id))
    UNION ALL
    SELECT 'entry_matches_account', format('%s/%s', e.account_id, e.seq), 'unknown account, or asset/owner differs'
      FROM payledger.entries e LEFT JOIN payledger.accounts a ON a.id = e.account_id
     WHERE a.id IS NULL OR a.asset <> e.asset OR a.owner_id <> e.owner_id
    UNION ALL
    SELECT 'journal_key_has_hash', j.id::text, 'idempotency key and request hash must come together'
      FROM payledger.journals j WHERE (j.idempotency_key IS NULL) <> (j.request_hash IS NULL)
    UNION ALL
    SELECT 'entry_has_journal', format('%s/%s', e.account_id, e.seq), format('journal %s does not exist', e.journal_id)
      FROM payledger.entries e WHERE NOT EXISTS (SELECT 1 FROM payledger.journals j WHERE j.id = e.journal_id)
    UNION ALL
    SELECT 'floor', t.id::text, format('available %s (balance %s, pending %s) below the allowed floor',
                                       t.available, t.total, t.pending_debits)
      FROM (SELECT a.id, a.allow_negative, a.overdraft_limit, a.pending_debits,
                   a.balance + payledger_internal.shard_balance(a) AS total,
                   a.balance + payledger_internal.shard_balance(a) - a.pending_debits AS available
              FROM payledger.accounts a WHERE a.parent_id IS NULL) t
     WHERE t.available < 0 AND NOT (t.allow_negative AND (t.overdraft_limit IS NULL OR t.available >= -t.overdraft_limit))
    UNION ALL
    SELECT 'shard_matches_account', s.id::text, format('shard of %s', s.parent_id)
      FROM payledger.accounts s LEFT JOIN payledger.accounts p ON p.id = s.parent_id
     WHERE s.parent_id IS NOT NULL
       AND (p.id IS NULL OR p.parent_id IS NOT NULL OR p.shards < 2 OR p.owner_id <> s.owner_id
            OR p.asset <> s.asset OR p.kind <> s.kind OR s.allow_negative OR s.pending_debits <> 0
            OR s.balance < 0 OR (p.closed_at IS NULL) <> (s.closed_at IS NULL))
    UNION ALL
    SELECT 'shard_only_receives', format('%s/%s', e.account_id, e.seq), 'a shard was debited'
      FROM payledger.entries e JOIN payledger.accounts s ON s.id = e.account_id
     WHERE s.parent_id IS NOT NULL AND e.amount < 0
    UNION ALL
    SELECT 'holds_pending', a.id::text, format('pending_debits %s, pending holds sum to %s', a.pending_debits, coalesce(h.total, 0))
      FROM payledger.accounts a
      LEFT JOIN (SELECT h.debit_account, sum(h.amount) AS total FROM payledger.holds h
                  WHERE h.status = 'pending' GROUP BY h.debit_account) h ON h.debit_account = a.id
     WHERE a.pending_debits <> coalesce(h.total, 0)
    UNION ALL
    SELECT 'hold_matches_accounts', h.id::text, 'asset or owner differs from its accounts'
      FROM payledger.holds h
      JOIN payledger.accounts d ON d.id = h.debit_account
      JOIN payledger.accounts c ON c.id = h.credit_account
     WHERE d.asset <> h.asset OR c.asset <> h.asset OR d.owner_id <> h.owner_id
    UNION ALL
    SELECT 'hold_posted', h.id::text, format('journal %s does not move %s from %s to %s', h.journal_id, h.posted_amount, h.debit_account, h.credit_account)
      FROM payledger.holds h
     WHERE h.status = 'posted'
       AND (SELECT count(*) FROM payledger.journals j, unnest(j.entry_accounts, j.entry_seqs) AS x(a, s)
              JOIN payledger.entries e ON e.account_id = x.a AND e.seq = x.s
             WHERE j.id = h.journal_id
               AND ((e.account_id = h.debit_account AND e.amount = -h.posted_amount)
                 OR (e.account_id = h.credit_account AND e.amount = h.posted_amount))) <> 2
    UNION ALL
    SELECT 'closed_is_empty', a.id::text, format('closed with balance %s, pending %s', a.balance, a.pending_debits)
      FROM payledger.accounts a
     WHERE a.parent_id IS NULL AND a.closed_at IS NOT NULL
       AND (a.balance + payledger_internal.shard_balance(a) <> 0 OR a.pending_debits <> 0)
$$;

---------------------------------------------------------------------------
-- End-user views (filtered by owner; the tables themselves are not readable)
---------------------------------------------------------------------------

-- The owner key of the current end user. Default: the setting payledger.owner_id,
-- else Supabase's JWT subject (what auth.uid() returns). Replaceable: see docs/security.md.
-- The end user a session serves.
CREATE FUNCTION payledger.current_user_id()
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
GRANT EXECUTE ON FUNCTION payledger.current_user_id() TO payledger_enduser, payledger_app;

-- The organisation the request asks to act for: payledger.org_id, else the
-- request's X-Org-Id header (PostgREST passes headers in request.headers:
-- a per-request choice, as a console switching organisations needs), else
-- the JWT's org_id claim (NULL: none). Membership is checked by the callers.
CREATE FUNCTION payledger_internal.requested_org_id()
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('payledger.org_id', true), ''),
                    nullif(nullif(current_setting('request.headers', true), '')::jsonb ->> 'x-org-id', ''),
                    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'org_id');
$$;

-- Whose data the my_* views show: the organisation the request chose, when
-- the end user is a member of it (checked on every statement: a member
-- removed sees nothing from the next one); nobody when they are not; the
-- end user themselves when no organisation was chosen. (SECURITY DEFINER:
-- it reads the memberships, which end users may not.)
CREATE FUNCTION payledger.current_owner_id()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT CASE WHEN o.org IS NULL THEN u.id
                WHEN EXISTS (SELECT 1 FROM payledger.org_members m WHERE m.org_id = o.org AND m.user_id = u.id)
                THEN o.org END
      FROM (SELECT payledger.current_user_id() AS id) u, (SELECT payledger_internal.requested_org_id() AS org) o;
$$;
GRANT EXECUTE ON FUNCTION payledger.current_owner_id() TO payledger_enduser, payledger_app;

-- The end user's role in the organisation the request chose (NULL: none).
CREATE FUNCTION payledger.current_org_role()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT m.role FROM payledger.org_members m
     WHERE m.org_id = payledger_internal.requested_org_id() AND m.user_id = payledger.current_user_id();
$$;
GRANT EXECUTE ON FUNCTION payledger.current_org_role() TO payledger_enduser, payledger_app;

-- Add a member to an organisation, or change their role (the backend's).
CREATE FUNCTION payledger.add_org_member(org text, user_id text, role text DEFAULT 'member')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.require(user_id, 'user_id');
    PERFORM payledger_internal.require(role, 'role');
    IF role NOT IN ('owner', 'admin', 'member', 'read_only') THEN
        RAISE EXCEPTION 'role must be owner, admin, member or read_only, got %', quote_literal(role) USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.org_members AS m (org_id, user_id, role)
    VALUES (org, add_org_member.user_id, add_org_member.role)
    ON CONFLICT ON CONSTRAINT org_members_pkey DO UPDATE SET role = EXCLUDED.role;
    RETURN role;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.add_org_member(text, text, text) TO payledger_app;

-- Remove a member (the backend's). Returns whether they were one.
CREATE FUNCTION payledger.remove_org_member(org text, user_id text)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    WITH gone AS (DELETE FROM payledger.org_members m
                   WHERE m.org_id = remove_org_member.org AND m.user_id = remove_org_member.user_id RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone);
$$;
GRANT EXECUTE ON FUNCTION payledger.remove_org_member(text, text) TO payledger_app;

-- The organisations the end user belongs to, with their role.
CREATE FUNCTION payledger.my_org_memberships_of()
RETURNS TABLE (org_id text, role text, added_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT m.org_id, m.role, m.added_at FROM payledger.org_members m WHERE m.user_id = payledger.current_user_id();
$$;
GRANT EXECUTE ON FUNCTION payledger.my_org_memberships_of() TO payledger_enduser, payledger_app;
CREATE VIEW payledger.my_org_memberships AS SELECT * FROM payledger.my_org_memberships_of();

CREATE VIEW payledger.my_accounts WITH (security_barrier) AS
SELECT a.id, a.asset, a.kind, a.name, a.balance + coalesce(s.total, 0) AS balance, a.pending_debits,
       a.balance + coalesce(s.total, 0) - a.pending_debits AS available, a.created_at, a.closed_at
  FROM payledger.accounts a
  LEFT JOIN LATERAL (SELECT sum(x.balance)::bigint AS total FROM payledger.accounts x
                      WHERE a.shards > 1 AND x.parent_id = a.id) s ON true
 WHERE a.owner_id = payledger.current_owner_id() AND a.parent_id IS NULL;

-- Entries on a shard are shown under their account; balance_after is then the
-- shard's running balance.
CREATE VIEW payledger.my_entries WITH (security_barrier) AS
SELECT coalesce(a.parent_id, e.account_id) AS account_id, e.seq, e.journal_id, j.kind, e.asset, e.amount,
       e.balance_after, e.effective_at, j.created_at, a.parent_id IS NOT NULL AS on_shard
  FROM payledger.entries e
  JOIN payledger.journals j ON j.id = e.journal_id
  JOIN payledger.accounts a ON a.id = e.account_id
 WHERE e.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_holds WITH (security_barrier) AS
SELECT h.id, h.debit_account, h.asset, h.amount, h.status, h.posted_amount, h.expires_at, h.created_at, h.resolved_at
  FROM payledger.holds h
 WHERE h.owner_id = payledger.current_owner_id();

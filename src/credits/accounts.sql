-- payledger credits: the settings, the system accounts, and how credits move
-- (through the ledger engine, as the module that owns the accounts).
-- Amounts in and out are credits as numeric (exact, up to the credits
-- asset's scale); stored as its minor unit. Everything done to one
-- organisation's credits runs under a transaction advisory lock on the
-- organisation, taken first: concurrent consumers queue and never
-- overspend, and the lock order stays org, then accounts.

CREATE FUNCTION payledger.credit_asset()
RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT s.asset FROM payledger.credit_settings s), 'credit');
$$;
GRANT EXECUTE ON FUNCTION payledger.credit_asset() TO payledger_enduser, payledger_app;

-- The credits asset (created on first use), its scale and the expiry grace.
CREATE FUNCTION payledger.credits_configure(
    asset        text DEFAULT 'credit',
    scale        integer DEFAULT 6,
    expiry_grace interval DEFAULT '1 day')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(asset, 'asset');
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
    PERFORM payledger.set_account_shards(payledger_internal.credit_system_account('credits_consumed'), 16);
    RETURN asset;
END;
$$;

-- A system account of the credits asset: credits_issued (the source of
-- grants, may go negative), credits_consumed, credits_expired, credits_voided.
CREATE FUNCTION payledger_internal.credit_system_account(name text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.open_account_as('credits', 'payledger', payledger.credit_asset(),
                                     CASE WHEN name = 'credits_issued' THEN 'credit_source' ELSE 'credit_sink' END,
                                     name, name = 'credits_issued', NULL, '{}');
$$;

-- Credits move between the module's own accounts (grants, system accounts),
-- which the generic API refuses (PL034): through the engine, as the module.
CREATE FUNCTION payledger_internal.credit_move(from_account uuid, to_account uuid, amount bigint, metadata jsonb,
                                      effective_at timestamptz, kind text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (payledger_internal.apply_as('credits', jsonb_build_object(
        'from', from_account, 'to', to_account, 'amount', amount, 'metadata', metadata,
        'effective_at', effective_at, 'kind', kind))).journal_id;
$$;

CREATE FUNCTION payledger_internal.credit_post(postings jsonb, metadata jsonb, kind text)
RETURNS uuid LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (payledger_internal.apply_as('credits', jsonb_build_object(
        'postings', postings, 'metadata', metadata, 'kind', kind))).journal_id;
$$;

-- Credits (numeric) to the asset's minor unit; too many decimals is PL001.
CREATE FUNCTION payledger_internal.credits_minor(credits numeric, what text DEFAULT 'credits')
RETURNS bigint LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    scale integer;
    v numeric;
BEGIN
    PERFORM payledger_internal.require(credits, what);
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

-- (a definer: the end-user views call it, and end users may not read assets)
CREATE FUNCTION payledger.credits_of(minor bigint)
RETURNS numeric LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(minor / (10::numeric ^ (SELECT a.scale FROM payledger.assets a WHERE a.code = payledger.credit_asset())));
$$;
GRANT EXECUTE ON FUNCTION payledger.credits_of(bigint) TO payledger_enduser, payledger_app;

CREATE FUNCTION payledger_internal.credit_lock(org text)
RETURNS void LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

-- For sweeps over many organisations (expiry, metering): they hold the
-- shared sink accounts' rows while moving on to the next organisation, so
-- waiting for an organisation there could deadlock with its own consumer.
-- They skip a busy organisation instead; the next sweep takes it.
CREATE FUNCTION payledger_internal.credit_try_lock(org text)
RETURNS boolean LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended('payledger.credits:' || org, 0));
$$;

-- payledger providers: auto-withdrawal (Stacker News' AUTO_WITHDRAWAL).
-- An account's owner names a Lightning Address or LNURL and a threshold;
-- when the account holds more than the threshold (by at least a tenth of
-- it), the housekeeping withdraws the excess there, less a fee budget, as an
-- ordinary withdrawal (resolved, paid, never twice). One live auto-withdrawal
-- per account at a time. See docs/providers.md.

CREATE TABLE payledger.auto_withdrawals (
    account_id      uuid PRIMARY KEY REFERENCES payledger.accounts (id),
    owner_id        text NOT NULL,
    asset           text NOT NULL,
    destination     text NOT NULL,          -- a Lightning Address or LNURL
    threshold       bigint NOT NULL CHECK (threshold > 0),
    -- the fee budget: this percentage of the excess, at most max_fee_total
    max_fee_percent numeric(5, 2) NOT NULL CHECK (max_fee_percent BETWEEN 0 AND 100),
    max_fee_total   bigint CHECK (max_fee_total >= 0),
    payin_type      text NOT NULL,
    provider_id     uuid REFERENCES payledger.providers (id),
    enabled         boolean NOT NULL DEFAULT true,
    last_withdrawal_id uuid,
    last_error      text,
    errors          integer NOT NULL DEFAULT 0 CHECK (errors >= 0),
    retry_at        timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE payledger.auto_withdrawals ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.auto_withdrawals', '');

-- Set (or replace) the auto-withdrawal of owner's account in asset (its main
-- account unless `account` names another of the owner's). Returns the account.
CREATE FUNCTION payledger.set_auto_withdrawal(
    owner           text,
    asset           text,
    destination     text,
    threshold       bigint,
    max_fee_percent numeric DEFAULT 1,
    max_fee_total   bigint DEFAULT NULL,
    payin_type      text DEFAULT 'AUTO_WITHDRAWAL',
    provider        uuid DEFAULT NULL,
    account         uuid DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    a payledger.accounts;
BEGIN
    PERFORM payledger_internal.require(owner, 'owner');
    PERFORM payledger_internal.require(asset, 'asset');
    PERFORM payledger_internal.require(destination, 'destination');
    PERFORM payledger_internal.require(threshold, 'threshold');
    PERFORM payledger_internal.require(max_fee_percent, 'max_fee_percent');
    PERFORM payledger_internal.require(payin_type, 'payin_type');
    IF payledger_internal.lnurl_target(destination) IS NULL THEN
        RAISE EXCEPTION 'an auto-withdrawal goes to a Lightning Address or LNURL'
            USING ERRCODE = 'PL035', DETAIL = format('not %s', left(destination, 100)), HINT = 'a BOLT11 is paid once; an address gives a new invoice each time';
    END IF;
    IF threshold <= 0 OR max_fee_percent < 0 OR max_fee_percent > 100 OR max_fee_total < 0 THEN
        RAISE EXCEPTION 'threshold must be positive, max_fee_percent within 0 to 100, max_fee_total not negative'
            USING ERRCODE = 'PL001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = set_auto_withdrawal.payin_type AND t.withdrawal) THEN
        RAISE EXCEPTION '% is not a registered withdrawal pay-in type', payin_type USING ERRCODE = 'PL022',
            HINT = 'register_payin_type(type, description, allow_external => false, withdrawal => true)';
    END IF;
    IF provider IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.providers x WHERE x.id = provider) THEN
        RAISE EXCEPTION 'unknown provider %', provider USING ERRCODE = 'PL028';
    END IF;
    SELECT * INTO a FROM payledger.accounts x
     WHERE x.id = coalesce(set_auto_withdrawal.account,
                           payledger.account_id(set_auto_withdrawal.owner, set_auto_withdrawal.asset))
       AND x.owner_id = set_auto_withdrawal.owner AND x.asset = set_auto_withdrawal.asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% has no such % account', owner, asset USING ERRCODE = 'PL002';
    END IF;
    INSERT INTO payledger.auto_withdrawals AS x (account_id, owner_id, asset, destination, threshold, max_fee_percent,
                                                 max_fee_total, payin_type, provider_id)
    VALUES (a.id, set_auto_withdrawal.owner, set_auto_withdrawal.asset, set_auto_withdrawal.destination,
            set_auto_withdrawal.threshold, set_auto_withdrawal.max_fee_percent, set_auto_withdrawal.max_fee_total,
            set_auto_withdrawal.payin_type, set_auto_withdrawal.provider)
    ON CONFLICT (account_id) DO UPDATE
       SET destination = EXCLUDED.destination, threshold = EXCLUDED.threshold,
           max_fee_percent = EXCLUDED.max_fee_percent, max_fee_total = EXCLUDED.max_fee_total,
           payin_type = EXCLUDED.payin_type, provider_id = EXCLUDED.provider_id, enabled = true,
           errors = 0, last_error = NULL, retry_at = NULL, updated_at = now();
    RETURN a.id;
END;
$$;
GRANT EXECUTE ON FUNCTION
    payledger.set_auto_withdrawal(text, text, text, bigint, numeric, bigint, text, uuid, uuid)
TO payledger_app;

-- Turn it off (the row stays, with its history). Returns whether there was one.
CREATE FUNCTION payledger.clear_auto_withdrawal(owner text, asset text, account uuid DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.auto_withdrawals x SET enabled = false, updated_at = now()
     WHERE x.account_id = coalesce(clear_auto_withdrawal.account,
                                   payledger.account_id(clear_auto_withdrawal.owner, clear_auto_withdrawal.asset))
       AND x.owner_id = clear_auto_withdrawal.owner
    RETURNING true;
$$;
GRANT EXECUTE ON FUNCTION payledger.clear_auto_withdrawal(text, text, uuid) TO payledger_app;

-- What an account's balance gives: the excess over the threshold once it is
-- at least a tenth of the threshold (Stacker News' rule, so that small
-- excesses do not each pay a routing fee), its fee budget, and the amount
-- sent (the excess less the budget, both in whole satoshis for msat).
CREATE FUNCTION payledger_internal.auto_withdrawal_amounts(r payledger.auto_withdrawals, balance bigint,
                                                           OUT amount bigint, OUT max_fee bigint)
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    excess bigint := balance - r.threshold;
    unit bigint := CASE WHEN r.asset = 'msat' THEN 1000 ELSE 1 END;
BEGIN
    IF excess <= 0 OR excess * 10 < r.threshold THEN
        RETURN;
    END IF;
    max_fee := ceil(excess * r.max_fee_percent / 100)::bigint;
    max_fee := least(max_fee, coalesce(r.max_fee_total, max_fee));
    max_fee := (max_fee / unit) * unit;
    amount := ((excess - max_fee) / unit) * unit;
    IF amount <= 0 THEN
        amount := NULL;
        max_fee := NULL;
    END IF;
END;
$$;

-- The housekeeping step: up to max_accounts auto-withdrawals that are due,
-- each started as a withdrawal (one account's pay-in per call: see
-- worker_apply). A rule whose withdrawal cannot start (no provider, a
-- closed account) records why and waits a backoff. Returns how many started.
CREATE FUNCTION payledger.run_auto_withdrawals(max_accounts integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r payledger.auto_withdrawals;
    bal bigint;
    m record;
    started uuid;
    n integer := 0;
BEGIN
    PERFORM payledger_internal.require_limit(max_accounts, 'max_accounts');
    FOR r IN SELECT x.* FROM payledger.auto_withdrawals x
              WHERE x.enabled AND (x.retry_at IS NULL OR x.retry_at <= now())
                -- one at a time: not while the last one may still be paid
                AND NOT EXISTS (SELECT 1 FROM payledger.withdrawals w
                                 WHERE w.id = x.last_withdrawal_id AND w.status NOT IN ('succeeded', 'failed'))
                AND payledger.balance(x.account_id) - x.threshold > 0
                AND (payledger.balance(x.account_id) - x.threshold) * 10 >= x.threshold
              ORDER BY x.updated_at
              LIMIT max_accounts
              FOR UPDATE OF x SKIP LOCKED LOOP
        bal := payledger.balance(r.account_id);
        SELECT * INTO m FROM payledger_internal.auto_withdrawal_amounts(r, bal);
        CONTINUE WHEN m.amount IS NULL;
        BEGIN
            SELECT w.withdrawal_id INTO started
              FROM payledger.withdraw(r.owner_id, r.asset, r.destination, m.max_fee,
                                      jsonb_build_array(jsonb_build_object('account', r.account_id)),
                                      r.payin_type, r.provider_id,
                                      metadata => jsonb_build_object('auto_withdrawal', r.account_id, 'balance', bal),
                                      amount_msat => m.amount) w;
            UPDATE payledger.auto_withdrawals x
               SET last_withdrawal_id = started, errors = 0, last_error = NULL, retry_at = NULL, updated_at = now()
             WHERE x.account_id = r.account_id;
            n := n + 1;
        EXCEPTION WHEN OTHERS THEN
            UPDATE payledger.auto_withdrawals x
               SET errors = x.errors + 1, last_error = left(SQLSTATE || ': ' || SQLERRM, 500),
                   retry_at = now() + payledger_internal.backoff(x.errors + 1), updated_at = now()
             WHERE x.account_id = r.account_id;
        END;
    END LOOP;
    RETURN n;
END;
$$;
SELECT payledger_internal.register_housekeeping_step('provider', 'auto_withdrawals', 75,
                                                     'payledger.run_auto_withdrawals(integer)', per_call => 1);

CREATE VIEW payledger.my_auto_withdrawals WITH (security_barrier) AS
SELECT x.account_id, x.asset, x.destination, x.threshold, x.max_fee_percent, x.max_fee_total, x.enabled,
       x.last_withdrawal_id, x.last_error, x.updated_at
  FROM payledger.auto_withdrawals x
 WHERE x.owner_id = payledger.current_owner_id();

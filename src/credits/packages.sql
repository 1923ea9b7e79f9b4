-- payledger credits: packages, bought with a pay-in (or a subscription).

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
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(price_asset, 'price_asset');
    PERFORM payledger_internal.require(price, 'price');
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
    PERFORM payledger_internal.credit_require_metric(metric);
    INSERT INTO payledger.credit_packages (id, name, metric, credits, price_asset, price, period, validity, priority)
    VALUES (payledger.new_id(), name, metric, payledger_internal.credits_minor(credits), price_asset, price, period, validity,
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

-- The active package of that name, or PL031.
CREATE FUNCTION payledger_internal.credit_package(name text)
RETURNS payledger.credit_packages LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = credit_package.name AND x.active;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % does not exist', name USING ERRCODE = 'PL031';
    END IF;
    RETURN pk;
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
    PERFORM payledger_internal.require(org, 'org');
    PERFORM payledger_internal.require(package, 'package');
    PERFORM payledger_internal.require(revenue_account, 'revenue_account');
    pk := payledger_internal.credit_package(package);
    SELECT * INTO p FROM payledger.create_payin(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, methods,
        jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, idempotency_key, NULL, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
    RETURN QUERY SELECT p.payin_id, p.state, (SELECT g.id FROM payledger.credit_grants g WHERE g.payin_id = p.payin_id);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.buy_credit_package(text, text, jsonb, uuid, text, text) TO payledger_app;

-- A credit package's pay-in reached PAID (a handler of the pay-in
-- lifecycle, in the settling transaction): it grants its credits; a
-- subscription's renewals are recurring.
CREATE FUNCTION payledger_internal.credits_payin_paid(p payledger.payins)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = p.metadata ->> 'credit_package';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM payledger.grant_credits(coalesce(p.metadata ->> 'credit_org', p.owner_id), payledger.credits_of(pk.credits),
        CASE WHEN p.metadata ? 'subscription' THEN 'recurring_purchase' ELSE 'purchase' END,
        pk.metric, pk.priority, now() + pk.validity,
        cost_basis => round(pk.price::numeric / payledger.credits_of(pk.credits), 12), cost_asset => pk.price_asset,
        payin => p.id, metadata => jsonb_build_object('package', pk.name));
    PERFORM payledger_internal.credits_purchase_event(p, pk);
END;
$$;

-- credits.purchase_paid or credits.purchase_failed, for the organisation
-- (Capgo's purchase e-mails).
CREATE FUNCTION payledger_internal.credits_purchase_event(p payledger.payins, pk payledger.credit_packages)
RETURNS void LANGUAGE sql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.emit_event(
        CASE WHEN p.state = 'PAID' THEN 'credits.purchase_paid' ELSE 'credits.purchase_failed' END, p.id,
        coalesce(p.metadata ->> 'credit_org', p.owner_id),
        jsonb_build_object('org', coalesce(p.metadata ->> 'credit_org', p.owner_id), 'package', pk.name, 'payin', p.id,
                           'credits', payledger.credits_of(pk.credits), 'price', pk.price, 'asset', pk.price_asset,
                           'recurring', p.metadata ? 'subscription', 'state', p.state, 'reason', p.failure_reason));
$$;

-- A package's pay-in that failed or was cancelled: the organisation is told.
CREATE FUNCTION payledger_internal.credits_payin_failed(p payledger.payins)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    pk payledger.credit_packages;
BEGIN
    SELECT * INTO pk FROM payledger.credit_packages x WHERE x.name = p.metadata ->> 'credit_package';
    -- (once: a CANCELLED pay-in that then fails told it already)
    IF FOUND AND NOT EXISTS (SELECT 1 FROM payledger.events e
                              WHERE e.subject_id = p.id AND e.topic = 'credits.purchase_failed') THEN
        PERFORM payledger_internal.credits_purchase_event(p, pk);
    END IF;
END;
$$;
SELECT payledger_internal.register_payin_handler('credits', 'reached', 100, '{PAID}',
                                        'payledger_internal.credits_payin_paid(payledger.payins)', 'CREDIT_PACKAGE'),
       payledger_internal.register_payin_handler('credits', 'reached', 110, '{FAILED,CANCELLED}',
                                        'payledger_internal.credits_payin_failed(payledger.payins)', 'CREDIT_PACKAGE');

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
    PERFORM payledger_internal.require(org, 'org');
    pk := payledger_internal.credit_package(package);
    IF pk.period IS NULL THEN
        RAISE EXCEPTION 'credit package % is one-time, not recurring', package USING ERRCODE = '22023';
    END IF;
    RETURN payledger.create_subscription(coalesce(payer, org), 'CREDIT_PACKAGE', pk.price_asset, pk.price, pk.period,
        methods, jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', revenue_account, 'amount', pk.price)),
        NULL, NULL, NULL, starts_at, jsonb_build_object('credit_package', pk.name, 'credit_org', org));
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.subscribe_credit_package(text, text, uuid, jsonb, text, timestamptz) TO payledger_app;

---------------------------------------------------------------------------
-- Buying as an end user (the console, PostgREST, Supabase)
---------------------------------------------------------------------------

-- Where end users' purchases priced in an asset are paid (an operator's
-- setting; buy_credits needs one for the package's price asset).
CREATE FUNCTION payledger.set_credit_sales_account(asset text, account uuid)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(asset, 'asset');
    PERFORM payledger_internal.require(account, 'account');
    IF NOT EXISTS (SELECT 1 FROM payledger.accounts a WHERE a.id = account) THEN
        RAISE EXCEPTION 'account % does not exist', account USING ERRCODE = 'PL002';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.accounts a WHERE a.id = account AND a.asset = set_credit_sales_account.asset) THEN
        RAISE EXCEPTION 'account % is not an account of %', account, asset USING ERRCODE = 'PL004';
    END IF;
    INSERT INTO payledger.credit_sales_accounts AS s (asset, account_id) VALUES (asset, account)
    ON CONFLICT ON CONSTRAINT credit_sales_accounts_pkey DO UPDATE SET account_id = excluded.account_id;
    RETURN account;
END;
$$;

-- The packages on sale, for everyone signed in.
CREATE VIEW payledger.my_credit_packages AS
SELECT k.name, k.metric, payledger.credits_of(k.credits) AS credits, k.price_asset, k.price, k.period, k.validity,
       k.period IS NOT NULL AS recurring
  FROM payledger.credit_packages k
 WHERE k.active AND EXISTS (SELECT 1 FROM payledger.credit_sales_accounts s WHERE s.asset = k.price_asset);

-- The organisation the request chose, when the end user's role in it is one
-- of roles (to buy: owner, admin, member; not read_only). Refused with 42501.
CREATE FUNCTION payledger_internal.org_member_for(action text, roles text[])
RETURNS text LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    org text := payledger_internal.requested_org_id();
    role text := payledger.current_org_role();
BEGIN
    IF payledger.current_user_id() IS NULL THEN
        RAISE EXCEPTION 'no end user: % needs a signed-in user', action USING ERRCODE = '42501';
    END IF;
    IF org IS NULL THEN
        RAISE EXCEPTION '% needs an organisation', action USING ERRCODE = '42501',
            HINT = 'Choose one with the JWT claim org_id or the setting payledger.org_id.';
    END IF;
    IF role IS NULL THEN
        RAISE EXCEPTION 'not a member of organisation %', org USING ERRCODE = '42501';
    END IF;
    IF role <> ALL (roles) THEN
        RAISE EXCEPTION 'a % of organisation % may not %',
            CASE role WHEN 'read_only' THEN 'read_only member' ELSE role END, org, action USING ERRCODE = '42501';
    END IF;
    RETURN org;
END;
$$;

-- An end user buys a package for the organisation the request chose: once,
-- or (recurring => true, for packages with a period) as a subscription whose
-- first period is billed now. The pay-in is the organisation's; its invoice
-- (BOLT11, or the card rail's client secret, in my_invoices.payment_request)
-- is issued by the worker; the grant comes when it is paid. A repeat with
-- the same idempotency key returns the same pay-in.
CREATE FUNCTION payledger.buy_credits(
    package         text,
    recurring       boolean DEFAULT false,
    rail            text DEFAULT 'invoice',
    idempotency_key text DEFAULT NULL)
RETURNS TABLE (payin_id uuid, state payledger.payin_state, subscription_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    org text := payledger_internal.org_member_for('buy credits', '{owner,admin,member}');
    pk payledger.credit_packages;
    seller uuid;
    methods jsonb;
    payouts jsonb;
    sub uuid;
    p record;
BEGIN
    PERFORM payledger_internal.require(package, 'package');
    PERFORM payledger_internal.require(recurring, 'recurring');
    PERFORM payledger_internal.require(rail, 'rail');
    pk := payledger_internal.credit_package(package);
    SELECT s.account_id INTO seller FROM payledger.credit_sales_accounts s WHERE s.asset = pk.price_asset;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'credit package % is not on sale: no sales account for %', package, pk.price_asset
            USING ERRCODE = 'PL031', HINT = 'An operator sets one with set_credit_sales_account.';
    END IF;
    IF recurring AND pk.period IS NULL THEN
        RAISE EXCEPTION 'credit package % is one-time, not recurring', package USING ERRCODE = '22023';
    END IF;
    -- (a pay-in no provider serves would wait for an invoice nobody issues)
    IF payledger_internal.pick_provider('CREDIT_PACKAGE', pk.price_asset, rail) IS NULL THEN
        RAISE EXCEPTION 'no active provider serves % in % for credit packages', rail, pk.price_asset USING ERRCODE = 'PL028';
    END IF;
    methods := jsonb_build_array(jsonb_build_object('external', rail));
    payouts := jsonb_build_array(jsonb_build_object('type', 'CREDIT_SALE', 'account', seller, 'amount', pk.price));
    IF recurring THEN
        -- (the key makes a repeated click one subscription; two at once take
        -- turns on the key, and the second finds the first's)
        IF idempotency_key IS NOT NULL THEN
            PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('credits:' || org || ':' || idempotency_key, 0));
        END IF;
        SELECT x.id INTO sub FROM payledger.subscriptions x
         WHERE idempotency_key IS NOT NULL AND x.owner_id = org AND x.metadata ->> 'idempotency_key' = idempotency_key;
        IF sub IS NULL THEN
            sub := payledger.create_subscription(org, 'CREDIT_PACKAGE', pk.price_asset, pk.price, pk.period, methods, payouts,
                metadata => jsonb_strip_nulls(jsonb_build_object('credit_package', pk.name, 'credit_org', org,
                    'bought_by', payledger.current_user_id(), 'idempotency_key', idempotency_key)));
            PERFORM payledger.renew_subscription(sub);
        END IF;
        RETURN QUERY SELECT x.last_payin_id, y.state, x.id
                       FROM payledger.subscriptions x JOIN payledger.payins y ON y.id = x.last_payin_id WHERE x.id = sub;
        RETURN;
    END IF;
    SELECT * INTO p FROM payledger.create_payin(org, 'CREDIT_PACKAGE', pk.price_asset, pk.price, methods, payouts,
        NULL, NULL, idempotency_key, NULL,
        jsonb_build_object('credit_package', pk.name, 'credit_org', org, 'bought_by', payledger.current_user_id()));
    RETURN QUERY SELECT p.payin_id, p.state, NULL::uuid;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.buy_credits(text, boolean, text, text) TO payledger_enduser, payledger_app;

-- An owner or admin of the organisation stops one of its subscriptions.
CREATE FUNCTION payledger.cancel_my_subscription(subscription uuid)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    org text := payledger_internal.org_member_for('cancel a subscription', '{owner,admin}');
    st text;
BEGIN
    PERFORM payledger_internal.require(subscription, 'subscription');
    UPDATE payledger.subscriptions s SET status = 'cancelled'
     WHERE s.id = subscription AND s.owner_id = org AND s.status = 'active'
    RETURNING s.status INTO st;
    IF st IS NULL THEN
        SELECT s.status INTO st FROM payledger.subscriptions s WHERE s.id = subscription AND s.owner_id = org;
        IF st IS NULL THEN
            RAISE EXCEPTION 'subscription % does not exist', subscription USING ERRCODE = 'PL030';
        END IF;
    END IF;
    RETURN st;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.cancel_my_subscription(uuid) TO payledger_enduser, payledger_app;

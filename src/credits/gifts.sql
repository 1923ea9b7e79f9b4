-- payledger credits: gift codes.

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
    PERFORM payledger_internal.require(code, 'code');
    IF code !~ '^[A-Za-z0-9_-]{4,64}$' THEN
        RAISE EXCEPTION 'a gift code is 4 to 64 letters, digits, _ or -' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM payledger.credit_settings) THEN
        PERFORM payledger.credits_configure();
    END IF;
    PERFORM payledger_internal.credit_require_metric(metric);
    IF coalesce(max_redemptions, 1) <= 0 OR coalesce(per_org_limit, 0) <= 0 OR coalesce(validity, '0') <= '0' THEN
        RAISE EXCEPTION 'limits and validity must be positive' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.gift_codes (code, credits, metric, valid_until, validity, max_redemptions, per_org_limit, priority)
    VALUES (code, payledger_internal.credits_minor(credits), metric, valid_until, validity, max_redemptions, per_org_limit,
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
    PERFORM payledger_internal.require(code, 'code');
    PERFORM payledger_internal.require(org, 'org');
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
GRANT EXECUTE ON FUNCTION payledger.redeem_gift_code(text, text) TO payledger_app;

-- payledger providers: merchant profiles, the providers each owns (with
-- their credentials), and which profile invoices a pay-in type. Admin
-- functions, and pick_provider, which chooses the provider of a new invoice.

CREATE FUNCTION payledger.create_merchant_profile(
    name       text,
    owner_id   text DEFAULT NULL,
    is_default boolean DEFAULT false,
    metadata   jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.merchant_profiles;
BEGIN
    PERFORM payledger_internal.require(name, 'name');
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

CREATE FUNCTION payledger_internal.profile_id(profile text)
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
CREATE FUNCTION payledger_internal.provider_credential_field(kind payledger.provider_kind)
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
    PERFORM payledger_internal.require(profile, 'profile');
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(kind, 'kind');
    PERFORM payledger_internal.require(base_url, 'base_url');
    PERFORM payledger_internal.require(credentials, 'credentials');
    -- (the worker reads both back: nothing it cannot parse gets stored)
    PERFORM payledger_internal.json_readable(credentials), payledger_internal.json_readable(coalesce(config, '{}'));
    pid := payledger_internal.profile_id(profile);
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid provider name %', name USING ERRCODE = '22023';
    END IF;
    IF base_url !~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$' THEN
        RAISE EXCEPTION 'base_url must be an http(s) URL without credentials, query or fragment'
            USING ERRCODE = '22023';
    END IF;
    field := payledger_internal.provider_credential_field(kind);
    IF jsonb_typeof(credentials) <> 'object' OR jsonb_typeof(credentials -> field) IS DISTINCT FROM 'string' THEN
        -- the message names the field, never the value
        RAISE EXCEPTION 'credentials of a % provider need a string "%"', kind, field USING ERRCODE = '22023';
    END IF;
    IF kind = 'btcpay' AND jsonb_typeof(config -> 'store_id') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'a btcpay provider needs config {"store_id": …}' USING ERRCODE = '22023';
    END IF;
    asset := coalesce(asset, CASE WHEN kind = 'stripe' THEN NULL ELSE 'msat' END);
    PERFORM payledger_internal.require(asset, 'asset');
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
    PERFORM payledger_internal.require(provider, 'provider');
    PERFORM payledger_internal.require(credentials, 'credentials');
    PERFORM payledger_internal.json_readable(credentials);
    SELECT p.kind INTO k FROM payledger.providers p WHERE p.id = provider;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % does not exist', provider USING ERRCODE = 'PL028';
    END IF;
    field := payledger_internal.provider_credential_field(k);
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
    PERFORM payledger_internal.require(provider, 'provider');
    PERFORM payledger_internal.require(active, 'active');
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
    PERFORM payledger_internal.require(payin_type, 'payin_type');
    PERFORM payledger_internal.require(profile, 'profile');
    pid := payledger_internal.profile_id(profile);
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
CREATE FUNCTION payledger_internal.pick_provider(payin_type text, asset text, rail text, profile uuid DEFAULT NULL)
RETURNS uuid LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT p.id FROM payledger.providers p
     WHERE p.profile_id = coalesce(profile,
                                   (SELECT r.profile_id FROM payledger.payin_routes r WHERE r.payin_type = pick_provider.payin_type),
                                   (SELECT m.id FROM payledger.merchant_profiles m WHERE m.is_default))
       AND p.active AND p.rail = pick_provider.rail AND p.asset = pick_provider.asset
     ORDER BY p.priority, p.name
     LIMIT 1;
$$;

-- payledger p2p: attaching, changing and detaching receiver wallets. The
-- backend (payledger_app) does it for any user; an end user for themselves
-- (attach_my_receiver_wallet …). Credentials go to receiver_wallet_secrets,
-- which only the operators and the worker read; nothing here echoes them.

-- The wallet's settings and credentials from what the user gave (22023 with
-- what is wrong, never a secret's value):
--   nwc                {"uri": "nostr+walletconnect://…"}
--   lnbits             {"url": "https://…", "invoice_key": "…"}
--   lnd_rest           {"url": "https://…", "invoice_macaroon": "<hex>", "tls_cert_pem": "…"}
--   lightning_address  {"address": "name@host"} (or an "lnurl1…")
CREATE FUNCTION payledger_internal.receiver_wallet_settings(
    kind payledger.receiver_wallet_kind, connection jsonb, OUT config jsonb, OUT credentials jsonb)
LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    c jsonb;
BEGIN
    PERFORM payledger_internal.require(kind, 'kind');
    PERFORM payledger_internal.require(connection, 'connection');
    PERFORM payledger_internal.json_readable(connection);
    IF jsonb_typeof(connection) <> 'object' THEN
        RAISE EXCEPTION 'connection must be a JSON object' USING ERRCODE = '22023';
    END IF;
    CASE kind
    WHEN 'nwc' THEN
        IF jsonb_typeof(connection -> 'uri') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'an nwc wallet needs {"uri": "nostr+walletconnect://…"}' USING ERRCODE = '22023';
        END IF;
        c := payledger_internal.nwc_connection(connection ->> 'uri');
        config := jsonb_build_object('wallet_pubkey', c -> 'wallet_pubkey', 'relays', c -> 'relays',
                                     'client_pubkey', c -> 'client_pubkey')
                  || CASE WHEN c ? 'lud16' THEN jsonb_build_object('lud16', c -> 'lud16') ELSE '{}' END;
        credentials := jsonb_build_object('secret', c -> 'secret');
    WHEN 'lnbits', 'lnd_rest' THEN
        IF coalesce(connection ->> 'url', '') !~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$' THEN
            RAISE EXCEPTION 'a % wallet needs "url": an http(s) URL without credentials, query or fragment', kind
                USING ERRCODE = '22023';
        END IF;
        c := CASE kind WHEN 'lnbits' THEN '"invoice_key"' ELSE '"invoice_macaroon"' END;
        IF jsonb_typeof(connection -> (c #>> '{}')) IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'a % wallet needs a string %', kind, c #>> '{}' USING ERRCODE = '22023';
        END IF;
        IF connection ? 'tls_cert_pem' AND jsonb_typeof(connection -> 'tls_cert_pem') <> 'string' THEN
            RAISE EXCEPTION 'tls_cert_pem must be a string' USING ERRCODE = '22023';
        END IF;
        config := jsonb_strip_nulls(jsonb_build_object('url', connection -> 'url', 'tls_cert_pem', connection -> 'tls_cert_pem'));
        credentials := jsonb_build_object(c #>> '{}', connection -> (c #>> '{}'));
    WHEN 'lightning_address' THEN
        IF jsonb_typeof(connection -> 'address') IS DISTINCT FROM 'string'
           OR payledger_internal.lnurl_target(lower(connection ->> 'address')) IS NULL THEN
            RAISE EXCEPTION 'a lightning_address wallet needs "address": name@host or an lnurl1… string'
                USING ERRCODE = '22023';
        END IF;
        config := jsonb_build_object('address', lower(connection ->> 'address'));
        credentials := '{}';
    END CASE;
END;
$$;

-- Whether an end user's wallet URL may be reached unencrypted: only a host
-- listed in payledger.lnurl_http_hosts (loopback test servers), as for LNURL.
CREATE FUNCTION payledger_internal.plain_http_allowed(url text)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT lower(substring(url FROM '^[a-z]+://\[?([^/:?#\]]+)')) = ANY (
               string_to_array(replace(lower(coalesce(current_setting('payledger.lnurl_http_hosts', true), '')), ' ', ''), ','));
$$;

-- (end_user: the wallet is an end user's own, so it must be reached over
-- TLS: https, wss; the backend may attach what it trusts)
CREATE FUNCTION payledger_internal.attach_receiver_wallet(
    owner text, kind payledger.receiver_wallet_kind, connection jsonb, priority integer, label text,
    end_user boolean DEFAULT false)
RETURNS uuid LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s record;
    wid uuid := payledger.new_id();
    plain text;
BEGIN
    PERFORM payledger_internal.require(owner, 'owner');
    IF length(coalesce(label, '')) > 100 THEN
        RAISE EXCEPTION 'label is longer than 100 characters' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO s FROM payledger_internal.receiver_wallet_settings(kind, connection);
    IF end_user THEN
        SELECT u INTO plain
          FROM (SELECT s.config ->> 'url' AS u UNION ALL SELECT jsonb_array_elements_text(s.config -> 'relays')) x
         WHERE u IS NOT NULL AND u !~ '^(https|wss)://' AND NOT payledger_internal.plain_http_allowed(u)
         LIMIT 1;
        IF plain IS NOT NULL THEN
            RAISE EXCEPTION 'a wallet of your own is reached over TLS: % is not https:// or wss://', plain
                USING ERRCODE = '22023';
        END IF;
    END IF;
    INSERT INTO payledger.receiver_wallets (id, owner_id, kind, label, config, priority)
    VALUES (wid, owner, kind, coalesce(label, ''), s.config, coalesce(priority, 0));
    INSERT INTO payledger.receiver_wallet_secrets (wallet_id, credentials) VALUES (wid, s.credentials);
    RETURN wid;
END;
$$;

-- The backend attaches a wallet for a user.
CREATE FUNCTION payledger.attach_receiver_wallet(
    owner text, kind payledger.receiver_wallet_kind, connection jsonb, priority integer DEFAULT 0,
    label text DEFAULT NULL)
RETURNS uuid LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.attach_receiver_wallet(owner, kind, connection, priority, label);
$$;
GRANT EXECUTE ON FUNCTION payledger.attach_receiver_wallet(text, payledger.receiver_wallet_kind, jsonb, integer, text)
    TO payledger_app;

-- The signed-in end user (42501 without one: the my_ functions act for
-- nobody else).
CREATE FUNCTION payledger_internal.signed_in_user(action text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    me text := payledger.current_user_id();
BEGIN
    IF me IS NULL THEN
        RAISE EXCEPTION 'no end user: % needs a signed-in user', action USING ERRCODE = '42501';
    END IF;
    RETURN me;
END;
$$;

-- The signed-in end user attaches a wallet of their own.
CREATE FUNCTION payledger.attach_my_receiver_wallet(
    kind payledger.receiver_wallet_kind, connection jsonb, priority integer DEFAULT 0, label text DEFAULT NULL)
RETURNS uuid LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.attach_receiver_wallet(payledger_internal.signed_in_user('attaching a wallet'),
                                                     kind, connection, priority, label, end_user => true);
$$;
GRANT EXECUTE ON FUNCTION payledger.attach_my_receiver_wallet(payledger.receiver_wallet_kind, jsonb, integer, text)
    TO payledger_enduser;

-- A wallet that can be changed or tried: PL037 when it does not exist (or,
-- with owner, is not theirs), 55000 when detached. lock: FOR NO KEY UPDATE.
CREATE FUNCTION payledger_internal.live_receiver_wallet(wallet uuid, owner text, lock boolean)
RETURNS payledger.receiver_wallets LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    w payledger.receiver_wallets;
BEGIN
    PERFORM payledger_internal.require(wallet, 'wallet');
    IF lock THEN
        SELECT * INTO w FROM payledger.receiver_wallets x
         WHERE x.id = wallet AND (owner IS NULL OR x.owner_id = owner) FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO w FROM payledger.receiver_wallets x WHERE x.id = wallet AND (owner IS NULL OR x.owner_id = owner);
    END IF;
    IF w.id IS NULL THEN
        RAISE EXCEPTION 'receiver wallet % does not exist', wallet USING ERRCODE = 'PL037';
    END IF;
    IF w.detached_at IS NOT NULL THEN
        RAISE EXCEPTION 'receiver wallet % is detached', wallet USING ERRCODE = '55000';
    END IF;
    RETURN w;
END;
$$;

-- Enable or disable a wallet, change its priority, or detach it (for good:
-- it stays for the pay-ins that name it, never used again). A wallet
-- enabled again starts with a clean health record. PL037 for a wallet that
-- does not exist (or is not the end user's); 55000 to change a detached one.
CREATE FUNCTION payledger_internal.set_receiver_wallet(
    wallet uuid, owner text, enabled boolean, priority integer, detach boolean)
RETURNS payledger.receiver_wallets LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    w payledger.receiver_wallets;
BEGIN
    w := payledger_internal.live_receiver_wallet(wallet, owner, true);
    UPDATE payledger.receiver_wallets x
       SET enabled = coalesce(set_receiver_wallet.enabled, x.enabled) AND NOT coalesce(detach, false),
           priority = coalesce(set_receiver_wallet.priority, x.priority),
           detached_at = CASE WHEN detach THEN now() END,
           consecutive_failures = CASE WHEN set_receiver_wallet.enabled AND NOT x.enabled THEN 0
                                       ELSE x.consecutive_failures END
     WHERE x.id = w.id
    RETURNING * INTO w;
    IF detach THEN
        DELETE FROM payledger.receiver_wallet_secrets s WHERE s.wallet_id = w.id;
    END IF;
    RETURN w;
END;
$$;

CREATE FUNCTION payledger.set_receiver_wallet(wallet uuid, enabled boolean DEFAULT NULL, priority integer DEFAULT NULL)
RETURNS payledger.receiver_wallets LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.set_receiver_wallet(wallet, NULL, enabled, priority, false);
$$;
GRANT EXECUTE ON FUNCTION payledger.set_receiver_wallet(uuid, boolean, integer) TO payledger_app;

CREATE FUNCTION payledger.detach_receiver_wallet(wallet uuid)
RETURNS payledger.receiver_wallets LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT payledger_internal.set_receiver_wallet(wallet, NULL, NULL, NULL, true);
$$;
GRANT EXECUTE ON FUNCTION payledger.detach_receiver_wallet(uuid) TO payledger_app;

-- The end user's own wallets only (another user's is PL037, as if absent).
CREATE FUNCTION payledger.set_my_receiver_wallet(wallet uuid, enabled boolean DEFAULT NULL, priority integer DEFAULT NULL,
                                                 detach boolean DEFAULT false)
RETURNS uuid LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (payledger_internal.set_receiver_wallet(wallet, payledger_internal.signed_in_user('changing a wallet'),
                                                   enabled, priority, coalesce(detach, false))).id;
$$;
GRANT EXECUTE ON FUNCTION payledger.set_my_receiver_wallet(uuid, boolean, integer, boolean) TO payledger_enduser;

-- What an end user sees of their wallets: where each points, never a secret.
CREATE VIEW payledger.my_receiver_wallets WITH (security_barrier) AS
SELECT w.id, w.kind, w.label, w.priority, w.enabled,
       CASE w.kind WHEN 'nwc' THEN w.config -> 'relays' ->> 0
                   WHEN 'lightning_address' THEN w.config ->> 'address'
                   ELSE w.config ->> 'url' END AS points_to,
       w.consecutive_failures, w.last_error, w.last_ok_at, w.created_at
  FROM payledger.receiver_wallets w
 WHERE w.owner_id = payledger.current_user_id() AND w.detached_at IS NULL;

-- Try a wallet: ask it for an invoice of amount_msat (1 sat by default), as
-- a p2p pay-in would, and check what comes back (a BOLT11 for that amount,
-- not expired). The result is recorded as the wallet's health (a failure
-- counts towards skipping it; a success clears the count) and returned,
-- never raised: a wallet that does not answer is news, not bad input. The
-- call is made from this session, with no lock held, within
-- payledger.worker_http_timeout.
CREATE FUNCTION payledger_internal.test_receiver_wallet(wallet uuid, owner text, amount_msat bigint)
RETURNS TABLE (ok boolean, bolt11 text, payment_hash text, network text, error text)
LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    w payledger.receiver_wallets;
    r jsonb;
    d record;
    hash text;
    net text;
    problem text;
BEGIN
    PERFORM payledger_internal.require(wallet, 'wallet');
    PERFORM payledger_internal.require(amount_msat, 'amount_msat');
    IF amount_msat < 1000 OR amount_msat % 1000 <> 0 THEN
        RAISE EXCEPTION 'amount_msat must be a whole number of sats, at least 1000' USING ERRCODE = 'PL001';
    END IF;
    -- (no lock held while the wallet is called)
    w := payledger_internal.live_receiver_wallet(wallet, owner, false);
    r := payledger_internal.receiver_wallet_ask(w.id, amount_msat, 'payledger wallet test', 600);
    IF (r ->> 'ok')::boolean THEN
        BEGIN
            SELECT * INTO d FROM payledger.bolt11_decode(r ->> 'bolt11');
            hash := d.payment_hash;
            net := d.network;
            problem := CASE WHEN d.amount_msat IS DISTINCT FROM amount_msat
                                 THEN format('the invoice is for %s msat, not %s', coalesce(d.amount_msat::text, 'any amount'), amount_msat)
                            WHEN d.expires_at <= now() THEN 'the invoice has expired' END;
        EXCEPTION WHEN OTHERS THEN
            problem := 'the wallet answered something that is not a BOLT11 invoice: ' || SQLERRM;
        END;
    ELSE
        problem := r ->> 'error';
    END IF;
    UPDATE payledger.receiver_wallets x
       SET consecutive_failures = CASE WHEN problem IS NULL THEN 0 ELSE x.consecutive_failures + 1 END,
           last_failure_at = CASE WHEN problem IS NULL THEN x.last_failure_at ELSE now() END,
           last_ok_at = CASE WHEN problem IS NULL THEN now() ELSE x.last_ok_at END,
           last_error = left(problem, 500)
     WHERE x.id = w.id;
    RETURN QUERY SELECT problem IS NULL, CASE WHEN problem IS NULL THEN r ->> 'bolt11' END,
                        CASE WHEN problem IS NULL THEN hash END, CASE WHEN problem IS NULL THEN net END,
                        left(problem, 500);
END;
$$;

CREATE FUNCTION payledger.test_receiver_wallet(wallet uuid, amount_msat bigint DEFAULT 1000)
RETURNS TABLE (ok boolean, bolt11 text, payment_hash text, network text, error text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger_internal.test_receiver_wallet(wallet, NULL, amount_msat);
$$;
GRANT EXECUTE ON FUNCTION payledger.test_receiver_wallet(uuid, bigint) TO payledger_app;

-- The end user tries one of their own wallets (as when attaching it).
CREATE FUNCTION payledger.test_my_receiver_wallet(wallet uuid, amount_msat bigint DEFAULT 1000)
RETURNS TABLE (ok boolean, bolt11 text, payment_hash text, network text, error text)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger_internal.test_receiver_wallet(wallet, payledger_internal.signed_in_user('trying a wallet'),
                                                          amount_msat);
$$;
GRANT EXECUTE ON FUNCTION payledger.test_my_receiver_wallet(uuid, bigint) TO payledger_enduser;

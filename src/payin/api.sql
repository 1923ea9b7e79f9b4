-- payledger pay-ins: registries, creation, the state trigger, transitions,
-- refunds, retries, statistics and audit. See docs/payins.md.

---------------------------------------------------------------------------
-- Argument helpers (22023 on a bad shape, never a cast error)
---------------------------------------------------------------------------

-- A batch size or limit: NULL is 22004, less than 1 is 22023.
CREATE FUNCTION payledger_internal.require_limit(value integer, name text)
RETURNS void LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'argument "%" must not be null', name USING ERRCODE = '22004';
    END IF;
    IF value < 1 THEN
        RAISE EXCEPTION '% must be a positive integer, got %', name, value USING ERRCODE = '22023';
    END IF;
END;
$$;

CREATE FUNCTION payledger_internal.json_uuid(v jsonb, what text)
RETURNS uuid LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF jsonb_typeof(v) = 'string'
       AND (v #>> '{}') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN (v #>> '{}')::uuid;
    END IF;
    RAISE EXCEPTION '% must be a uuid string, got %', what, coalesce(left(v::text, 60), 'nothing')
        USING ERRCODE = '22023';
END;
$$;

---------------------------------------------------------------------------
-- Registries (operators)
---------------------------------------------------------------------------

CREATE FUNCTION payledger.register_payin_type(
    type           text,
    description    text,
    allow_external boolean DEFAULT true,
    withdrawal     boolean DEFAULT false,
    max_retries    integer DEFAULT 5,
    p2p_fallback   text DEFAULT 'credits')
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    existing payledger.payin_types;
BEGIN
    PERFORM payledger_internal.require(type, 'type');
    PERFORM payledger_internal.require(description, 'description');
    IF type !~ '^[A-Za-z][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pay-in type % is not valid', quote_literal(type) USING ERRCODE = '22023';
    END IF;
    IF max_retries < 0 OR allow_external IS NULL OR withdrawal IS NULL THEN
        RAISE EXCEPTION 'max_retries must be >= 0 (or NULL), the flags not null' USING ERRCODE = '22023';
    END IF;
    IF p2p_fallback IS NULL OR p2p_fallback NOT IN ('credits', 'none') THEN
        RAISE EXCEPTION 'p2p_fallback must be credits or none, got %', coalesce(quote_literal(p2p_fallback), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payin_types AS t (type, description, allow_external, withdrawal, max_retries, p2p_fallback)
    VALUES (register_payin_type.type, register_payin_type.description, register_payin_type.allow_external,
            register_payin_type.withdrawal, register_payin_type.max_retries, register_payin_type.p2p_fallback)
    ON CONFLICT ON CONSTRAINT payin_types_pkey DO NOTHING;
    SELECT * INTO existing FROM payledger.payin_types t WHERE t.type = register_payin_type.type;
    IF (existing.allow_external, existing.withdrawal, existing.max_retries, existing.p2p_fallback)
       IS DISTINCT FROM (allow_external, withdrawal, max_retries, p2p_fallback) THEN
        RAISE EXCEPTION 'pay-in type % already exists with other settings', type USING ERRCODE = 'PL014';
    END IF;
    RETURN type;
END;
$$;

CREATE FUNCTION payledger.register_payout_type(type text, description text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(type, 'type');
    PERFORM payledger_internal.require(description, 'description');
    IF type !~ '^[A-Za-z][A-Za-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'pay-out type % is not valid', quote_literal(type) USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payout_types AS t (type, description)
    VALUES (register_payout_type.type, register_payout_type.description)
    ON CONFLICT ON CONSTRAINT payout_types_pkey DO NOTHING;
    RETURN type;
END;
$$;

-- shares: [{"role": "founder", "payout_type": "TERRITORY_REVENUE", "percent": 21}, …,
--          {"role": "pool", "payout_type": "REWARDS_POOL", "percent": 9, "account": "<uuid>"}]
-- Percents are exact numerics that sum to 100; each share is floored to a whole
-- minor unit and the rounding remainder goes to remainder_role.
CREATE FUNCTION payledger.define_split_rule(name text, shares jsonb, remainder_role text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    s jsonb;
    total numeric := 0;
    roles text[] := '{}';
    existing payledger.split_rules;
    pct numeric;
BEGIN
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(shares, 'shares');
    PERFORM payledger_internal.require(remainder_role, 'remainder_role');
    IF name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'split rule name % is not valid', quote_literal(name) USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(shares) <> 'array' OR jsonb_array_length(shares) = 0 THEN
        RAISE EXCEPTION 'shares must be a non-empty JSON array' USING ERRCODE = '22023';
    END IF;
    FOR s IN SELECT value FROM jsonb_array_elements(shares) LOOP
        IF jsonb_typeof(s) <> 'object' OR jsonb_typeof(s -> 'role') <> 'string' OR jsonb_typeof(s -> 'percent') <> 'number'
           OR jsonb_typeof(s -> 'payout_type') <> 'string' THEN
            RAISE EXCEPTION 'each share needs "role", "payout_type" and a numeric "percent": %', s USING ERRCODE = '22023';
        END IF;
        pct := (s ->> 'percent')::numeric;
        IF pct <= 0 OR pct > 100 THEN
            RAISE EXCEPTION 'a share''s percent must be in (0, 100], got %', pct USING ERRCODE = '22023';
        END IF;
        IF (s ->> 'role') = ANY (roles) THEN
            RAISE EXCEPTION 'role % appears twice', s ->> 'role' USING ERRCODE = '22023';
        END IF;
        IF NOT EXISTS (SELECT 1 FROM payledger.payout_types t WHERE t.type = s ->> 'payout_type') THEN
            RAISE EXCEPTION 'pay-out type % is not registered', quote_literal(s ->> 'payout_type') USING ERRCODE = 'PL022';
        END IF;
        IF s ? 'account' AND NOT EXISTS (SELECT 1 FROM payledger.accounts a
                                         WHERE a.id = payledger_internal.json_uuid(s -> 'account', 'account')
                                           AND a.parent_id IS NULL) THEN
            RAISE EXCEPTION 'account % does not exist', s ->> 'account' USING ERRCODE = 'PL002';
        END IF;
        roles := roles || (s ->> 'role');
        total := total + pct;
    END LOOP;
    IF total <> 100 THEN
        RAISE EXCEPTION 'shares must sum to 100 percent, got %', total USING ERRCODE = '22023';
    END IF;
    IF NOT remainder_role = ANY (roles) THEN
        RAISE EXCEPTION 'remainder_role % is not one of the shares'' roles', quote_literal(remainder_role)
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.split_rules AS r (name, shares, remainder_role)
    VALUES (define_split_rule.name, define_split_rule.shares, define_split_rule.remainder_role)
    ON CONFLICT ON CONSTRAINT split_rules_pkey DO NOTHING;
    SELECT * INTO existing FROM payledger.split_rules r WHERE r.name = define_split_rule.name;
    IF existing.shares <> shares OR existing.remainder_role <> remainder_role THEN
        RAISE EXCEPTION 'split rule % already exists with other shares', name USING ERRCODE = 'PL014';
    END IF;
    RETURN name;
END;
$$;

-- The pay-outs a split rule gives for a cost: [{"type", "account", "amount", "role"}]
-- (what create_payin computes with split => rule; a preview).
CREATE FUNCTION payledger.split_payouts(rule text, cost bigint, payees jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    PERFORM payledger_internal.require(rule, 'split');
    PERFORM payledger_internal.require(cost, 'cost');
    SELECT * INTO r FROM payledger_internal.split_payouts_core(rule, cost, payees);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    RETURN r.payouts;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.split_payouts(text, bigint, jsonb) TO payledger_app;

---------------------------------------------------------------------------
-- Money of a transition (called by the state trigger)
---------------------------------------------------------------------------

-- PAID: the escrowed custodial part and the external part go to the pay-outs.
CREATE FUNCTION payledger_internal.payin_pay_out(p payledger.payins)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    postings jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object('account', o.account_id, 'amount', o.amount) ORDER BY o.seq) INTO postings
      FROM payledger.payouts o WHERE o.payin_id = p.id;
    IF p.custodial_amount > 0 THEN
        postings := postings || jsonb_build_object('account', p.escrow_account, 'amount', -p.custodial_amount);
    END IF;
    IF p.external_amount > 0 THEN
        postings := postings || jsonb_build_object('account', p.external_account, 'amount', -p.external_amount);
    END IF;
    RETURN (payledger_internal.apply_as('payin', jsonb_build_object(
        'postings', postings, 'kind', 'payin_paid', 'metadata', jsonb_build_object('payin', p.id)))).journal_id;
END;
$$;

-- FAILED or CANCELLED: every custodial leg goes back to its account, in one
-- journal, with a refund record per leg.
CREATE FUNCTION payledger_internal.payin_release(p payledger.payins)
RETURNS uuid LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    postings jsonb;
    j uuid;
BEGIN
    SELECT jsonb_agg(jsonb_build_object('account', l.account_id, 'amount', l.amount) ORDER BY l.seq) INTO postings
      FROM payledger.payin_legs l WHERE l.payin_id = p.id AND l.method = 'custodial' AND l.amount > 0;
    postings := postings || jsonb_build_object('account', p.escrow_account, 'amount', -p.custodial_amount);
    j := (payledger_internal.apply_as('payin', jsonb_build_object(
        'postings', postings, 'kind', 'payin_release', 'metadata', jsonb_build_object('payin', p.id)))).journal_id;
    INSERT INTO payledger.payin_refunds (payin_id, journal_id, kind, seq, owner_id, from_account, to_account, amount, reason)
    SELECT p.id, j, 'release', l.seq, p.owner_id, p.escrow_account, l.account_id, l.amount, p.failure_reason::text
      FROM payledger.payin_legs l WHERE l.payin_id = p.id AND l.method = 'custodial' AND l.amount > 0;
    RETURN j;
END;
$$;

---------------------------------------------------------------------------
-- The state trigger: any UPDATE of a pay-in, whoever runs it
---------------------------------------------------------------------------

CREATE FUNCTION payledger_internal.payins_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    t payledger.payin_transitions;
    violation text;
BEGIN
    <<judge>>
    BEGIN
        IF TG_OP = 'INSERT' THEN
            -- (a restore inserts rows in their current state)
            IF NEW.parent_id IS NULL AND NEW.initial_state NOT IN
                   ('PENDING_INVOICE_CREATION', 'PENDING_INVOICE_WRAP', 'PENDING_WITHDRAWAL', 'PAID') THEN
                RAISE EXCEPTION 'a pay-in cannot start in state %', NEW.initial_state USING ERRCODE = 'PL020';
            END IF;
            EXIT judge;
        END IF;
        -- What a pay-in is never changes; only its state and what follows from it.
        IF (NEW.id, NEW.owner_id, NEW.type, NEW.asset, NEW.cost, NEW.initial_state, NEW.created_at,
            NEW.custodial_amount, NEW.external_amount, NEW.external_method, NEW.external_account, NEW.escrow_account,
            NEW.open_journal, NEW.parent_id, NEW.genesis_id, NEW.predecessor_id, NEW.retry_count, NEW.retry_policy,
            NEW.idempotency_key, NEW.request_hash, NEW.metadata)
           IS DISTINCT FROM
           (OLD.id, OLD.owner_id, OLD.type, OLD.asset, OLD.cost, OLD.initial_state, OLD.created_at,
            OLD.custodial_amount, OLD.external_amount, OLD.external_method, OLD.external_account, OLD.escrow_account,
            OLD.open_journal, OLD.parent_id, OLD.genesis_id, OLD.predecessor_id, OLD.retry_count, OLD.retry_policy,
            OLD.idempotency_key, OLD.request_hash, OLD.metadata) THEN
            RAISE EXCEPTION 'pay-in %: only its state, failure reason, external reference, successor and refunds change', OLD.id
                USING ERRCODE = 'PL015';
        END IF;
        IF (OLD.external_ref IS NOT NULL AND NEW.external_ref IS DISTINCT FROM OLD.external_ref)
           OR (OLD.successor_id IS NOT NULL AND NEW.successor_id IS DISTINCT FROM OLD.successor_id)
           OR NEW.refunded < OLD.refunded THEN
            RAISE EXCEPTION 'pay-in %: the external reference and successor are set once, refunds only grow', OLD.id
                USING ERRCODE = 'PL015';
        END IF;
        IF NEW.successor_id IS DISTINCT FROM OLD.successor_id AND OLD.state <> 'FAILED' THEN
            RAISE EXCEPTION 'pay-in % is % and cannot have a successor', OLD.id, OLD.state USING ERRCODE = 'PL024';
        END IF;
        IF NEW.state = OLD.state THEN
            IF (NEW.paid_journal, NEW.release_journal, NEW.state_changed_at, NEW.external_cancel)
               IS DISTINCT FROM (OLD.paid_journal, OLD.release_journal, OLD.state_changed_at, OLD.external_cancel)
               OR (NEW.failure_reason IS DISTINCT FROM OLD.failure_reason) THEN
                RAISE EXCEPTION 'pay-in %: journals, times and reasons change only with the state', OLD.id
                    USING ERRCODE = 'PL015';
            END IF;
            EXIT judge;
        END IF;

        SELECT * INTO t FROM payledger.payin_transitions x WHERE x.from_state = OLD.state AND x.to_state = NEW.state;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pay-in % cannot move from % to %', OLD.id, OLD.state, NEW.state
                USING ERRCODE = 'PL020', HINT = 'The allowed moves are in payledger.payin_transitions.';
        END IF;
        IF OLD.parent_id IS NOT NULL AND current_setting('payledger.moving_children_of', true) IS DISTINCT FROM OLD.parent_id::text THEN
            RAISE EXCEPTION 'pay-in % moves with its parent %', OLD.id, OLD.parent_id USING ERRCODE = 'PL020';
        END IF;
        IF t.default_reason IS NOT NULL THEN
            NEW.failure_reason := coalesce(NEW.failure_reason, t.default_reason);
        ELSIF NEW.failure_reason IS NOT NULL THEN
            RAISE EXCEPTION 'a failure reason goes only with a failing move, not % to %', OLD.state, NEW.state
                USING ERRCODE = '22023';
        END IF;
        NEW.state_changed_at := clock_timestamp();
        NEW.paid_journal := OLD.paid_journal;
        NEW.release_journal := OLD.release_journal;
        NEW.external_cancel := OLD.external_cancel;
        -- what other modules lock before the accounts (src/payin/lifecycle.sql)
        PERFORM payledger_internal.payin_run_lock(NEW);
        IF NEW.state = 'PAID' THEN
            NEW.paid_journal := payledger_internal.payin_pay_out(NEW);
        ELSIF NEW.state IN ('FAILED', 'CANCELLED') THEN
            IF NEW.custodial_amount > 0 AND OLD.release_journal IS NULL THEN
                NEW.release_journal := payledger_internal.payin_release(NEW);
            END IF;
            NEW.external_cancel := NEW.external_amount > 0;
        END IF;
    END judge;
    -- the row's rules (payledger_internal.payin_row_violation, inlined here)
    violation := payledger_internal.payin_row_violation(NEW);
    IF violation IS NOT NULL THEN
        -- (worded as PostgreSQL words a CHECK's failure)
        RAISE EXCEPTION 'new row for relation "payins" violates check constraint "%"', violation
            USING ERRCODE = '23514', CONSTRAINT = violation, TABLE = 'payins', SCHEMA = 'payledger';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER payins_guard BEFORE INSERT OR UPDATE ON payledger.payins
    FOR EACH ROW EXECUTE FUNCTION payledger_internal.payins_guard();

-- After a move: record it, move the children the same way, then run what
-- other modules registered for the state reached (src/payin/lifecycle.sql).
CREATE FUNCTION payledger_internal.payins_moved() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    outer_setting text := current_setting('payledger.moving_children_of', true);
BEGIN
    INSERT INTO payledger.payin_history (payin_id, to_state, from_state, owner_id, failure_reason, at)
    VALUES (NEW.id, NEW.state, OLD.state, NEW.owner_id, NEW.failure_reason, NEW.state_changed_at);
    IF EXISTS (SELECT 1 FROM payledger.payins c WHERE c.parent_id = NEW.id) THEN
        PERFORM set_config('payledger.moving_children_of', NEW.id::text, true);
        UPDATE payledger.payins c
           SET state = NEW.state,
               failure_reason = CASE WHEN NEW.state IN ('FAILED', 'CANCELLED', 'FAILED_FORWARD') THEN NEW.failure_reason END
         WHERE c.parent_id = NEW.id AND c.state = OLD.state;
        PERFORM set_config('payledger.moving_children_of', coalesce(outer_setting, ''), true);
    END IF;
    PERFORM payledger_internal.payin_run_reached(NEW);
    RETURN NULL;
END;
$$;

CREATE TRIGGER payins_moved AFTER UPDATE OF state ON payledger.payins
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION payledger_internal.payins_moved();

-- Pay-outs sum to their pay-in's cost, checked for each INSERT statement
-- (the API writes a pay-in's pay-outs in one statement, and so does a
-- restore's COPY). That the legs add up is checked by check_invariants().
CREATE FUNCTION payledger_internal.payouts_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    n record;
    cost bigint;
    total bigint;
BEGIN
    -- one pay-in per API call: a loop of index lookups, not a join the
    -- planner would have to guess the size of
    FOR n IN SELECT DISTINCT x.payin_id FROM new_payouts x LOOP
        SELECT p.cost INTO cost FROM payledger.payins p WHERE p.id = n.payin_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pay-outs of pay-in %, which does not exist', n.payin_id USING ERRCODE = '23503';
        END IF;
        SELECT sum(o.amount) INTO total FROM payledger.payouts o WHERE o.payin_id = n.payin_id;
        IF total <> cost THEN
            RAISE EXCEPTION 'pay-outs of pay-in % sum to %, not its cost %', n.payin_id, total, cost
                USING ERRCODE = 'PL021';
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER payouts_guard AFTER INSERT ON payledger.payouts
    REFERENCING NEW TABLE AS new_payouts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.payouts_guard();

---------------------------------------------------------------------------
-- Creating a pay-in
---------------------------------------------------------------------------

-- methods: [{"account": <uuid>}, …, {"external": "invoice", "unit": 1000}]
--   or with an explicit split: [{"account": a, "amount": 20}, …, {"external": "invoice", "amount": 60}]
-- payouts: [{"type": "ZAP", "account": <uuid>, "amount": 70}, …], or split + payees.
-- The work is done by payin_create_core (src/payin/create.rs).
CREATE FUNCTION payledger.create_payin(
    payer           text,
    type            text,
    asset           text,
    cost            bigint,
    methods         jsonb,
    payouts         jsonb DEFAULT NULL,
    split           text DEFAULT NULL,
    payees          jsonb DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    parent          uuid DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    OUT payin_id uuid, OUT state payledger.payin_state, OUT custodial_amount bigint, OUT external_amount bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM payledger_internal.payin_create_core(payer, type, asset, cost, methods, payouts, split, payees,
                                                     idempotency_key, parent, metadata, NULL, NULL, NULL, NULL);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    -- paid at creation: what other modules do on PAID (src/payin/lifecycle.sql)
    IF r.state = 'PAID' AND NOT r.replayed THEN
        PERFORM payledger_internal.payin_reached(r.payin_id);
    END IF;
    payin_id := r.payin_id;
    state := r.state;
    custodial_amount := r.custodial_amount;
    external_amount := r.external_amount;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.create_payin(text, text, text, bigint, jsonb, jsonb, text, jsonb, text, uuid, jsonb) TO payledger_app;

---------------------------------------------------------------------------
-- Transitions
---------------------------------------------------------------------------

-- Move a pay-in, guarded by the states it may come from. Two actors racing
-- (a webhook and the reconciler) move it once: the loser gets changed = false
-- and the state the winner left. Moving a pay-in that is not final from a
-- state the table does not allow is an error (PL020).
CREATE FUNCTION payledger.transition_payin(
    payin        uuid,
    to_state     payledger.payin_state,
    reason       payledger.payin_failure_reason DEFAULT NULL,
    external_ref text DEFAULT NULL)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    cur payledger.payins;
    from_states payledger.payin_state[];
BEGIN
    PERFORM payledger_internal.require(payin, 'payin');
    PERFORM payledger_internal.require(to_state, 'to_state');
    -- An array, not a subquery: when a concurrent move commits first, the
    -- UPDATE re-checks its condition against the new row version, and a join
    -- would re-check against the transition row it had matched before.
    SELECT array_agg(t.from_state) INTO from_states FROM payledger.payin_transitions t
     WHERE t.to_state = transition_payin.to_state;
    UPDATE payledger.payins p
       SET state = transition_payin.to_state,
           failure_reason = coalesce(transition_payin.reason, p.failure_reason),
           external_ref = coalesce(transition_payin.external_ref, p.external_ref)
     WHERE p.id = transition_payin.payin AND p.state = ANY (from_states)
    RETURNING * INTO cur;
    IF FOUND THEN
        RETURN QUERY SELECT true, cur.state, cur.failure_reason;
        RETURN;
    END IF;
    SELECT * INTO cur FROM payledger.payins p WHERE p.id = transition_payin.payin;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF cur.state = to_state OR cur.state IN ('PAID', 'FAILED')
       OR (cur.state = 'CANCELLED' AND to_state <> 'FAILED') THEN
        RETURN QUERY SELECT false, cur.state, cur.failure_reason;
        RETURN;
    END IF;
    RAISE EXCEPTION 'pay-in % cannot move from % to %', payin, cur.state, to_state
        USING ERRCODE = 'PL020', HINT = 'The allowed moves are in payledger.payin_transitions.';
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.transition_payin(uuid, payledger.payin_state, payledger.payin_failure_reason, text) TO payledger_app;

CREATE FUNCTION payledger.settle_payin(payin uuid)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'PAID');
$$;
GRANT EXECUTE ON FUNCTION payledger.settle_payin(uuid) TO payledger_app;

CREATE FUNCTION payledger.fail_payin(payin uuid, reason payledger.payin_failure_reason DEFAULT NULL)
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'FAILED', reason);
$$;
GRANT EXECUTE ON FUNCTION payledger.fail_payin(uuid, payledger.payin_failure_reason) TO payledger_app;

CREATE FUNCTION payledger.cancel_payin(payin uuid, reason payledger.payin_failure_reason DEFAULT 'USER_CANCELLED')
RETURNS TABLE (changed boolean, state payledger.payin_state, failure_reason payledger.payin_failure_reason)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT * FROM payledger.transition_payin(payin, 'CANCELLED', reason);
$$;
GRANT EXECUTE ON FUNCTION payledger.cancel_payin(uuid, payledger.payin_failure_reason) TO payledger_app;

---------------------------------------------------------------------------
-- Refunds of a PAID pay-in, retries of a FAILED one
---------------------------------------------------------------------------

-- Take back amount (default: all that is left) from the pay-outs, in
-- proportion to what each still holds, into to_account (default: the first
-- custodial account the payer used). A new journal; history is never edited.
CREATE FUNCTION payledger.refund_payin(
    payin           uuid,
    amount          bigint DEFAULT NULL,
    to_account      uuid DEFAULT NULL,
    reason          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL)
RETURNS uuid LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
    prior record;
    left_total bigint;
    dest payledger.accounts;
    postings jsonb;
    j uuid;
    seqs smallint[];
    accounts uuid[];
    shares bigint[];
BEGIN
    PERFORM payledger_internal.require(payin, 'payin');
    IF idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('payledger.refund:' || idempotency_key, 0));
        SELECT r.payin_id, r.journal_id, sum(r.amount) AS total, min(r.to_account::text) AS dest INTO prior
          FROM payledger.payin_refunds r WHERE r.idempotency_key = refund_payin.idempotency_key
         GROUP BY r.payin_id, r.journal_id;
        IF FOUND THEN
            IF prior.payin_id <> payin OR (amount IS NOT NULL AND prior.total <> amount)
               OR (to_account IS NOT NULL AND prior.dest <> to_account::text) THEN
                RAISE EXCEPTION 'idempotency key % was used for another refund', quote_literal(idempotency_key)
                    USING ERRCODE = 'PL008', DETAIL = format('journal %s', prior.journal_id);
            END IF;
            RETURN prior.journal_id;
        END IF;
    END IF;
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF p.state <> 'PAID' THEN
        RAISE EXCEPTION 'pay-in % is %: only a PAID pay-in is refunded', payin, p.state USING ERRCODE = 'PL020',
            HINT = 'A pending pay-in is failed or cancelled instead; that returns its custodial legs.';
    END IF;
    left_total := p.cost - p.refunded;
    amount := coalesce(amount, left_total);
    IF amount <= 0 THEN
        RAISE EXCEPTION 'a refund must be positive, got %', amount USING ERRCODE = 'PL001';
    END IF;
    IF amount > left_total THEN
        RAISE EXCEPTION 'pay-in % has % left to refund, asked for %', payin, left_total, amount USING ERRCODE = 'PL023';
    END IF;
    IF to_account IS NULL THEN
        SELECT l.account_id INTO to_account FROM payledger.payin_legs l
         WHERE l.payin_id = p.id AND l.method = 'custodial' ORDER BY l.seq LIMIT 1;
        IF to_account IS NULL THEN
            RAISE EXCEPTION 'pay-in % used no balance: name the account to refund to', payin USING ERRCODE = '22023';
        END IF;
    END IF;
    SELECT * INTO dest FROM payledger.accounts a WHERE a.id = to_account;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % does not exist', to_account USING ERRCODE = 'PL002';
    ELSIF dest.asset <> p.asset THEN
        RAISE EXCEPTION 'account % holds %, the pay-in was paid in %', to_account, dest.asset, p.asset USING ERRCODE = 'PL004';
    END IF;
    PERFORM payledger_internal.refuse_managed(dest);

    -- Each pay-out gives back its share of what it still holds; cumulative
    -- rounding makes the shares sum to the amount exactly.
    SELECT array_agg(x.seq ORDER BY x.seq), array_agg(x.account_id ORDER BY x.seq), array_agg(x.share ORDER BY x.seq)
      INTO seqs, accounts, shares
      FROM (SELECT s.seq, s.account_id,
           (floor(s.cum * amount::numeric / left_total) - floor((s.cum - s.holds) * amount::numeric / left_total))::bigint AS share
      FROM (SELECT o.seq, o.account_id, o.amount - coalesce(r.back, 0) AS holds,
                   sum(o.amount - coalesce(r.back, 0)) OVER (ORDER BY o.seq) AS cum
              FROM payledger.payouts o
              LEFT JOIN (SELECT r.seq, sum(r.amount) AS back FROM payledger.payin_refunds r
                          WHERE r.payin_id = p.id AND r.kind = 'refund' GROUP BY r.seq) r ON r.seq = o.seq
             WHERE o.payin_id = p.id) s) x
     WHERE x.share > 0;
    SELECT jsonb_agg(jsonb_build_object('account', x.a, 'amount', -x.amt))
           || jsonb_build_object('account', to_account, 'amount', amount)
      INTO postings FROM unnest(accounts, shares) x(a, amt);
    j := (payledger_internal.apply_as('payin', jsonb_build_object(
        'postings', postings, 'kind', 'payin_refund',
        'metadata', jsonb_build_object('payin', p.id, 'reason', reason)))).journal_id;
    INSERT INTO payledger.payin_refunds (payin_id, journal_id, kind, seq, owner_id, from_account, to_account, amount,
                                         reason, idempotency_key)
    SELECT p.id, j, 'refund', x.seq, p.owner_id, x.a, to_account, x.amt, reason, idempotency_key
      FROM unnest(seqs, accounts, shares) x(seq, a, amt);
    UPDATE payledger.payins x SET refunded = x.refunded + amount WHERE x.id = p.id;
    RETURN j;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.refund_payin(uuid, bigint, uuid, text, text) TO payledger_app;

-- A new pay-in for a FAILED one, chained to it (predecessor, genesis, count).
-- Methods and pay-outs default to the failed pay-in's (amounts re-split by
-- today's balances); policy records why the mix differs (e.g. 'credits_fallback').
CREATE FUNCTION payledger.retry_payin(
    payin           uuid,
    methods         jsonb DEFAULT NULL,
    payouts         jsonb DEFAULT NULL,
    split           text DEFAULT NULL,
    payees          jsonb DEFAULT NULL,
    policy          text DEFAULT NULL,
    idempotency_key text DEFAULT NULL,
    OUT payin_id uuid, OUT state payledger.payin_state, OUT custodial_amount bigint, OUT external_amount bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    old payledger.payins;
    max_retries integer;
    r record;
BEGIN
    PERFORM payledger_internal.require(payin, 'payin');
    IF idempotency_key IS NOT NULL THEN
        SELECT p.* INTO old FROM payledger.payins p WHERE p.idempotency_key = retry_payin.idempotency_key;
        IF FOUND AND old.predecessor_id = payin THEN
            payin_id := old.id; state := old.state;
            custodial_amount := old.custodial_amount; external_amount := old.external_amount;
            RETURN;
        END IF;
    END IF;
    -- The row lock makes concurrent retries queue; the second sees the successor.
    SELECT * INTO old FROM payledger.payins p WHERE p.id = payin FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    IF old.state <> 'FAILED' THEN
        RAISE EXCEPTION 'pay-in % is %: only a FAILED pay-in is retried', payin, old.state USING ERRCODE = 'PL024';
    ELSIF old.successor_id IS NOT NULL THEN
        RAISE EXCEPTION 'pay-in % was already retried', payin USING ERRCODE = 'PL024',
            DETAIL = format('successor %s', old.successor_id);
    ELSIF old.parent_id IS NOT NULL THEN
        RAISE EXCEPTION 'pay-in % is a child: retry its parent %', payin, old.parent_id USING ERRCODE = 'PL024';
    END IF;
    SELECT t.max_retries INTO max_retries FROM payledger.payin_types t WHERE t.type = old.type;
    IF old.retry_count >= max_retries THEN
        RAISE EXCEPTION 'pay-in % was retried % times, the limit for % is %', payin, old.retry_count, old.type, max_retries
            USING ERRCODE = 'PL024';
    END IF;
    IF methods IS NULL THEN
        SELECT jsonb_agg(l.options - 'amount' ORDER BY l.seq) INTO methods FROM payledger.payin_legs l WHERE l.payin_id = old.id;
    END IF;
    IF payouts IS NULL AND split IS NULL THEN
        SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('type', o.type, 'account', o.account_id, 'amount', o.amount,
                                                              'role', o.role)) ORDER BY o.seq)
          INTO payouts FROM payledger.payouts o WHERE o.payin_id = old.id;
    END IF;
    SELECT * INTO r FROM payledger_internal.payin_create_core(old.owner_id, old.type, old.asset, old.cost, methods, payouts, split,
                                                     payees, idempotency_key, NULL, old.metadata, old.id,
                                                     old.genesis_id, old.retry_count, policy);
    IF r.sqlstate IS NOT NULL THEN
        PERFORM payledger_internal.raise_failure(r.sqlstate, r.message, r.detail);
    END IF;
    IF r.state = 'PAID' AND NOT r.replayed THEN
        PERFORM payledger_internal.payin_reached(r.payin_id);
    END IF;
    UPDATE payledger.payins p SET successor_id = r.payin_id WHERE p.id = old.id;
    payin_id := r.payin_id; state := r.state;
    custodial_amount := r.custodial_amount; external_amount := r.external_amount;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.retry_payin(uuid, jsonb, jsonb, text, jsonb, text, text) TO payledger_app;

---------------------------------------------------------------------------
-- Statistics and audit
---------------------------------------------------------------------------

-- Spending and earning per owner, type and UTC day, for pay-ins that reached
-- PAID in [since, until): 'spent' (payer, pay-in type), 'earned' (payee,
-- pay-out type), and refunds: 'refunded' (payer) and 'clawed_back' (payee).
CREATE FUNCTION payledger.payin_stats(since timestamptz, until timestamptz, owner text DEFAULT NULL)
RETURNS TABLE (day date, owner_id text, direction text, type text, asset text, amount bigint, count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT (p.state_changed_at AT TIME ZONE 'UTC')::date, p.owner_id, 'spent', p.type, p.asset, sum(p.cost)::bigint, count(*)
      FROM payledger.payins p
     WHERE p.state = 'PAID' AND p.state_changed_at >= since AND p.state_changed_at < until
       AND (owner IS NULL OR p.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (p.state_changed_at AT TIME ZONE 'UTC')::date, o.owner_id, 'earned', o.type, p.asset, sum(o.amount)::bigint, count(*)
      FROM payledger.payouts o JOIN payledger.payins p ON p.id = o.payin_id
     WHERE p.state = 'PAID' AND p.state_changed_at >= since AND p.state_changed_at < until
       AND (owner IS NULL OR o.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (r.created_at AT TIME ZONE 'UTC')::date, r.owner_id, 'refunded', p.type, p.asset, sum(r.amount)::bigint,
           count(DISTINCT r.journal_id)
      FROM payledger.payin_refunds r JOIN payledger.payins p ON p.id = r.payin_id
     WHERE r.kind = 'refund' AND r.created_at >= since AND r.created_at < until AND (owner IS NULL OR r.owner_id = owner)
     GROUP BY 1, 2, 4, 5
    UNION ALL
    SELECT (r.created_at AT TIME ZONE 'UTC')::date, o.owner_id, 'clawed_back', o.type, p.asset, sum(r.amount)::bigint, count(*)
      FROM payledger.payin_refunds r
      JOIN payledger.payouts o ON o.payin_id = r.payin_id AND o.seq = r.seq
      JOIN payledger.payins p ON p.id = r.payin_id
     WHERE r.kind = 'refund' AND r.created_at >= since AND r.created_at < until AND (owner IS NULL OR o.owner_id = owner)
     GROUP BY 1, 2, 4, 5
     ORDER BY 1, 2, 3, 4;
$$;
GRANT EXECUTE ON FUNCTION payledger.payin_stats(timestamptz, timestamptz, text) TO payledger_app;

-- Every entry a pay-in caused (opening, pay-out, release, refunds): who spent
-- and earned what, and each balance before and after.
CREATE FUNCTION payledger.payin_audit(payin uuid)
RETURNS TABLE (journal_id uuid, journal_kind text, created_at timestamptz, account_id uuid, owner_id text,
               account_kind text, account_name text, asset text, amount bigint, balance_before bigint, balance_after bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    p payledger.payins;
BEGIN
    PERFORM payledger_internal.require(payin, 'payin');
    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pay-in % does not exist', payin USING ERRCODE = 'PL019';
    END IF;
    RETURN QUERY
    SELECT j.id, j.kind, j.created_at, e.account_id, e.owner_id, a.kind, a.name, e.asset, e.amount,
           e.balance_after - e.amount, e.balance_after
      FROM (SELECT DISTINCT x.id FROM (
                SELECT unnest(ARRAY[p.open_journal, p.paid_journal, p.release_journal])
                UNION ALL SELECT r.journal_id FROM payledger.payin_refunds r WHERE r.payin_id = p.id) x(id)
             WHERE x.id IS NOT NULL) js
      JOIN payledger.journals j ON j.id = js.id
      CROSS JOIN LATERAL unnest(j.entry_accounts, j.entry_seqs) WITH ORDINALITY u(acc, seq, n)
      JOIN payledger.entries e ON e.account_id = u.acc AND e.seq = u.seq
      JOIN payledger.accounts a ON a.id = e.account_id
     ORDER BY j.created_at, j.id, u.n;
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.payin_audit(uuid) TO payledger_app;

---------------------------------------------------------------------------
-- Invariants of pay-ins (part of payledger.check_invariants())
---------------------------------------------------------------------------

CREATE FUNCTION payledger_internal.payin_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT 'payin_legs', p.id::text,
           format('custodial legs %s (row %s), external legs %s (row %s) in %s legs',
                  coalesce(l.custodial, 0), p.custodial_amount, coalesce(l.external, 0), p.external_amount, coalesce(l.externals, 0))
      FROM payledger.payins p
      LEFT JOIN (SELECT l.payin_id, sum(l.amount) FILTER (WHERE l.method = 'custodial') AS custodial,
                        sum(l.amount) FILTER (WHERE l.method <> 'custodial') AS external,
                        count(*) FILTER (WHERE l.method <> 'custodial') AS externals
                   FROM payledger.payin_legs l GROUP BY l.payin_id) l ON l.payin_id = p.id
     WHERE coalesce(l.custodial, 0) <> p.custodial_amount OR coalesce(l.external, 0) <> p.external_amount
        OR coalesce(l.externals, 0) > 1
    UNION ALL
    SELECT 'payouts_sum_to_cost', p.id::text, format('pay-outs %s, cost %s', coalesce(o.total, 0), p.cost)
      FROM payledger.payins p
      LEFT JOIN (SELECT o.payin_id, sum(o.amount) AS total FROM payledger.payouts o GROUP BY o.payin_id) o ON o.payin_id = p.id
     WHERE coalesce(o.total, 0) <> p.cost
    UNION ALL
    SELECT 'payin_rows_have_payin', x.payin_id::text, format('%s row without its pay-in', x.t)
      FROM (SELECT l.payin_id, 'leg' AS t FROM payledger.payin_legs l
            UNION ALL SELECT o.payin_id, 'pay-out' FROM payledger.payouts o
            UNION ALL SELECT r.payin_id, 'refund' FROM payledger.payin_refunds r
            UNION ALL SELECT h.payin_id, 'history' FROM payledger.payin_history h) x
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payins p WHERE p.id = x.payin_id)
    UNION ALL
    SELECT 'payin_types_registered', p.id::text, format('pay-in type %s', p.type)
      FROM payledger.payins p WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_types t WHERE t.type = p.type)
    UNION ALL
    SELECT 'payout_types_registered', format('%s/%s', o.payin_id, o.seq), format('pay-out type %s', o.type)
      FROM payledger.payouts o WHERE NOT EXISTS (SELECT 1 FROM payledger.payout_types t WHERE t.type = o.type)
    UNION ALL
    -- the paid journal credits exactly the pay-outs
    SELECT 'payin_paid_out', p.id::text, format('journal %s credits %s, pay-outs %s', p.paid_journal, coalesce(c.total, 0), p.cost)
      FROM payledger.payins p
      LEFT JOIN LATERAL (SELECT sum(e.amount) AS total
                           FROM payledger.journals j, unnest(j.entry_accounts, j.entry_seqs) u(a, s)
                           JOIN payledger.entries e ON e.account_id = u.a AND e.seq = u.s
                          WHERE j.id = p.paid_journal AND e.amount > 0) c ON true
     WHERE p.state = 'PAID' AND coalesce(c.total, 0) <> p.cost
    UNION ALL
    -- the opening journal took exactly the custodial legs
    SELECT 'payin_opened', p.id::text, format('journal %s debits %s, custodial legs %s', p.open_journal, coalesce(d.total, 0), p.custodial_amount)
      FROM payledger.payins p
      LEFT JOIN LATERAL (SELECT -sum(e.amount) AS total
                           FROM payledger.journals j, unnest(j.entry_accounts, j.entry_seqs) u(a, s)
                           JOIN payledger.entries e ON e.account_id = u.a AND e.seq = u.s
                          WHERE j.id = p.open_journal AND e.amount < 0) d ON true
     WHERE coalesce(d.total, 0) <> p.custodial_amount
    UNION ALL
    -- escrow holds the custodial part of its payer's open pay-ins, nothing more
    -- (so nothing is left behind after FAILED or CANCELLED)
    SELECT 'payin_escrow', a.id::text, format('escrow balance %s, open pay-ins hold %s', a.balance, coalesce(s.total, 0))
      FROM payledger.accounts a
      LEFT JOIN (SELECT p.escrow_account, sum(p.custodial_amount) AS total FROM payledger.payins p
                  WHERE p.state NOT IN ('PAID', 'FAILED', 'CANCELLED') GROUP BY p.escrow_account) s ON s.escrow_account = a.id
     WHERE a.kind = 'payin_escrow' AND a.balance <> coalesce(s.total, 0)
    UNION ALL
    SELECT 'payin_released', p.id::text, format('released %s of custodial %s', coalesce(r.total, 0), p.custodial_amount)
      FROM payledger.payins p
      LEFT JOIN (SELECT r.payin_id, sum(r.amount) AS total FROM payledger.payin_refunds r
                  WHERE r.kind = 'release' GROUP BY r.payin_id) r ON r.payin_id = p.id
     WHERE coalesce(r.total, 0) <> CASE WHEN p.state IN ('FAILED', 'CANCELLED') THEN p.custodial_amount ELSE 0 END
    UNION ALL
    SELECT 'payin_refunds', p.id::text, format('refunded %s, refund records %s', p.refunded, coalesce(r.total, 0))
      FROM payledger.payins p
      LEFT JOIN (SELECT r.payin_id, sum(r.amount) AS total FROM payledger.payin_refunds r
                  WHERE r.kind = 'refund' GROUP BY r.payin_id) r ON r.payin_id = p.id
     WHERE coalesce(r.total, 0) <> p.refunded
    UNION ALL
    SELECT 'payout_refunds', format('%s/%s', o.payin_id, o.seq), format('pay-out %s, refunded %s', o.amount, r.total)
      FROM payledger.payouts o
      JOIN (SELECT r.payin_id, r.seq, sum(r.amount) AS total FROM payledger.payin_refunds r
             WHERE r.kind = 'refund' GROUP BY r.payin_id, r.seq) r ON r.payin_id = o.payin_id AND r.seq = o.seq
     WHERE r.total > o.amount
    UNION ALL
    SELECT 'payin_history', p.id::text, format('no history row for its state %s or its first state %s', p.state, p.initial_state)
      FROM payledger.payins p
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = p.id AND h.to_state = p.state)
        OR NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = p.id AND h.to_state = p.initial_state
                                                                  AND h.from_state IS NULL)
    UNION ALL
    SELECT 'payin_child_follows_parent', c.id::text, format('child %s, parent %s is %s', c.state, c.parent_id, p.state)
      FROM payledger.payins c LEFT JOIN payledger.payins p ON p.id = c.parent_id
     WHERE c.parent_id IS NOT NULL AND (p.id IS NULL OR p.state <> c.state)
    UNION ALL
    SELECT 'payin_retry_chain', p.id::text, 'predecessor, successor and genesis do not agree'
      FROM payledger.payins p
      LEFT JOIN payledger.payins prev ON prev.id = p.predecessor_id
      LEFT JOIN payledger.payins nxt ON nxt.id = p.successor_id
     WHERE (p.predecessor_id IS NOT NULL AND (prev.id IS NULL OR prev.successor_id IS DISTINCT FROM p.id
                                               OR p.genesis_id <> coalesce(prev.genesis_id, prev.id)
                                               OR p.retry_count <> prev.retry_count + 1 OR prev.state <> 'FAILED'))
        OR (p.successor_id IS NOT NULL AND (nxt.id IS NULL OR nxt.predecessor_id IS DISTINCT FROM p.id))
$$;

---------------------------------------------------------------------------
-- End-user views
---------------------------------------------------------------------------

CREATE VIEW payledger.my_payins WITH (security_barrier) AS
SELECT p.id, p.type, p.asset, p.cost, p.state, p.failure_reason, p.state_changed_at, p.created_at,
       p.custodial_amount, p.external_amount, p.external_method, p.refunded, p.parent_id,
       p.genesis_id, p.predecessor_id, p.successor_id, p.retry_count, p.metadata
  FROM payledger.payins p
 WHERE p.owner_id = payledger.current_owner_id();

-- What the current user earns: credited once the pay-in is PAID.
CREATE VIEW payledger.my_payouts WITH (security_barrier) AS
SELECT o.payin_id, o.seq, o.type, o.account_id, o.amount, p.asset, p.state = 'PAID' AS credited,
       CASE WHEN p.state = 'PAID' THEN p.state_changed_at END AS credited_at
  FROM payledger.payouts o JOIN payledger.payins p ON p.id = o.payin_id
 WHERE o.owner_id = payledger.current_owner_id();

CREATE VIEW payledger.my_payin_history WITH (security_barrier) AS
SELECT h.payin_id, h.from_state, h.to_state, h.failure_reason, h.at
  FROM payledger.payin_history h
 WHERE h.owner_id = payledger.current_owner_id();

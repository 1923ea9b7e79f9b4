-- payledger events: settle hooks, the application's functions run once when
-- a pay-in reaches PAID, FAILED or CANCELLED (in the settling transaction,
-- retried by the worker when they fail), and the lifecycle handler that
-- writes a pay-in's event and runs its hooks.

-- The hook runs with the search_path of the session that registers it, as
-- it would there: so this wrapper is SECURITY INVOKER and has no SET clause
-- (inside one, current_setting would see the function's own search_path).
CREATE FUNCTION payledger.register_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[] DEFAULT '{PAID}',
    max_attempts integer DEFAULT 10)
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT payledger.define_settle_hook(name, function, on_states, max_attempts,
                                        pg_catalog.current_setting('search_path'));
$$;

CREATE FUNCTION payledger.define_settle_hook(
    name         text,
    function     regprocedure,
    on_states    payledger.payin_state[],
    max_attempts integer,
    caller_search_path text)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(name, 'name');
    PERFORM payledger_internal.require(function, 'function');
    IF name !~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$' THEN
        RAISE EXCEPTION 'a hook''s name is a letter, then up to 62 letters, digits, _, . or -, not %', name
            USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                    WHERE p.oid = function AND p.pronargs = 2 AND p.proargtypes[0] = 'uuid'::regtype
                      AND p.proargtypes[1] = 'payledger.payin_state'::regtype) THEN
        RAISE EXCEPTION 'a settle hook takes (payin uuid, state payledger.payin_state), not %', function
            USING ERRCODE = '22023';
    END IF;
    IF NOT coalesce(on_states <@ '{PAID,FAILED,CANCELLED}'::payledger.payin_state[], false) THEN
        RAISE EXCEPTION 'hooks run on PAID, FAILED or CANCELLED' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.settle_hooks AS h (name, function, on_states, max_attempts, search_path)
    VALUES (name, payledger_internal.proc_name(function), on_states, coalesce(max_attempts, 10), coalesce(caller_search_path, ''))
    ON CONFLICT ON CONSTRAINT settle_hooks_pkey DO UPDATE
       SET function = excluded.function, on_states = excluded.on_states, max_attempts = excluded.max_attempts,
           search_path = excluded.search_path, active = true;
END;
$$;

CREATE FUNCTION payledger.unregister_settle_hook(name text)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.settle_hooks h SET active = false WHERE h.name = unregister_settle_hook.name;
$$;

-- Run one hook run in a subtransaction: a failing hook is recorded (and
-- retried by the worker with backoff), never undoing the settlement.
CREATE FUNCTION payledger_internal.run_hook(hook_name text, payin uuid, state payledger.payin_state)
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h payledger.settle_hooks;
    run payledger.hook_runs;
    msg text;
BEGIN
    SELECT * INTO h FROM payledger.settle_hooks x WHERE x.name = hook_name;
    SELECT * INTO run FROM payledger.hook_runs r
     WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state FOR UPDATE;
    IF run.status <> 'pending' THEN
        RETURN run.status = 'done';
    END IF;
    BEGIN
        -- local to this function call (its SET clause restores ours after)
        PERFORM pg_catalog.set_config('search_path', h.search_path, true);
        EXECUTE format('SELECT %s($1, $2)', h.function::regprocedure::oid::regproc) USING payin, state;
        PERFORM pg_catalog.set_config('search_path', 'payledger, pg_catalog, pg_temp', true);
        UPDATE payledger.hook_runs r SET status = 'done', attempts = r.attempts + 1, done_at = now(),
                                         last_error = NULL, next_attempt_at = NULL
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state;
        RETURN true;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
        UPDATE payledger.hook_runs r
           SET attempts = r.attempts + 1, last_error = left(msg, 500),
               status = CASE WHEN r.attempts + 1 >= h.max_attempts THEN 'failed' ELSE 'pending' END,
               next_attempt_at = CASE WHEN r.attempts + 1 >= h.max_attempts THEN NULL
                                      ELSE now() + payledger_internal.backoff(r.attempts + 1) END
         WHERE r.hook = hook_name AND r.payin_id = payin AND r.state = run_hook.state
        RETURNING * INTO run;
        IF run.status = 'failed' THEN
            PERFORM payledger_internal.emit_event('hook.failed', payin, NULL,
                jsonb_build_object('hook', hook_name, 'payin', payin, 'state', state, 'error', left(msg, 500)));
        END IF;
        RETURN false;
    END;
END;
$$;

CREATE FUNCTION payledger.retry_hooks(max_runs integer DEFAULT 100)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    PERFORM payledger_internal.require_limit(max_runs, 'max_runs');
    FOR r IN SELECT x.hook, x.payin_id, x.state FROM payledger.hook_runs x
              WHERE x.status = 'pending' AND x.next_attempt_at <= now()
              ORDER BY x.next_attempt_at LIMIT max_runs FOR UPDATE SKIP LOCKED LOOP
        PERFORM payledger_internal.run_hook(r.hook, r.payin_id, r.state);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

SELECT payledger_internal.register_housekeeping_step('events', 'hooks_run', 60, 'payledger.retry_hooks(integer)', per_call => 1);

-- A pay-in reached PAID, FAILED or CANCELLED: the outbox event, and the
-- settle hooks, in the same transaction (a handler of the pay-in lifecycle,
-- after the other modules': src/payin/lifecycle.sql).
CREATE FUNCTION payledger_internal.events_payin_reached(p payledger.payins)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    PERFORM payledger_internal.emit_event('payin.' || lower(p.state::text), p.id, p.owner_id,
        jsonb_build_object('payin', p.id, 'type', p.type, 'state', p.state, 'failure_reason', p.failure_reason,
                           'cost', p.cost, 'asset', p.asset, 'at', p.state_changed_at));
    FOR h IN SELECT x.name FROM payledger.settle_hooks x WHERE x.active AND p.state = ANY (x.on_states) LOOP
        INSERT INTO payledger.hook_runs (hook, payin_id, state, status, next_attempt_at)
        VALUES (h.name, p.id, p.state, 'pending', now())
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            PERFORM payledger_internal.run_hook(h.name, p.id, p.state);
        END IF;
    END LOOP;
END;
$$;
SELECT payledger_internal.register_payin_handler('events', 'reached', 900, '{PAID,FAILED,CANCELLED}',
                                        'payledger_internal.events_payin_reached(payledger.payins)');

CREATE FUNCTION payledger_internal.events_invariants()
RETURNS TABLE (invariant text, subject text, detail text)
LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    -- a hook ran at most once per pay-in and state, and only for a state the pay-in reached
    SELECT 'hook_run_state', r.hook || ' ' || r.payin_id, 'the pay-in never reached ' || r.state
      FROM payledger.hook_runs r
     WHERE NOT EXISTS (SELECT 1 FROM payledger.payin_history h WHERE h.payin_id = r.payin_id AND h.to_state = r.state);
$$;

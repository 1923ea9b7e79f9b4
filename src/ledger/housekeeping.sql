-- payledger housekeeping: the steps the background worker (and run_tick)
-- runs after each tick's provider calls. Every module registers its own
-- steps in its own file; this registry sits at the bottom of the install
-- order so that every module, the ledger included, can.
--
-- A step is a function (items integer) RETURNS integer or bigint that does
-- up to `items` pieces of work and returns how many it did. Each call is its
-- own transaction; a step is called again while a call comes back full, at
-- most max_calls times (and within budget). per_call or max_calls NULL mean
-- the tick's batch size. A step that moves money for several owners takes
-- one item per call (one pay-in's accounts per transaction: the lock order,
-- docs/reliability.md); one that moves it in one engine batch, or moves
-- none, takes a batch.

-- Registries keep functions as their signature's text, schema-qualified
-- (resolved when called), never as regprocedure: pg_upgrade refuses a
-- cluster whose tables hold reg* values (their OIDs are not kept), and so
-- would block every major upgrade of payledger's users.
CREATE FUNCTION payledger_internal.proc_name(fn regprocedure)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT fn::text;
$$;

CREATE TABLE payledger.housekeeping_steps (
    step      text PRIMARY KEY CHECK (step ~ '^[a-z][a-z0-9_]{0,62}$'),
    run_order  integer NOT NULL UNIQUE,
    module    text NOT NULL,
    function  text NOT NULL,           -- a signature (payledger_internal.proc_name)
    per_call  integer CHECK (per_call >= 1),
    max_calls integer CHECK (max_calls >= 1),
    budget    interval CHECK (budget > '0')
);
ALTER TABLE payledger.housekeeping_steps ENABLE ROW LEVEL SECURITY;

-- For modules' install scripts.
CREATE FUNCTION payledger_internal.register_housekeeping_step(
    module    text,
    step      text,
    run_order  integer,
    function  regprocedure,
    per_call  integer DEFAULT NULL,
    max_calls integer DEFAULT NULL,
    budget    interval DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc f
                    WHERE f.oid = function AND f.pronargs = 1 AND f.proargtypes[0] = 'integer'::regtype
                      AND f.prorettype IN ('integer'::regtype, 'bigint'::regtype)) THEN
        RAISE EXCEPTION 'a housekeeping step takes (items integer) and returns a count, not %', function
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.housekeeping_steps AS s (step, run_order, module, function, per_call, max_calls, budget)
    VALUES (step, run_order, module, payledger_internal.proc_name(function), per_call, max_calls, budget);
END;
$$;

-- The plan for a batch size: the steps in their order.
CREATE FUNCTION payledger.housekeeping_plan(batch integer DEFAULT 1000)
RETURNS TABLE (step text, per_call integer, max_calls integer, budget interval)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT s.step, coalesce(s.per_call, batch), coalesce(s.max_calls, batch), s.budget
      FROM payledger.housekeeping_steps s ORDER BY s.run_order;
$$;

-- One call of a step; returns how many items it took. A step that fails is
-- reported and skipped until the next tick: the other steps still run, and
-- the worker does not end (and restart) over it.
CREATE FUNCTION payledger.housekeeping_step(step text, per_call integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    fn regprocedure;
    got bigint;
    msg text;
    code text;
BEGIN
    PERFORM payledger_internal.require(step, 'step');
    PERFORM payledger_internal.require(per_call, 'per_call');
    SELECT s.function::regprocedure INTO fn FROM payledger.housekeeping_steps s WHERE s.step = housekeeping_step.step;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown housekeeping step %', step USING ERRCODE = '22023',
            HINT = 'The steps are in payledger.housekeeping_plan().';
    END IF;
    BEGIN
        EXECUTE format('SELECT %s($1)', fn::oid::regproc) INTO got USING per_call;
        RETURN got;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
        RAISE WARNING 'payledger housekeeping: step % failed (%): %', step, code, msg;
        RETURN 0;
    END;
END;
$$;

-- The retry policy of everything the housekeeping tries again (hook runs,
-- invoices, providers): after n failures, 2^n seconds, at most
-- payledger.worker_max_backoff.
CREATE FUNCTION payledger_internal.backoff(n integer)
RETURNS interval LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT make_interval(secs => least(power(2, least(greatest(n, 0), 30)),
                                       payledger.setting_int('worker_max_backoff')));
$$;

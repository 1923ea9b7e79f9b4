-- payledger pay-in lifecycle: what other modules do when a pay-in moves.
--
-- The pay-in module knows no other module. A module that has business with
-- pay-ins (credits grants a paid package, a NIP-90 job is credited by its
-- paid invoice, the outbox writes an event and runs the settle hooks)
-- registers a handler in its own file, and the pay-in module calls the
-- registered handlers in their run_order:
--   lock     in the state trigger, before the move's money is written, when
--            a pay-in moves into one of the handler's states: take the row
--            locks the handler needs later, before the accounts' (the lock
--            order, docs/reliability.md);
--   reached  after the move is recorded (history, children), when a pay-in
--            reaches one of the states, and for a pay-in PAID at creation.
-- A handler is `function(p payledger.payins) RETURNS void`; payin_type NULL
-- means every type. Handlers run in the mover's transaction: one that raises
-- undoes the move.
--
-- Registering compiles the handlers into one PL/pgSQL function per stage
-- (payin_run_lock, payin_run_reached) with the calls written out: PL/pgSQL
-- keeps the plans of static calls, where a dynamic EXECUTE would be planned
-- again for every pay-in.

CREATE TABLE payledger.payin_handlers (
    stage      text NOT NULL CHECK (stage IN ('lock', 'reached')),
    run_order   integer NOT NULL,
    module     text NOT NULL CHECK (module ~ '^[a-z][a-z0-9_]{0,62}$'),
    states     payledger.payin_state[] NOT NULL CHECK (cardinality(states) > 0),
    payin_type text,
    handler    text NOT NULL,  -- a signature (payledger_internal.proc_name)
    PRIMARY KEY (stage, run_order)
);
ALTER TABLE payledger.payin_handlers ENABLE ROW LEVEL SECURITY;

-- (Re)write a stage's function from the table.
CREATE FUNCTION payledger_internal.payin_handlers_compile(stage text)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    calls text := '';
    h record;
BEGIN
    FOR h IN SELECT x.module, x.states, x.payin_type, quote_ident(n.nspname) || '.' || quote_ident(f.proname) AS fn
               FROM payledger.payin_handlers x
               JOIN pg_catalog.pg_proc f ON f.oid = x.handler::regprocedure
               JOIN pg_catalog.pg_namespace n ON n.oid = f.pronamespace
              WHERE x.stage = payin_handlers_compile.stage ORDER BY x.run_order LOOP
        calls := calls || format(E'    -- %s\n    IF p.state = ANY (%L::payledger.payin_state[])%s THEN\n        PERFORM %s(p);\n    END IF;\n',
                                 h.module, h.states,
                                 CASE WHEN h.payin_type IS NOT NULL THEN format(' AND p.type = %L', h.payin_type) ELSE '' END,
                                 h.fn);
    END LOOP;
    EXECUTE format(E'CREATE OR REPLACE FUNCTION payledger_internal.payin_run_%s(p payledger.payins)\n'
                   'RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $body$\n'
                   '-- written by payledger_internal.register_payin_handler() from payledger.payin_handlers\n'
                   'BEGIN\n%sEND;\n$body$', stage, calls);
    -- a pay-in PAID at creation: the same calls, after reading the row
    -- (one function call less on the hot path than calling payin_run_reached)
    IF stage = 'reached' THEN
        EXECUTE format(E'CREATE OR REPLACE FUNCTION payledger_internal.payin_reached(payin uuid)\n'
                       'RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $body$\n'
                       '-- written by payledger_internal.register_payin_handler() from payledger.payin_handlers\n'
                       'DECLARE\n    p payledger.payins;\nBEGIN\n'
                       '    SELECT * INTO p FROM payledger.payins x WHERE x.id = payin;\n%sEND;\n$body$', calls);
    END IF;
END;
$$;

-- For modules' install scripts: run handler(p payledger.payins) at a stage
-- of every pay-in (of payin_type, when given) that moves into states.
CREATE FUNCTION payledger_internal.register_payin_handler(
    module     text,
    stage      text,
    run_order   integer,
    states     payledger.payin_state[],
    handler    regprocedure,
    payin_type text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc f
                    WHERE f.oid = handler AND f.pronargs = 1 AND f.proargtypes[0] = 'payledger.payins'::regtype) THEN
        RAISE EXCEPTION 'a pay-in handler takes (p payledger.payins), not %', handler USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.payin_handlers AS x (stage, run_order, module, states, payin_type, handler)
    VALUES (stage, run_order, module, states, payin_type, payledger_internal.proc_name(handler));
    PERFORM payledger_internal.payin_handlers_compile(stage);
END;
$$;

-- payin_run_lock(p), payin_run_reached(p), and payin_reached(payin uuid),
-- which create_payin and retry_payin call for a pay-in PAID at creation
-- (not a trigger on INSERT: a restore's COPY must not run the handlers again
-- for old pay-ins)
SELECT payledger_internal.payin_handlers_compile('lock'), payledger_internal.payin_handlers_compile('reached');

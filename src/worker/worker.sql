-- payledger worker: the SQL half of the background worker (src/worker/mod.rs).
-- Its three steps (claim, call, record) are functions, so that `CALL
-- payledger.run_tick()` does exactly what the background worker does; after
-- them, the webhook deliveries (src/events/delivery.sql), the housekeeping
-- steps the modules registered
-- (src/ledger/housekeeping.sql) and the periodic runs they registered here
-- (metering, in credits).

-- One row: what the worker did last (for operators and tests).
CREATE TABLE payledger.worker_status (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    pid         integer,
    started_at  timestamptz,
    last_tick_at timestamptz,
    ticks       bigint NOT NULL DEFAULT 0,
    last_result jsonb
);
INSERT INTO payledger.worker_status DEFAULT VALUES;
ALTER TABLE payledger.worker_status ENABLE ROW LEVEL SECURITY;

---------------------------------------------------------------------------
-- Periodic runs
---------------------------------------------------------------------------

-- Work a module wants done every so often over all its subjects (credits:
-- metering, four times a day), in steps of a transaction each, shared out
-- over several sessions. A module registers its run in its own file; the
-- worker and run_tick start it when it is due.
--
-- A run's step is a function (max_items integer, after text, part integer,
-- parts integer) RETURNS TABLE (done integer, failed integer, last text):
-- it does up to max_items subjects of its share (part of parts) that sort
-- after `after`, and returns where the next step starts (last; NULL when
-- the share is done).
CREATE TABLE payledger.worker_runs (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    module        text NOT NULL,
    step          text NOT NULL,  -- a signature (payledger_internal.proc_name)
    -- seconds between runs, and how many sessions share one: the names of
    -- payledger settings (payledger.setting_int)
    every_setting text NOT NULL,
    parts_setting text,
    -- the key of the tick's count of subjects done
    counts_as     text NOT NULL,
    -- when the last whole run ended (NULL: due now)
    last_run_at   timestamptz
);
ALTER TABLE payledger.worker_runs ENABLE ROW LEVEL SECURITY;

-- For modules' install scripts.
CREATE FUNCTION payledger_internal.register_worker_run(module text, name text, step regprocedure, every_setting text,
                                              parts_setting text, counts_as text)
RETURNS void LANGUAGE plpgsql SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc f
                    WHERE f.oid = step AND f.pronargs = 4
                      AND f.proargtypes[0] = 'integer'::regtype AND f.proargtypes[1] = 'text'::regtype
                      AND f.proargtypes[2] = 'integer'::regtype AND f.proargtypes[3] = 'integer'::regtype
                      AND f.proretset) THEN
        RAISE EXCEPTION 'a run''s step takes (max_items integer, after text, part integer, parts integer) and returns a table, not %',
            step USING ERRCODE = '22023';
    END IF;
    -- (unknown settings fail here, not at the first tick)
    PERFORM payledger.setting_int(every_setting), payledger.setting_int(coalesce(parts_setting, every_setting));
    INSERT INTO payledger.worker_runs AS r (name, module, step, every_setting, parts_setting, counts_as)
    VALUES (name, module, payledger_internal.proc_name(step), every_setting, parts_setting, counts_as);
END;
$$;

-- The runs due now, each with the number of sessions to share it.
CREATE FUNCTION payledger.worker_runs_due()
RETURNS TABLE (name text, parts integer, counts_as text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT r.name, CASE WHEN r.parts_setting IS NULL THEN 1 ELSE least(greatest(payledger.setting_int(r.parts_setting), 1), 16) END,
           r.counts_as
      FROM payledger.worker_runs r
     WHERE r.last_run_at IS NULL OR r.last_run_at <= now() - make_interval(secs => payledger.setting_int(r.every_setting))
     ORDER BY r.name;
$$;

-- One step of a run (its own transaction).
CREATE FUNCTION payledger.worker_run_step(name text, max_items integer, after_key text, part integer DEFAULT 0,
                                          parts integer DEFAULT 1)
RETURNS TABLE (done integer, failed integer, last text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    fn regprocedure;
BEGIN
    SELECT r.step::regprocedure INTO fn FROM payledger.worker_runs r WHERE r.name = worker_run_step.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown periodic run %', name USING ERRCODE = '22023',
            HINT = 'The runs are in payledger.worker_runs.';
    END IF;
    RETURN QUERY EXECUTE format('SELECT s.done, s.failed, s.last FROM %s($1, $2, $3, $4) s', fn::oid::regproc)
        USING max_items, after_key, part, parts;
END;
$$;

-- A whole run is done (every share of it).
CREATE FUNCTION payledger.worker_run_done(name text)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_runs r SET last_run_at = now() WHERE r.name = worker_run_done.name;
$$;

---------------------------------------------------------------------------
-- The worker's steps
---------------------------------------------------------------------------

-- Step 1, in its own short transaction: open invoices for pay-ins waiting
-- for one, then claim due invoices and withdrawals (SKIP LOCKED, with a lease so that a
-- crashed worker's claims come back) and return what to call. No secrets.
CREATE FUNCTION payledger.worker_claim(batch integer, due_before timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    lease interval := make_interval(secs => 30 + 2 * payledger.setting_int('worker_http_timeout') / 1000.0);
    w record;
    claims jsonb;
BEGIN
    PERFORM payledger_internal.require_limit(batch, 'batch');
    -- (pay-ins no provider serves are the application's to invoice: left alone)
    FOR w IN SELECT p.id FROM payledger.payins p
              WHERE p.state = 'PENDING_INVOICE_CREATION' AND p.external_amount > 0
                AND NOT EXISTS (SELECT 1 FROM payledger.invoices i WHERE i.payin_id = p.id)
                AND payledger_internal.pick_provider(p.type, p.asset, p.external_method) IS NOT NULL
              ORDER BY p.state_changed_at LIMIT batch
              FOR NO KEY UPDATE OF p SKIP LOCKED LOOP
        PERFORM payledger_internal.open_invoice(w.id);
    END LOOP;

    -- an open invoice whose pay-in ended (FAILED, CANCELLED) is to be
    -- cancelled where its provider can (see payledger.invoice_apply), and is
    -- marked 'cannot' where it cannot; noticed here, not in the pay-in's
    -- move, so that a cancel never locks an invoice while holding its pay-in
    -- (invoice_apply locks them the other way round)
    WITH due AS (
        SELECT i.id, (i.status = 'pending' AND i.cancel IS NULL AND y.state IN ('FAILED', 'CANCELLED')) AS ended
          FROM payledger.invoices i JOIN payledger.providers pr ON pr.id = i.provider_id
          JOIN payledger.payins y ON y.id = i.payin_id
         WHERE i.next_check_at <= due_before
           AND (i.locked_until IS NULL OR i.locked_until < now())
           AND (pr.retry_after IS NULL OR pr.retry_after <= now())
         ORDER BY i.next_check_at
         LIMIT batch
         FOR UPDATE OF i SKIP LOCKED),
    claimed AS (
        UPDATE payledger.invoices i
           SET locked_until = now() + lease,
               create_attempts = i.create_attempts + (i.status = 'creating')::integer,
               cancel = CASE WHEN NOT due.ended THEN i.cancel
                             WHEN i.provider_kind IN ('lnd_rest', 'cln_rest', 'stripe') THEN 'requested'
                             ELSE 'cannot' END
          FROM due WHERE i.id = due.id
        RETURNING i.*)
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'invoice_id', c.id,
               'op', CASE WHEN c.cancel = 'requested' THEN 'cancel' WHEN c.status = 'creating' THEN 'create' ELSE 'check' END,
               'provider_id', c.provider_id, 'kind', pr.kind, 'base_url', pr.base_url, 'config', pr.config,
               'amount', c.amount, 'asset', c.asset, 'memo', c.memo,
               'expiry_secs', greatest(1, extract(epoch FROM c.expiry)::bigint),
               'external_id', c.external_id)
             -- a hold invoice is issued for a payment hash it is given (src/p2p/)
             || CASE WHEN c.hold THEN jsonb_build_object('hold', true, 'payment_hash', c.payment_hash,
                                                         'cltv_expiry', c.cltv_expiry) ELSE '{}' END), '[]')
      INTO claims
      FROM claimed c JOIN payledger.providers pr ON pr.id = c.provider_id;

    -- withdrawals: one to pay is recorded as sent first (status unknown), so
    -- that after a crash between the call and the record it is looked up,
    -- never paid again
    WITH due AS (
        SELECT wd.id, wd.status = 'sending' AS send FROM payledger.withdrawals wd
          JOIN payledger.providers pr ON pr.id = wd.provider_id
         WHERE wd.next_check_at <= due_before
           AND (wd.locked_until IS NULL OR wd.locked_until < now())
           AND (pr.retry_after IS NULL OR pr.retry_after <= now())
         ORDER BY wd.next_check_at
         LIMIT batch
         FOR UPDATE OF wd SKIP LOCKED),
    claimed AS (
        UPDATE payledger.withdrawals wd
           SET status = CASE WHEN due.send THEN 'unknown' ELSE wd.status END,
               attempts = wd.attempts + due.send::integer,
               sent_at = CASE WHEN due.send THEN now() ELSE wd.sent_at END,
               locked_until = now() + lease, updated_at = now()
          FROM due WHERE wd.id = due.id
        RETURNING wd.*, due.send)
    SELECT claims || coalesce(jsonb_agg(jsonb_build_object(
               'withdrawal_id', c.id,
               'op', CASE WHEN c.status = 'resolving' THEN 'resolve' WHEN c.send THEN 'pay' ELSE 'lookup' END,
               'provider_id', c.provider_id, 'kind', pr.kind, 'base_url', pr.base_url, 'config', pr.config,
               'destination', c.destination, 'payment_hash', c.payment_hash, 'amount', c.amount,
               'max_fee', c.max_fee, 'network', coalesce(pr.config ->> 'network', 'bitcoin'))), '[]')
      INTO claims
      FROM claimed c JOIN payledger.providers pr ON pr.id = c.provider_id;

    -- p2p pay-ins: their receivers' wallets asked for invoices (src/p2p/)
    RETURN claims || payledger_internal.p2p_claim(batch, lease, due_before);
END;
$$;

-- Step 3: apply one result, in its own short transaction (the worker and
-- run_tick commit after each). One result per transaction is the lock order:
-- settling locks the invoice, then its pay-in, then that pay-in's accounts in
-- one pass, as a client's call does; a transaction settling two pay-ins would
-- lock two passes of accounts, out of order with a client's single pass, and
-- could deadlock with it. A result that cannot be applied is recorded on the
-- invoice (backoff) with a WARNING, never lost. Returns the outcome in a word.
CREATE FUNCTION payledger.worker_apply(result jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(result, 'result');
    BEGIN
        IF result ? 'forward_id' THEN
            RETURN payledger_internal.p2p_apply((result ->> 'forward_id')::uuid, result);
        END IF;
        IF result ? 'withdrawal_id' THEN
            RETURN payledger_internal.withdrawal_apply((result ->> 'withdrawal_id')::uuid, result);
        END IF;
        RETURN payledger.invoice_apply((result ->> 'invoice_id')::uuid, result);
    EXCEPTION WHEN OTHERS THEN
        IF result ? 'forward_id' THEN
            UPDATE payledger.p2p_forwards f
               SET last_error = left('applying the result: ' || SQLERRM, 500), locked_until = NULL,
                   errors = f.errors + 1, next_check_at = now() + payledger_internal.backoff(f.errors + 1)
             WHERE f.payin_id = (result ->> 'forward_id')::uuid AND f.next_check_at IS NOT NULL;
            RAISE WARNING 'payledger worker: p2p forward %: %', result ->> 'forward_id', SQLERRM;
        ELSIF result ? 'withdrawal_id' THEN
            UPDATE payledger.withdrawals wd
               SET last_error = left('applying the result: ' || SQLERRM, 500), locked_until = NULL,
                   errors = wd.errors + 1, next_check_at = now() + payledger_internal.backoff(wd.errors + 1)
             WHERE wd.id = (result ->> 'withdrawal_id')::uuid AND wd.next_check_at IS NOT NULL;
            RAISE WARNING 'payledger worker: withdrawal %: %', result ->> 'withdrawal_id', SQLERRM;
        ELSE
            UPDATE payledger.invoices i
               SET last_error = left('applying the result: ' || SQLERRM, 500), locked_until = NULL,
                   errors = i.errors + 1, next_check_at = now() + payledger_internal.backoff(i.errors + 1)
             WHERE i.id = (result ->> 'invoice_id')::uuid;
            RAISE WARNING 'payledger worker: invoice %: %', result ->> 'invoice_id', SQLERRM;
        END IF;
        RETURN 'apply_error';
    END;
END;
$$;

-- After a batch's results are applied, in one more short transaction: the
-- providers' health (providers in id order). One that answered anything is
-- up; one that answered nothing backs off.
CREATE FUNCTION payledger.worker_provider_health(results jsonb)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    PERFORM payledger_internal.require(results, 'results');
    FOR h IN SELECT (x ->> 'provider_id')::uuid AS id,
                    bool_or(NOT (x ->> 'ok' = 'false' AND coalesce((x ->> 'retryable')::boolean, false))) AS answered,
                    max(x ->> 'error') AS error
               FROM jsonb_array_elements(results) x
              WHERE x ? 'provider_id'
              GROUP BY 1 ORDER BY 1 LOOP
        IF h.answered THEN
            UPDATE payledger.providers x SET consecutive_failures = 0, retry_after = NULL, last_ok_at = now()
             WHERE x.id = h.id;
        ELSE
            UPDATE payledger.providers x
               SET consecutive_failures = x.consecutive_failures + 1,
                   retry_after = now() + payledger_internal.backoff(x.consecutive_failures + 1),
                   last_error = left(h.error, 500)
             WHERE x.id = h.id;
        END IF;
    END LOOP;
END;
$$;

CREATE FUNCTION payledger.worker_note_tick(result jsonb, worker_pid integer DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    UPDATE payledger.worker_status
       SET last_tick_at = now(), ticks = ticks + 1, last_result = result,
           pid = coalesce(worker_pid, pid), started_at = CASE WHEN worker_pid IS DISTINCT FROM pid THEN now() ELSE started_at END;
$$;

-- One tick on demand, by the same steps as the background worker: claim and
-- commit, call the providers in a statement that holds no row lock and no
-- transaction id, record and commit, until nothing is due; then the
-- housekeeping. For operators and tests (a procedure: CALL it outside an
-- explicit transaction block).
-- (No SET search_path: a procedure with one cannot COMMIT. Every name in it
-- is qualified, and pg_catalog is searched first anyway.)
CREATE PROCEDURE payledger.run_tick(batch integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    claims jsonb;
    results jsonb;
    r jsonb;
    outcome text;
    counts jsonb := '{}';
    h record;
    calls integer;
    got bigint;
    took bigint;
    step_started timestamptz;
    n integer := coalesce(batch, payledger.setting_int('worker_batch_size'));
    rounds integer := 0;
    run record;
    step record;
    run_after text;
    done bigint;
    failed bigint;
BEGIN
    -- claim until nothing is due, at most 50 rounds (as the worker: a step
    -- that follows one just done is due at once, so a held p2p payment is
    -- seen, forwarded and settled in one tick; what was rescheduled in this
    -- tick waits for the next, since only what was due at its start is claimed)
    LOOP
        claims := payledger.worker_claim(n, started);
        COMMIT;
        rounds := rounds + 1;
        EXIT WHEN jsonb_array_length(claims) = 0;
        results := payledger.provider_call(claims);
        -- one result per transaction (see worker_apply)
        FOR r IN SELECT x FROM jsonb_array_elements(results) x LOOP
            outcome := payledger.worker_apply(r);
            COMMIT;
            counts := jsonb_set(counts, ARRAY[outcome], to_jsonb(coalesce((counts ->> outcome)::integer, 0) + 1));
        END LOOP;
        PERFORM payledger.worker_provider_health(results);
        COMMIT;
        EXIT WHEN rounds >= 50;
    END LOOP;
    -- the outbox to the webhook endpoints: claim, send with no row lock
    -- held, record each result in its own transaction
    LOOP
        claims := payledger.webhook_claim(n, started);
        COMMIT;
        EXIT WHEN jsonb_array_length(claims) = 0;
        results := payledger.webhook_send(claims);
        FOR r IN SELECT x FROM jsonb_array_elements(results) x LOOP
            outcome := payledger.webhook_apply(r);
            COMMIT;
            counts := jsonb_set(counts, ARRAY[outcome], to_jsonb(coalesce((counts ->> outcome)::integer, 0) + 1));
        END LOOP;
        EXIT WHEN jsonb_array_length(claims) < n;
    END LOOP;
    -- the housekeeping, a transaction per call (see housekeeping_plan)
    FOR h IN SELECT * FROM payledger.housekeeping_plan(n) LOOP
        calls := 0;
        took := 0;
        step_started := clock_timestamp();
        LOOP
            got := payledger.housekeeping_step(h.step, h.per_call);
            COMMIT;
            calls := calls + 1;
            took := took + got;
            EXIT WHEN got < h.per_call OR calls >= h.max_calls
                   OR clock_timestamp() - step_started > coalesce(h.budget, interval '100 years');
        END LOOP;
        counts := counts || jsonb_build_object(h.step, took);
    END LOOP;
    -- the periodic runs that are due, whole, in this session (the worker
    -- shares them out over several), a transaction per step
    FOR run IN SELECT * FROM payledger.worker_runs_due() LOOP
        run_after := NULL;
        done := 0;
        failed := 0;
        LOOP
            SELECT * INTO step FROM payledger.worker_run_step(run.name, n, run_after);
            COMMIT;
            done := done + step.done;
            failed := failed + step.failed;
            run_after := step.last;
            EXIT WHEN run_after IS NULL;
        END LOOP;
        PERFORM payledger.worker_run_done(run.name);
        COMMIT;
        counts := counts || jsonb_build_object(run.counts_as, done, run.name || '_failed', failed);
    END LOOP;
    PERFORM payledger.worker_note_tick(counts);
    COMMIT;
    PERFORM payledger.announce_events();
    COMMIT;
    RAISE NOTICE 'payledger tick: %', counts;
END;
$$;

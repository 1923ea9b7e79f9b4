-- The registries modules meet through: the error codes, the housekeeping
-- steps and the pay-in lifecycle handlers, as installed, and their refusals.
\set db t_registries
\i sql/fixtures/base.sql

-- every SQLSTATE payledger raises, with the name docs/errors.md gives it
SELECT count(*) FILTER (WHERE sqlstate LIKE 'PL%') AS pl_codes, count(*) AS codes FROM payledger.error_codes();
SELECT * FROM payledger.error_codes() WHERE sqlstate IN ('PL006', 'PL034', '22023') ORDER BY 1;

-- each module's housekeeping steps, in the order the worker runs them
SELECT s.run_order, s.module, s.step, p.per_call, p.max_calls, p.budget
  FROM payledger.housekeeping_steps s JOIN payledger.housekeeping_plan(500) p ON p.step = s.step
 ORDER BY s.run_order;
SELECT t_try($$SELECT payledger_internal.register_housekeeping_step('x', 'bad', 99, 'payledger.balance(uuid)')$$);
SELECT t_try($$SELECT payledger.housekeeping_step('holds_expired', NULL)$$);

-- each module's pay-in handlers, and what registering compiled
SELECT stage, run_order, module, states, payin_type, handler FROM payledger.payin_handlers ORDER BY stage, run_order;
SELECT t_try($$SELECT payledger_internal.register_payin_handler('x', 'reached', 999, '{PAID}', 'payledger.balance(uuid)')$$);
SELECT p.proname, pg_get_functiondef(p.oid) ~ 'payledger_internal.credits_payin_paid\(p\)' AS calls_credits,
       pg_get_functiondef(p.oid) ~ 'payledger_internal.events_payin_reached\(p\)' AS calls_events
  FROM pg_proc p WHERE p.pronamespace = 'payledger_internal'::regnamespace
   AND p.proname IN ('payin_run_lock', 'payin_run_reached', 'payin_reached') ORDER BY 1;

-- each module's periodic runs of the worker, and their refusals
SELECT name, module, step, every_setting, parts_setting, counts_as, last_run_at FROM payledger.worker_runs ORDER BY name;
SELECT * FROM payledger.worker_runs_due();
SELECT t_try($$SELECT payledger_internal.register_worker_run('x', 'bad', 'payledger.balance(uuid)', 'metering_interval', NULL, 'n')$$);
SELECT t_try($$SELECT payledger_internal.register_worker_run('x', 'bad', 'payledger_internal.metering_step(integer, text, integer, integer)', 'no_such_setting', NULL, 'n')$$);
SELECT t_try($$SELECT * FROM payledger.worker_run_step('no_such_run', 10, NULL)$$);
-- a step of the metering run, as the worker takes it: nothing to meter here
SELECT * FROM payledger.worker_run_step('metering', 10, NULL, 0, 2);
SELECT payledger.worker_run_done('metering');
SELECT payledger.metering_due() AS due, (SELECT count(*) FROM payledger.worker_runs_due()) AS runs_due;

-- the settings the SQL side reads, with their defaults from src/gucs.rs
-- (the worker's are server-wide; max_batch_size may be set per session)
SELECT payledger.setting_int('worker_batch_size') AS batch, payledger.setting_int('metering_interval') AS metering,
       payledger.setting_int('max_batch_size') AS max_batch;
SET payledger.max_batch_size = 7;
SELECT payledger.setting_int('max_batch_size') AS max_batch_set;
RESET payledger.max_batch_size;
SELECT t_try($$SELECT payledger.setting_int('no_such_setting')$$);

-- no table keeps a reg* value that pg_upgrade refuses (their OIDs are not
-- kept across a major upgrade): the registries keep signatures as text
SELECT c.relname, a.attname, a.atttypid::regtype
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace IN ('payledger'::regnamespace, 'payledger_internal'::regnamespace) AND c.relkind IN ('r', 'p')
   AND a.attnum > 0 AND NOT a.attisdropped
   AND a.atttypid IN ('regproc'::regtype, 'regprocedure'::regtype, 'regoper'::regtype, 'regoperator'::regtype,
                      'regconfig'::regtype, 'regdictionary'::regtype, 'regnamespace'::regtype, 'regcollation'::regtype);

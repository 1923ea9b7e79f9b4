-- Balances at past business times, and amount formatting.
\set db t_history
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.open_account('hist', 'msat') AS h \gset
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 100, effective_at => %L)', acc('world'), :'h', '2026-01-01 00:00+00'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 50, effective_at => %L)', acc('world'), :'h', '2026-02-01 00:00+00'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 30, effective_at => %L)', :'h', acc('world'), '2026-03-01 00:00+00'));
-- a back-dated entry counts at its business time, after the entries recorded before it
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5, effective_at => %L)', acc('world'), :'h', '2025-12-01 00:00+00'));
SELECT t.at, payledger.balance_at(:'h', t.at) AS balance
  FROM (VALUES (timestamptz '2025-11-30 00:00+00'), ('2025-12-01 00:00+00'), ('2026-01-15 00:00+00'),
               ('2026-02-01 00:00+00'), ('2026-02-28 00:00+00'), ('2026-06-01 00:00+00')) AS t(at)
 ORDER BY t.at;
SELECT payledger.balance(:'h') AS now;
SELECT t_try(format('SELECT payledger.balance_at(%L, NULL)', :'h'));
SELECT t_try(format('SELECT payledger.balance_at(%L, now())', gen_random_uuid()));
SELECT t_try(format('SELECT payledger.balance(%L)', gen_random_uuid()));
SELECT t_try(format('SELECT payledger.available_balance(%L)', gen_random_uuid()));

-- formatting and parsing amounts: exact, never rounded
SELECT payledger.format_amount('msat', 1234) AS sat, payledger.format_amount('usd', -5) AS usd,
       payledger.format_amount('credit', 1500000) AS credits;
SELECT payledger.parse_amount('msat', 1.234) AS msat, payledger.parse_amount('usd', 19.99) AS cents,
       payledger.parse_amount('credit', 0.000001) AS micro_credits;
SELECT t_try($$SELECT payledger.parse_amount('usd', 19.999)$$);
SELECT t_try($$SELECT payledger.parse_amount('usd', 1e30)$$);
SELECT t_try($$SELECT payledger.parse_amount('yen', 1)$$);
SELECT t_try($$SELECT payledger.format_amount('yen', 1)$$);
SELECT t_try($$SELECT payledger.parse_amount('usd', NULL)$$);

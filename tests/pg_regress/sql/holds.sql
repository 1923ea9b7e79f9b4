-- Two-phase transfers: holds, partial posts, voids and expiry.
\set db t_holds
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.open_account('hold-a', 'msat') AS a \gset
SELECT payledger.open_account('hold-b', 'msat') AS b \gset
SELECT payledger.transfer(acc('world'), :'a', 1000) IS NOT NULL AS funded;

SELECT payledger.create_hold(:'a', :'b', 700, timeout => '1 hour') AS h1 \gset
SELECT payledger.balance(:'a') AS posted, payledger.available_balance(:'a') AS available;
SELECT status, amount, expires_at > now() + interval '59 minutes' AS expires_in_an_hour
  FROM payledger.holds WHERE id = :'h1';
-- the reservation counts against spending
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 301)', :'a', :'b'));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 301)', :'a', :'b'));
-- post part of it: the rest is released
SELECT t_try(format('SELECT payledger.post_hold(%L, 800)', :'h1'));
SELECT t_try(format('SELECT payledger.post_hold(%L, 0)', :'h1'));
SELECT t_try(format('SELECT payledger.post_hold(%L, 500)', :'h1'));
SELECT payledger.balance(:'a') AS a, payledger.available_balance(:'a') AS a_available, payledger.balance(:'b') AS b;
SELECT status, posted_amount, journal_id IS NOT NULL AS has_journal, resolved_at IS NOT NULL AS resolved
  FROM payledger.holds WHERE id = :'h1';
SELECT t_try(format('SELECT payledger.post_hold(%L)', :'h1'));
SELECT t_try(format('SELECT payledger.void_hold(%L)', :'h1'));

-- void
SELECT payledger.create_hold(:'a', :'b', 200) AS h2 \gset
SELECT t_try(format('SELECT payledger.void_hold(%L)', :'h2'));
SELECT t_try(format('SELECT payledger.void_hold(%L)', :'h2'));
SELECT t_try(format('SELECT payledger.post_hold(%L)', :'h2'));
SELECT payledger.available_balance(:'a') AS a_available;

-- posting in full with an idempotency key, twice
SELECT payledger.create_hold(:'a', :'b', 100, idempotency_key => 'hold-key') AS h3 \gset
SELECT payledger.create_hold(:'a', :'b', 100, idempotency_key => 'hold-key') = :'h3' AS hold_replay;
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 99, idempotency_key => %L)', :'a', :'b', 'hold-key'));
SELECT payledger.post_hold(:'h3', idempotency_key => 'post-key') AS p3 \gset
SELECT payledger.post_hold(:'h3', idempotency_key => 'post-key') = :'p3' AS post_replay;
SELECT payledger.balance(:'a') AS a, payledger.balance(:'b') AS b;

-- expiry: an expired hold can be neither posted nor voided, and expire_holds releases it
SELECT payledger.create_hold(:'a', :'b', 50, timeout => '10 milliseconds') AS h4 \gset
SELECT pg_sleep(0.05);
SELECT payledger.available_balance(:'a') AS a_available_before_sweep;
SELECT t_try(format('SELECT payledger.post_hold(%L)', :'h4'));
SELECT t_try(format('SELECT payledger.void_hold(%L)', :'h4'));
SELECT payledger.expire_holds() AS expired;
SELECT payledger.expire_holds() AS expired_again;
SELECT status FROM payledger.holds WHERE id = :'h4';
SELECT payledger.available_balance(:'a') AS a_available;

-- bad input
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 0)', :'a', :'b'));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 5)', :'a', :'a'));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 5)', :'a', acc('alice_usd')));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 5, timeout => %L)', :'a', :'b', '-1 second'));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 5)', gen_random_uuid(), :'b'));
SELECT t_try(format('SELECT payledger.post_hold(%L)', gen_random_uuid()));
SELECT t_try(format('SELECT payledger.void_hold(%L)', gen_random_uuid()));
SELECT t_try(format('SELECT payledger.post_hold(%L, -1)', :'h1'));
SELECT t_try($$SELECT payledger.void_hold(NULL)$$);
SELECT t_try($$SELECT payledger.expire_holds(0)$$);
SELECT t_try(format($q$SELECT count(*) FROM payledger.transfer_batch('[{"op":"hold","from":"%s","to":"%s","amount":5,"expires_at":"2000-01-01T00:00:00Z"}]') WHERE status = 'ok'$q$, :'a', :'b'));
SELECT item, status, sqlstate, t_mask(message) FROM payledger.transfer_batch(format(
  '[{"op":"hold","from":"%s","to":"%s","amount":5,"expires_at":"2000-01-01T00:00:00Z"},
    {"op":"hold","from":"%s","to":"%s","amount":5,"timeout_ms":0},
    {"op":"hold","from":"%s","to":"%s","amount":5,"timeout_ms":5,"expires_at":"2999-01-01T00:00:00Z"},
    {"op":"void_hold","hold":"%s","idempotency_key":"x"}]', :'a', :'b', :'a', :'b', :'a', :'b', :'h1')::jsonb);
SELECT * FROM payledger.check_invariants();

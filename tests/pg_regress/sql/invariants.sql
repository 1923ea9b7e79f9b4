-- check_invariants() finds each kind of corruption; the entry guard rejects bad inserts.
\set db t_invariants
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
-- money in every account the corruption below touches
SELECT count(payledger.transfer(acc('world'), acc(n), a)) AS funded
  FROM (VALUES ('alice', 1000), ('bob', 500), ('carol', 7), ('fees', 10)) v(n, a);
SELECT count(*) AS violations FROM payledger.check_invariants();

-- direct inserts that do not balance, or do not match the account, are rejected
SELECT t_try(format($q$INSERT INTO payledger.entries VALUES (%L, 999, gen_random_uuid(), 'alice', 'msat', 5, 5, now(), now())$q$, acc('alice')));
SELECT t_try(format($q$INSERT INTO payledger.entries VALUES (%L, 999, '00000000-0000-0000-0000-000000000001', 'alice', 'msat', 5, 5, now(), now()),
                                                          (%L, 999, '00000000-0000-0000-0000-000000000001', 'bob', 'usd', -5, 5, now(), now())$q$, acc('alice'), acc('bob')));

-- table rules hold for direct writes too (as a superuser, past the API)
SELECT t_try(format($q$INSERT INTO payledger.entries VALUES (%L, 999, gen_random_uuid(), 'alice', 'msat', 0, 5, now(), now())$q$, acc('alice')));
SELECT t_try(format($q$UPDATE payledger.accounts SET overdraft_limit = 5 WHERE id = %L$q$, acc('alice')));
SELECT t_try(format($q$UPDATE payledger.accounts SET balance = -1 WHERE id = %L$q$, acc('carol')));
SELECT t_try(format($q$UPDATE payledger.accounts SET min_available = -100 WHERE id = %L$q$, acc('carol')));
SELECT t_try(format($q$INSERT INTO payledger.accounts (id, owner_id, asset, kind, name, parent_id)
                      VALUES (gen_random_uuid(), 'alice', 'msat', 'user', 'main#9', %L)$q$, acc('bob')));
SELECT t_try($$INSERT INTO payledger.accounts (id, owner_id, asset, kind) VALUES (gen_random_uuid(), '', 'msat', 'user')$$);

-- corrupt a copy of the data in a transaction (bypassing the guards as a superuser) and look
BEGIN;
ALTER TABLE payledger.accounts DISABLE TRIGGER USER;
ALTER TABLE payledger.entries DISABLE TRIGGER USER;
ALTER TABLE payledger.holds DISABLE TRIGGER USER;
UPDATE payledger.accounts SET balance = balance + 1 WHERE id = acc('bob');
UPDATE payledger.entries SET balance_after = balance_after + 7 WHERE account_id = acc('carol') AND seq = 1;
INSERT INTO payledger.entries VALUES (acc('alice'), 100000, gen_random_uuid(), 'alice', 'msat', 3, 3, now(), now());
UPDATE payledger.accounts SET pending_debits = pending_debits + 2 WHERE id = acc('alice');
UPDATE payledger.accounts SET balance = -1, entry_count = entry_count WHERE id = acc('carol');
UPDATE payledger.accounts SET closed_at = now() WHERE id = acc('fees');
SELECT invariant, t_mask(subject) AS subject, t_mask(detail) AS detail FROM payledger.check_invariants()
 ORDER BY 1, 2, 3;
ROLLBACK;
SELECT count(*) AS violations FROM payledger.check_invariants();

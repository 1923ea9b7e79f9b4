-- Transfers and multi-leg journals, with every input error and its SQLSTATE.
\set db t_transfers
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
-- fund alice from the outside world
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 100000)', acc('world'), acc('alice')));
SELECT payledger.balance(acc('alice')) AS alice, payledger.balance(acc('world')) AS world;

-- a plain transfer records two entries with the balance after each
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 2500, metadata => %L)', acc('alice'), acc('bob'), '{"memo":"lunch"}'));
SELECT a.name, e.seq, e.amount, e.balance_after
  FROM payledger.entries e JOIN t_acc a ON a.id = e.account_id
 WHERE a.name IN ('alice', 'bob') ORDER BY a.name, e.seq;
SELECT kind, metadata FROM payledger.journals ORDER BY created_at DESC, id DESC LIMIT 1;

-- a multi-leg journal: alice pays bob 1000 and a fee of 10
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-1010},{"account":"%s","amount":1000},{"account":"%s","amount":10}]', kind => 'payment')$q$,
                    acc('alice'), acc('bob'), acc('fees')));
SELECT payledger.balance(acc('alice')) AS alice, payledger.balance(acc('bob')) AS bob, payledger.balance(acc('fees')) AS fees;
-- a journal's entries, in posting order
SELECT e.posting, a.name, e.amount, e.balance_after
  FROM payledger.journal_entries((SELECT id FROM payledger.journals WHERE kind = 'payment')) e
  JOIN t_acc a ON a.id = e.account_id ORDER BY e.posting;
SELECT t_try(format('SELECT count(*) FROM payledger.journal_entries(%L)', gen_random_uuid()));
SELECT t_try($$SELECT count(*) FROM payledger.journal_entries(NULL)$$);

-- idempotency: the same key and request returns the original journal; another request is a conflict
SELECT payledger.transfer(acc('alice'), acc('bob'), 100, idempotency_key => 'pay-1') AS j1 \gset
SELECT payledger.transfer(acc('alice'), acc('bob'), 100, idempotency_key => 'pay-1') = :'j1' AS replay_returns_original;
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 101, idempotency_key => %L)', acc('alice'), acc('bob'), 'pay-1'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 100, idempotency_key => %L, metadata => %L)', acc('alice'), acc('bob'), 'pay-1', '{"x":1}'));
SELECT count(*) AS journals_with_key FROM payledger.journals WHERE idempotency_key = 'pay-1';
SELECT payledger.balance(acc('bob')) AS bob;

-- errors: each with its SQLSTATE, none changes anything
SELECT count(*) AS entries_before FROM payledger.entries \gset
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 0)', acc('alice'), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, -5)', acc('alice'), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5)', acc('alice'), acc('alice')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5)', gen_random_uuid(), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5)', acc('alice'), gen_random_uuid()));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5)', acc('alice'), acc('alice_usd')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000000000)', acc('alice'), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5)', acc('carol'), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(NULL, %L, 5)', acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, NULL)', acc('alice'), acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5, kind => %L)', acc('alice'), acc('bob'), ''));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5, idempotency_key => %L)', acc('alice'), acc('bob'), ''));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5, idempotency_key => %L)', acc('alice'), acc('bob'), repeat('k', 256)));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 5, metadata => %L)', acc('alice'), acc('bob'), '[1,2]'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 9223372036854775807)', acc('world'), acc('alice')));
-- malformed postings
SELECT t_try($$SELECT payledger.post_journal('{}')$$);
SELECT t_try($$SELECT payledger.post_journal('[]')$$);
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5}]')$q$, acc('alice')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5},{"account":"%s","amount":4}]')$q$, acc('alice'), acc('bob')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5},{"account":"%s","amount":0},{"account":"%s","amount":5}]')$q$, acc('alice'), acc('carol'), acc('bob')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5},{"account":"nope","amount":5}]')$q$, acc('alice')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5.5},{"account":"%s","amount":5.5}]')$q$, acc('alice'), acc('bob')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-5},{"account":"%s","amount":5}]')$q$, acc('alice'), acc('alice_usd')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s"},{"account":"%s","amount":5}]')$q$, acc('alice'), acc('bob')));
SELECT count(*) = :entries_before AS nothing_changed FROM payledger.entries;

-- a balanced multi-asset journal (an exchange) is allowed: each asset sums to zero
SELECT t_try(format($q$SELECT payledger.transfer(%L, %L, 500)$q$, acc('usd_world'), acc('alice_usd')));
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":-100},{"account":"%s","amount":100},{"account":"%s","amount":-5000},{"account":"%s","amount":5000}]', kind => 'exchange')$q$,
                    acc('alice_usd'), acc('usd_world'), acc('world'), acc('alice')));
SELECT payledger.balance(acc('alice_usd')) AS alice_usd;

-- amounts as strings (for clients without 64-bit integers)
SELECT t_try(format($q$SELECT payledger.post_journal('[{"account":"%s","amount":"-7"},{"account":"%s","amount":"7"}]')$q$, acc('alice'), acc('carol')));
SELECT payledger.balance(acc('carol')) AS carol;

-- entries and journals are append-only
SELECT t_try($$UPDATE payledger.entries SET amount = amount + 1$$);
SELECT t_try($$DELETE FROM payledger.entries$$);
SELECT t_try($$TRUNCATE payledger.entries$$);
SELECT t_try($$UPDATE payledger.journals SET kind = 'x'$$);
SELECT t_try($$DELETE FROM payledger.journals$$);
SELECT * FROM payledger.check_invariants();

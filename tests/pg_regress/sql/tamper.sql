-- Tamper evidence: entries sealed into hash-chained blocks; verify_ledger()
-- names the first thing altered behind the API's back.
\set db t_tamper
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
-- some history first: alice, bob and carol funded
SELECT count(payledger.transfer(acc('world'), acc(n), 100)) AS funded FROM unnest(ARRAY['alice', 'bob', 'carol']) n;
-- everything so far in a first block, then nothing new to seal
SELECT payledger.seal_ledger() > 0 AS sealed, payledger.seal_ledger() AS nothing_new;
SELECT count(*) AS problems FROM payledger.verify_ledger();
-- a few new transfers, sealed two entries per block (the rest waits)
SELECT payledger.transfer(acc('alice'), acc('bob'), 1) IS NOT NULL AS t1,
       payledger.transfer(acc('bob'), acc('carol'), 1) IS NOT NULL AS t2;
SELECT payledger.seal_ledger(2) AS sealed, payledger.seal_ledger(2) AS sealed, payledger.seal_ledger(2) AS sealed;
SELECT b.block_no - h.block_no AS back, b.entries FROM payledger.ledger_blocks b, payledger.ledger_head() h
 WHERE b.block_no > h.block_no - 3 ORDER BY b.block_no;
SELECT count(*) AS problems FROM payledger.verify_ledger();
SELECT length(hash) AS hex_length FROM payledger.ledger_head();
SELECT t_try($$SELECT payledger.seal_ledger(0)$$);

-- a superuser edits one of bob's entries behind the triggers: caught, by name
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE payledger.entries SET amount = amount + 1000 WHERE account_id = acc('bob') AND seq = 2;
SELECT problem, account_id = acc('bob') AS bobs, seq FROM payledger.verify_ledger() LIMIT 1;
ROLLBACK;
-- a journal's metadata rewritten: each of its entries is flagged
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE payledger.journals SET metadata = '{"note": "nothing to see"}'
 WHERE id = (SELECT journal_id FROM payledger.entries WHERE account_id = acc('carol') AND seq = 1);
SELECT problem, count(*) FROM payledger.verify_ledger() GROUP BY problem;
ROLLBACK;
-- an entry deleted; a block's hash forged; a seal rewritten to hide an edit
BEGIN;
SET LOCAL session_replication_role = replica;
DELETE FROM payledger.entries WHERE account_id = acc('alice') AND seq = 1;
SELECT problem, seq FROM payledger.verify_ledger();
ROLLBACK;
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE payledger.ledger_blocks SET hash = sha256('forged') WHERE block_no = 1;
SELECT block_no, problem FROM payledger.verify_ledger();
ROLLBACK;
BEGIN;
SET LOCAL session_replication_role = replica;
UPDATE payledger.entries SET amount = amount + 1 WHERE account_id = acc('carol') AND seq = 1;
UPDATE payledger.ledger_block_ranges r
   SET digests[1] = (SELECT payledger_internal.entry_digest(e, j) FROM payledger.entries e JOIN payledger.journals j ON j.id = e.journal_id
                      WHERE e.account_id = acc('carol') AND e.seq = 1)
 WHERE r.account_id = acc('carol') AND r.from_seq = 1;
SELECT block_no, problem FROM payledger.verify_ledger();
ROLLBACK;
SELECT count(*) AS problems FROM payledger.verify_ledger();

-- Sharded (hot) accounts: credits spread over shards, one balance, debits see it all.
\set db t_shards
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT payledger.open_account('founder', 'msat', 'revenue') AS f \gset
SELECT payledger.set_account_shards(:'f', 4) AS shards;
SELECT name, parent_id = :'f' AS is_shard, shards FROM payledger.accounts
 WHERE owner_id = 'founder' ORDER BY name;
-- credits land on shards; the account's balance is the total
SELECT count(*) FROM (SELECT payledger.transfer(acc('world'), :'f', 10) FROM generate_series(1, 5)) s;
SELECT count(*) FROM (SELECT payledger.transfer(acc('world'), :'f', 10) FROM generate_series(1, 5)) s;
SELECT payledger.balance(:'f') AS balance, payledger.available_balance(:'f') AS available;
SELECT (SELECT balance FROM payledger.accounts WHERE id = :'f') AS own_row,
       (SELECT sum(balance) FROM payledger.accounts WHERE parent_id = :'f') AS in_shards;
-- a debit may spend what the shards hold; the account's own row goes below zero
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 70)', :'f', acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 31)', :'f', acc('bob')));
SELECT payledger.balance(:'f') AS balance;
-- holds on a sharded account use its own row and count the shards
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 30)', :'f', acc('bob')));
SELECT payledger.available_balance(:'f') AS available;
SELECT t_try(format('SELECT payledger.void_hold(id) FROM payledger.holds WHERE debit_account = %L AND status = %L', :'f', 'pending'));
-- shards are never named directly
SELECT id AS shard FROM payledger.accounts WHERE parent_id = :'f' ORDER BY id LIMIT 1 \gset
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', :'shard', acc('bob')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('world'), :'shard'));
SELECT t_try(format('SELECT payledger.create_hold(%L, %L, 1)', acc('world'), :'shard'));
SELECT t_try(format('SELECT payledger.set_account_shards(%L, 2)', :'shard'));
SELECT t_try(format('SELECT payledger.close_account(%L)', :'shard'));
-- shards only grow, up to 256
SELECT t_try(format('SELECT payledger.set_account_shards(%L, 3)', :'f'));
SELECT t_try(format('SELECT payledger.set_account_shards(%L, 257)', :'f'));
SELECT t_try(format('SELECT payledger.set_account_shards(%L, 6)', :'f'));
SELECT t_try(format('SELECT payledger.set_account_shards(%L, 2)', gen_random_uuid()));
SELECT t_try($$SELECT payledger.open_account('x', 'msat', name => 'a#b')$$);
-- history and the end-user view see one account
SELECT payledger.balance_at(:'f', now() - interval '1 hour') AS an_hour_ago, payledger.balance_at(:'f', now()) AS now;
SET ROLE payledger_enduser;
SET payledger.owner_id = 'founder';
SELECT kind, name, balance, available FROM payledger.my_accounts;
SELECT count(*) AS entries, count(DISTINCT account_id) AS accounts, sum(amount) AS total FROM payledger.my_entries;
RESET payledger.owner_id;
RESET ROLE;
-- closing needs the whole account empty, and closes the shards with it
SELECT t_try(format('SELECT payledger.close_account(%L)', :'f'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, %s)', :'f', acc('world'), payledger.balance(:'f')));
SELECT t_try(format('SELECT payledger.close_account(%L)', :'f'));
SELECT count(*) FILTER (WHERE closed_at IS NOT NULL) AS closed, count(*) AS rows FROM payledger.accounts
 WHERE id = :'f' OR parent_id = :'f';
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('world'), :'f'));
SELECT * FROM payledger.check_invariants();

-- Assets, account kinds and accounts: creation, idempotency, conflicts, limits, closing.
\set db t_accounts
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
SELECT code, scale FROM payledger.assets ORDER BY code;
-- creating an asset again with the same scale is a no-op; another scale is a conflict
SELECT t_try($$SELECT payledger.create_asset('msat', 3)$$);
SELECT t_try($$SELECT payledger.create_asset('msat', 2)$$);
SELECT t_try($$SELECT payledger.create_asset('Bad Code', 2)$$);
SELECT t_try($$SELECT payledger.create_asset('eur', 19)$$);
SELECT t_try($$SELECT payledger.create_asset(NULL, 2)$$);

-- account kinds: built in, and registered by the application
SELECT kind FROM payledger.account_kinds WHERE builtin ORDER BY kind;
SELECT t_try($$SELECT payledger.register_account_kind('territory', 'a territory founder''s revenue')$$);
SELECT t_try($$SELECT payledger.register_account_kind('Not Valid', 'x')$$);

-- opening is idempotent on (owner, asset, kind, name)
SELECT payledger.open_account('alice', 'msat') = acc('alice') AS same_account;
SELECT t_try($$SELECT payledger.open_account('alice', 'msat', allow_negative => true)$$);
SELECT t_try($$SELECT payledger.open_account('dave', 'doge')$$);
SELECT t_try($$SELECT payledger.open_account('dave', 'msat', 'nonsense')$$);
SELECT t_try($$SELECT payledger.open_account('dave', 'msat', overdraft_limit => 5)$$);
SELECT t_try($$SELECT payledger.open_account('', 'msat')$$);
SELECT t_try($$SELECT payledger.open_account(NULL, 'msat')$$);
-- uuid and bigint application ids are owner keys as text
SELECT t_try($$SELECT payledger.open_account('7f1c0e2a-9b1d-4c7e-8a55-0d6f3b2a1c9e'::uuid::text, 'msat')$$);
SELECT t_try($$SELECT payledger.open_account(42::text, 'msat', 'territory', 'founder')$$);
SELECT owner_id, asset, kind, name FROM payledger.accounts
 WHERE owner_id IN ('42', '7f1c0e2a-9b1d-4c7e-8a55-0d6f3b2a1c9e') ORDER BY owner_id;

-- lookup
SELECT payledger.account_id('bob', 'msat') = acc('bob') AS found;
SELECT t_try($$SELECT payledger.account_id('nobody', 'msat')$$);

-- limits
SELECT payledger.open_account('erin', 'msat') AS erin \gset
SELECT t_try(format('SELECT payledger.set_account_limits(%L, true, 1000)', :'erin'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000)', :'erin', acc('alice')));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', :'erin', acc('alice')));
SELECT payledger.balance(:'erin') AS erin_balance;
-- tightening a limit below the current balance is refused
SELECT t_try(format('SELECT payledger.set_account_limits(%L, false)', :'erin'));
SELECT t_try(format('SELECT payledger.set_account_limits(%L, false, 10)', :'erin'));
SELECT t_try(format('SELECT payledger.set_account_limits(%L, true)', gen_random_uuid()));

-- closing: only empty accounts, once
SELECT t_try(format('SELECT payledger.close_account(%L)', :'erin'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1000)', acc('alice'), :'erin'));
SELECT t_try(format('SELECT payledger.close_account(%L)', :'erin'));
SELECT t_try(format('SELECT payledger.close_account(%L)', :'erin'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', acc('alice'), :'erin'));
SELECT t_try(format('SELECT payledger.transfer(%L, %L, 1)', :'erin', acc('alice')));
SELECT t_try(format('SELECT payledger.close_account(%L)', gen_random_uuid()));
-- accounts are never deleted
SELECT t_try($$DELETE FROM payledger.accounts WHERE owner_id = 'erin'$$);
SELECT * FROM payledger.check_invariants();

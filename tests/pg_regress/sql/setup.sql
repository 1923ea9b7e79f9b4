-- Shared setup for the golden tests: the extension, assets, named accounts, and
-- t_try(), which runs a statement and prints 'ok' or 'SQLSTATE: message' with
-- ids masked, so that expected output does not depend on generated uuids.
\set VERBOSITY terse
CREATE EXTENSION payledger;
SELECT extname, extversion FROM pg_extension WHERE extname = 'payledger';

CREATE FUNCTION t_mask(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT regexp_replace(t, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<id>', 'g')
$$;

CREATE FUNCTION t_try(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r text;
BEGIN
  EXECUTE q INTO r;
  RETURN 'ok' || coalesce(': ' || nullif(t_mask(r), ''), '');
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || t_mask(SQLERRM);
END;
$$;

-- Accounts by short name: acc('alice') and so on.
CREATE TABLE t_acc (name text PRIMARY KEY, id uuid NOT NULL);
CREATE FUNCTION acc(n text) RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT id FROM t_acc WHERE name = n $$;
GRANT SELECT ON t_acc TO PUBLIC;
GRANT EXECUTE ON FUNCTION acc(text), t_try(text), t_mask(text) TO PUBLIC;

SELECT payledger.create_asset('msat', 3, 'millisatoshi');
SELECT payledger.create_asset('usd', 2, 'US dollar cents');
SELECT payledger.create_asset('credit', 6, 'prepaid credits');

INSERT INTO t_acc VALUES
  ('world',   payledger.open_account('world', 'msat', 'external', 'main', allow_negative => true)),
  ('alice',   payledger.open_account('alice', 'msat')),
  ('bob',     payledger.open_account('bob', 'msat')),
  ('carol',   payledger.open_account('carol', 'msat')),
  ('fees',    payledger.open_account('operator', 'msat', 'fees')),
  ('usd_world', payledger.open_account('world', 'usd', 'external', 'main', allow_negative => true)),
  ('alice_usd', payledger.open_account('alice', 'usd'));
SELECT count(*) FROM t_acc;

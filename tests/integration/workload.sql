-- The random workload of the crash test and the soak (tests/integration/crash.sh,
-- tests/soak.sh): 20 funded users, 10 credit organisations, and crash_op(key),
-- one random operation that records its key in crash_acks in its own
-- transaction. Needs the extension, an msat asset, the ITEM / FOUNDER types
-- and a default merchant profile with a provider.
SELECT payledger.open_account('payledger', 'msat', 'external', 'world', allow_negative => true);
SELECT payledger.open_account('u' || g, 'msat') FROM generate_series(1, 20) g;
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'),
                          payledger.account_id('u' || g, 'msat'), 10000000) FROM generate_series(1, 20) g;
SELECT payledger.credits_configure();
SELECT payledger.register_credit_metric('mau');
SELECT payledger.set_credit_price_tiers('mau', '[{"from": 0, "price": 0.01}]');
SELECT payledger.define_credit_plan('basic', '{"mau": 100}');
SELECT payledger.set_credit_org('org' || g, 'basic') FROM generate_series(1, 10) g;
-- organisations buy credit packages with pay-ins from their own balances
SELECT payledger.define_credit_package('pack-100', 100, 'msat', 50000);
SELECT payledger.open_account('payledger', 'msat', 'revenue', 'credit_sales');
SELECT payledger.open_account('org' || g, 'msat') FROM generate_series(1, 10) g;
SELECT payledger.transfer(payledger.account_id('payledger', 'msat', 'external', 'world'),
                          payledger.account_id('org' || g, 'msat'), 100000000) FROM generate_series(1, 10) g;

-- what a client saw committed: written in the operation's own transaction
CREATE TABLE crash_acks (key text PRIMARY KEY, what text NOT NULL);
-- the invoices the payer has looked at (workload.bash)
CREATE TABLE payer_seen (pr text PRIMARY KEY);
CREATE FUNCTION acc(i integer) RETURNS uuid LANGUAGE sql AS $$ SELECT payledger.account_id('u' || i, 'msat') $$;
CREATE FUNCTION crash_op(key text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r float8 := random();
  a integer := 1 + floor(random() * 20)::integer;
  b integer := 1 + (a + floor(random() * 18)::integer) % 20;
  org text := 'org' || (1 + floor(random() * 10)::integer);
  id uuid;
  what text;
BEGIN
  IF r < 0.30 THEN
    PERFORM payledger.transfer(acc(a), acc(b), 1 + floor(random() * 5000)::bigint, key);
    what := 'transfer';
  ELSIF r < 0.40 THEN
    id := payledger.create_hold(acc(a), acc(b), 2000, idempotency_key => key);
    IF random() < 0.5 THEN PERFORM payledger.post_hold(id, 1000); ELSE PERFORM payledger.void_hold(id); END IF;
    what := 'hold';
  ELSIF r < 0.55 THEN
    -- 100 sats: part from the balance, the rest by invoice (or all from the balance)
    PERFORM payledger.create_payin('u' || a, 'ITEM', 'msat', 100000,
      CASE WHEN random() < 0.7
           THEN jsonb_build_array(jsonb_build_object('account', acc(a), 'amount', 40000),
                                  '{"external": "invoice", "amount": 60000}'::jsonb)
           ELSE jsonb_build_array(jsonb_build_object('account', acc(a))) END,
      jsonb_build_array(jsonb_build_object('type', 'FOUNDER', 'account', acc(b), 'amount', 100000)),
      idempotency_key => key);
    what := 'payin';
  ELSIF r < 0.60 THEN
    SELECT p.id INTO id FROM payledger.payins p WHERE p.state IN ('PENDING', 'PENDING_INVOICE_CREATION')
     ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF id IS NOT NULL THEN PERFORM payledger.cancel_payin(id); END IF;
    what := 'cancel';
  ELSIF r < 0.65 THEN
    SELECT p.id INTO id FROM payledger.payins p WHERE p.state = 'PAID' AND p.refunded = 0
     ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF id IS NOT NULL THEN PERFORM payledger.refund_payin(id); END IF;
    what := 'refund';
  ELSIF r < 0.70 THEN
    SELECT p.id INTO id FROM payledger.payins p WHERE p.state = 'FAILED' AND p.successor_id IS NULL
     ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF id IS NOT NULL THEN PERFORM payledger.retry_payin(id); END IF;
    what := 'retry';
  ELSIF r < 0.75 THEN
    PERFORM payledger.buy_credit_package(org, 'pack-100',
      jsonb_build_array(jsonb_build_object('account', payledger.account_id(org, 'msat'))),
      payledger.account_id('payledger', 'msat', 'revenue', 'credit_sales'), idempotency_key => key);
    what := 'package';
  ELSIF r < 0.80 THEN
    PERFORM payledger.grant_credits(org, 1 + floor(random() * 50)::integer, 'purchase', idempotency_key => key);
    what := 'grant';
  ELSIF r < 0.92 THEN
    PERFORM payledger.consume_credits(org, 'mau', 1 + floor(random() * 20)::integer, key, partial => true);
    what := 'consume';
  ELSE
    PERFORM payledger.record_usage(org, 'mau', floor(random() * 40)::integer);
    PERFORM payledger.meter_org(org);
    what := 'meter';
  END IF;
  INSERT INTO crash_acks VALUES (key, what);
  RETURN what;
END $$;

-- NIP-90 paid jobs: the three payment policies, progressive payments,
-- insufficient payment, timeout, zaps credited once, invoices, bad input.
-- Events are signed with test keys (payledger.nostr_sign_event), invoices
-- made with payledger.bolt11_create.
\set db t_nostr_jobs
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql

CREATE TABLE t_key (name text PRIMARY KEY, sk bytea NOT NULL, pk text);
INSERT INTO t_key (name, sk) VALUES
  ('customer', sha256('customer')), ('provider', sha256('provider')), ('lnurl', sha256('lnurl server')),
  ('node', sha256('lightning node')), ('stranger', sha256('stranger'));
UPDATE t_key SET pk = payledger.nostr_sign_event('{"kind": 1}', sk) ->> 'pubkey';
CREATE FUNCTION sk(n text) RETURNS bytea LANGUAGE sql STABLE AS $$ SELECT sk FROM t_key WHERE name = n $$;
CREATE FUNCTION pk(n text) RETURNS text LANGUAGE sql STABLE AS $$ SELECT pk FROM t_key WHERE name = n $$;

-- A zap of amount msat for event ev, as the customer's wallet and the
-- provider's LNURL server would make it (a description-hash invoice).
CREATE FUNCTION t_zap(ev text, amount bigint, nonce text, signer text DEFAULT 'lnurl', payer text DEFAULT 'customer')
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
  request jsonb := payledger.nostr_sign_event(jsonb_build_object('kind', 9734, 'content', '', 'tags', jsonb_build_array(
      jsonb_build_array('relays', 'wss://relay.example'), jsonb_build_array('amount', amount::text),
      jsonb_build_array('p', pk('provider')), jsonb_build_array('e', ev))), sk(payer));
  preimage bytea := sha256(convert_to(nonce, 'UTF8'));
  invoice text := payledger.bolt11_create(sk('node'), amount, sha256(preimage),
                                          description_hash => sha256(convert_to(request::text, 'UTF8')));
BEGIN
  RETURN payledger.nostr_sign_event(jsonb_build_object('kind', 9735, 'content', '', 'tags', jsonb_build_array(
      jsonb_build_array('p', pk('provider')), jsonb_build_array('P', request ->> 'pubkey'), jsonb_build_array('e', ev),
      jsonb_build_array('bolt11', invoice), jsonb_build_array('description', request::text),
      jsonb_build_array('preimage', encode(preimage, 'hex')))), sk(signer));
END $$;

CREATE TABLE t_job (name text PRIMARY KEY, id uuid, request jsonb);
CREATE FUNCTION job(n text) RETURNS uuid LANGUAGE sql STABLE AS $$ SELECT id FROM t_job WHERE name = n $$;
CREATE FUNCTION t_request(kind int, text text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT payledger.nostr_sign_event(jsonb_build_object('kind', kind, 'content', '', 'tags', jsonb_build_array(
           jsonb_build_array('i', text, 'text'), jsonb_build_array('bid', '50000'), jsonb_build_array('p', pk('provider')))),
         sk('customer')) $$;
-- the provider publishes what payledger templates (signed with its key)
CREATE FUNCTION t_publish(j uuid, template jsonb) RETURNS text LANGUAGE sql AS $$
  SELECT payledger.nostr_job_published(j, payledger.nostr_sign_event(template, sk('provider'))) $$;
CREATE FUNCTION t_last_event(j uuid) RETURNS text LANGUAGE sql AS $$
  SELECT event_id FROM payledger.nostr_job_events WHERE job_id = j ORDER BY created_at DESC, event_id LIMIT 1 $$;
CREATE FUNCTION t_state(j uuid) RETURNS TABLE (state text, requested_msat bigint, paid_msat bigint, error text, pay_by_set boolean)
LANGUAGE sql AS $$ SELECT state, requested_msat, paid_msat, error, pay_by IS NOT NULL FROM payledger.nostr_jobs WHERE id = j $$;

SELECT payledger.open_account('provider', 'msat', 'revenue', 'dvm') AS dvm \gset

---------------------------------------------------------------------------
-- Upfront: payment-required, a zap, processing, the result, success
---------------------------------------------------------------------------
INSERT INTO t_job SELECT 'upfront', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 21000), r
  FROM t_request(5100, 'translate this') r;
SELECT * FROM t_state(job('upfront'));
-- the feedback template: status, amount (the price), e and p, as NIP-90 says
SELECT f -> 'kind' AS kind, f -> 'tags' -> 0 AS status, f -> 'tags' -> 1 AS amount,
       f -> 'tags' -> 2 ->> 0 AS e, f -> 'tags' -> 3 ->> 0 AS p, f ->> 'pubkey' = pk('provider') AS by_provider
  FROM payledger.nostr_job_feedback(job('upfront'), 'payment-required') f;
SELECT t_publish(job('upfront'), payledger.nostr_job_feedback(job('upfront'), 'payment-required'));
SELECT * FROM t_state(job('upfront'));
-- the customer zaps the feedback event: verified and credited, the job may start
CREATE TEMP TABLE t_receipt AS SELECT 'upfront' AS name, t_zap(t_last_event(job('upfront')), 21000, 'u1') AS r;
SELECT outcome, failures, amount_msat, paid_msat, requested_msat, state
  FROM payledger.nostr_job_pay_zap((SELECT r FROM t_receipt WHERE name = 'upfront'));
-- the same receipt again (a relay delivers it twice): credited once
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap((SELECT r FROM t_receipt WHERE name = 'upfront'));
SELECT payledger.balance(:'dvm') AS provider_revenue;
SELECT p.state, p.cost, p.external_method, p.external_ref = n.payment_hash AS ref_is_hash
  FROM payledger.nostr_job_payments n JOIN payledger.payins p ON p.id = n.payin_id WHERE n.job_id = job('upfront');
-- the result template: kind + 1000, request, e, p, i; nothing left to pay
SELECT r -> 'kind' AS kind, (SELECT jsonb_agg(t ->> 0) FROM jsonb_array_elements(r -> 'tags') t) AS tags,
       (r -> 'tags' -> 0 ->> 1)::jsonb ->> 'id' = (SELECT request ->> 'id' FROM t_job WHERE name = 'upfront') AS request_embedded
  FROM payledger.nostr_job_result(job('upfront'), 'ceci est une traduction') r;
SELECT t_publish(job('upfront'), payledger.nostr_job_result(job('upfront'), 'ceci est une traduction'));
SELECT * FROM t_state(job('upfront'));

---------------------------------------------------------------------------
-- After completion: the result asks for the payment
---------------------------------------------------------------------------
INSERT INTO t_job SELECT 'after', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'after_completion', 30000), r
  FROM t_request(5100, 'summarize this') r;
SELECT * FROM t_state(job('after'));
SELECT t_publish(job('after'), payledger.nostr_job_result(job('after'), 'a summary'));
SELECT * FROM t_state(job('after'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('after')), 30000, 'a1'));
SELECT * FROM t_state(job('after'));

---------------------------------------------------------------------------
-- Flexible, progressive: partial results, each paid by its own pay-in
---------------------------------------------------------------------------
INSERT INTO t_job SELECT 'progressive', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'flexible', 0,
                                                                 payment_timeout => '1 day'), r
  FROM t_request(5200, 'a long job') r;
SELECT t_publish(job('progressive'), payledger.nostr_job_feedback(job('progressive'), 'partial', 10000, message => 'part 1'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('progressive')), 10000, 'p1'));
SELECT t_publish(job('progressive'), payledger.nostr_job_feedback(job('progressive'), 'partial', 15000, message => 'part 2'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('progressive')), 15000, 'p2'));
SELECT t_publish(job('progressive'), payledger.nostr_job_result(job('progressive'), 'all parts', 0));
SELECT * FROM t_state(job('progressive'));
SELECT count(*) AS payins FROM payledger.nostr_job_payments WHERE job_id = job('progressive');

-- a price by function: 1,000 msat per character of input
CREATE FUNCTION t_price(request jsonb) RETURNS bigint LANGUAGE sql AS $$
  SELECT 1000 * sum(length(t ->> 1))::bigint FROM jsonb_array_elements(request -> 'tags') t WHERE t ->> 0 = 'i' $$;
INSERT INTO t_job SELECT 'priced', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront',
                                                            price_function => 't_price'), r
  FROM t_request(5100, 'twelve chars') r;
SELECT price_msat FROM payledger.nostr_jobs WHERE id = job('priced');
SELECT f -> 'tags' -> 1 AS amount FROM payledger.nostr_job_feedback(job('priced'), 'payment-required') f;

---------------------------------------------------------------------------
-- Insufficient payment, then the timeout; an invalid receipt
---------------------------------------------------------------------------
INSERT INTO t_job SELECT 'short', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 21000,
                                                           payment_timeout => '0 seconds'), r
  FROM t_request(5100, 'underpaid') r;
SELECT t_publish(job('short'), payledger.nostr_job_feedback(job('short'), 'payment-required'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('short')), 5000, 's1'));
-- a receipt signed by another key than the provider's LNURL server: not credited
SELECT outcome, failures, paid_msat FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('short')), 16000, 's2', signer => 'stranger'));
SELECT payledger.nostr_expire_jobs() AS expired;
SELECT * FROM t_state(job('short'));
SELECT t_try(format('SELECT outcome FROM payledger.nostr_job_pay_zap(%L)', t_zap(t_last_event(job('short')), 16000, 's3'))) AS after_timeout;
SELECT t_try(format('SELECT payledger.nostr_job_fail(%L, %L)', job('after'), 'too late')) AS fail_a_finished_job;

---------------------------------------------------------------------------
-- Paid by invoice (the provider's own bolt11, confirmed at its provider)
---------------------------------------------------------------------------
INSERT INTO t_job SELECT 'invoice', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 8000), r
  FROM t_request(5100, 'paid by invoice') r;
SELECT t_publish(job('invoice'), payledger.nostr_job_feedback(job('invoice'), 'payment-required'));
SELECT * FROM payledger.nostr_job_pay_invoice(job('invoice'), encode(sha256('inv-1'), 'hex'), 8000);
SELECT * FROM payledger.nostr_job_pay_invoice(job('invoice'), encode(sha256('inv-1'), 'hex'), 8000);

---------------------------------------------------------------------------
-- Paid by one of payledger's invoices: nostr_job_invoice opens a pay-in and
-- its invoice; the worker's results (fed by hand here, as in providers.sql;
-- tests/integration/lnbits.sh runs it with the worker and a real LNbits)
-- create it and see it paid, and the job is credited in that transaction
---------------------------------------------------------------------------
SELECT payledger.create_merchant_profile('dvm') IS NOT NULL AS profile;
SELECT payledger.add_provider('dvm', 'dvm-node', 'lnbits', 'http://127.0.0.1:9', '{"invoice_key": "k"}') AS node \gset
CREATE FUNCTION t_job_invoice(j uuid, amount bigint, hash_of text) RETURNS TABLE (invoice uuid, invoice_msat bigint, status text)
LANGUAGE plpgsql AS $$
DECLARE
  i record;
BEGIN
  SELECT * INTO i FROM payledger.nostr_job_invoice(j, amount, (SELECT id FROM payledger.providers WHERE name = 'dvm-node'));
  -- the worker creates it at the provider
  PERFORM payledger.invoice_apply(i.invoice_id, jsonb_build_object('op', 'create', 'ok', true, 'external_id', hash_of,
      'payment_hash', encode(sha256(convert_to(hash_of, 'UTF8')), 'hex'),
      'payment_request', payledger.bolt11_create(sk('node'), i.invoice_msat, sha256(convert_to(hash_of, 'UTF8')), 'job')));
  RETURN QUERY SELECT i.invoice_id, i.invoice_msat, i.status::text;
END $$;
CREATE FUNCTION t_bolt11(inv uuid) RETURNS text LANGUAGE sql AS $$ SELECT payment_request FROM payledger.invoices WHERE id = inv $$;
CREATE TABLE t_inv (name text PRIMARY KEY, id uuid);

INSERT INTO t_job SELECT 'own_invoice', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 9000), r
  FROM t_request(5100, 'paid by our invoice') r;
-- the amount defaults to the price; the pay-in waits for its invoice
INSERT INTO t_inv SELECT 'own1', invoice FROM t_job_invoice(job('own_invoice'), NULL, 'own-1');
SELECT p.state, p.cost, p.owner_id = 'nostr:' || pk('customer') AS from_customer, i.status, i.amount, i.profile_id IS NOT NULL AS snapshotted
  FROM payledger.invoices i JOIN payledger.payins p ON p.id = i.payin_id WHERE i.id = (SELECT id FROM t_inv WHERE name = 'own1');
-- its bolt11 goes in the payment-required feedback
SELECT f -> 'tags' -> 1 ->> 2 = t_bolt11((SELECT id FROM t_inv WHERE name = 'own1')) AS bolt11_in_amount_tag
  FROM payledger.nostr_job_feedback(job('own_invoice'), 'payment-required', 9000, t_bolt11((SELECT id FROM t_inv WHERE name = 'own1'))) f;
SELECT t_publish(job('own_invoice'), payledger.nostr_job_feedback(job('own_invoice'), 'payment-required', 9000,
                                                                  t_bolt11((SELECT id FROM t_inv WHERE name = 'own1'))));
-- confirming payledger's own invoice by hand is refused (it credits itself)
SELECT t_try(format('SELECT * FROM payledger.nostr_job_pay_invoice(%L, %L, 9000)', job('own_invoice'),
                    encode(sha256('own-1'), 'hex'))) AS by_hand;
SELECT * FROM t_state(job('own_invoice'));
SELECT payledger.balance(:'dvm') AS revenue_before \gset
-- the provider says paid: the pay-in is PAID and the job processing, at once
SELECT payledger.invoice_apply(id, '{"op": "check", "status": "paid"}') FROM t_inv WHERE name = 'own1';
SELECT * FROM t_state(job('own_invoice'));
SELECT payledger.balance(:'dvm') - :revenue_before AS revenue_gained;
SELECT n.via, n.amount_msat, n.payment_hash = encode(sha256('own-1'), 'hex') AS by_hash, p.state, p.external_method
  FROM payledger.nostr_job_payments n JOIN payledger.payins p ON p.id = n.payin_id WHERE n.job_id = job('own_invoice');
-- the news again, or by hand: credited once
SELECT payledger.invoice_apply(id, '{"op": "check", "status": "paid"}') FROM t_inv WHERE name = 'own1';
SELECT outcome, paid_msat FROM payledger.nostr_job_pay_invoice(job('own_invoice'), encode(sha256('own-1'), 'hex'), 9000);
SELECT count(*) AS payments FROM payledger.nostr_job_payments WHERE job_id = job('own_invoice');
-- nothing left of the price to ask for, and a finished job asks for nothing
SELECT t_try(format('SELECT * FROM payledger.nostr_job_invoice(%L)', job('own_invoice'))) AS price_paid;
SELECT t_try(format('SELECT * FROM payledger.nostr_job_invoice(%L, 0)', job('own_invoice'))) AS zero;
SELECT t_try(format('SELECT * FROM payledger.nostr_job_invoice(%L, 1000)', job('upfront'))) AS finished;
SELECT t_try($$SELECT * FROM payledger.nostr_job_invoice('00000000-0000-0000-0000-000000000000', 1000)$$) AS no_job;

-- an invoice paid after the job timed out: recorded (the money is in the
-- provider's account), the job stays failed, and an event says so
INSERT INTO t_job SELECT 'late_invoice', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 4000,
                                                                  payment_timeout => '0 seconds'), r
  FROM t_request(5100, 'paid too late') r;
INSERT INTO t_inv SELECT 'late1', invoice FROM t_job_invoice(job('late_invoice'), NULL, 'late-1');
SELECT t_publish(job('late_invoice'), payledger.nostr_job_feedback(job('late_invoice'), 'payment-required', 4000,
                                                                   t_bolt11((SELECT id FROM t_inv WHERE name = 'late1'))));
SELECT payledger.nostr_expire_jobs() AS expired;
SELECT payledger.invoice_apply(id, '{"op": "check", "status": "paid"}') FROM t_inv WHERE name = 'late1';
SELECT * FROM t_state(job('late_invoice'));
SELECT topic, payload ->> 'amount_msat' AS amount_msat, payload ->> 'error' AS error
  FROM payledger.events WHERE topic = 'nostr_job.paid_after_failure';

---------------------------------------------------------------------------
-- What a job owes, and the events the provider acts on
---------------------------------------------------------------------------
SELECT coalesce(max(id), 0) AS ev0 FROM payledger.events \gset
-- a reminder asks for what is still owed and adds nothing: after the result
-- (30,000 asked), payment-required reminds of the same 30,000; one zap of
-- 30,000 settles it
INSERT INTO t_job SELECT 'remind', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'after_completion', 30000), r
  FROM t_request(5100, 'remind me') r;
SELECT t_publish(job('remind'), payledger.nostr_job_result(job('remind'), 'done'));
SELECT payledger.nostr_job_feedback(job('remind'), 'payment-required') -> 'tags' -> 1 AS reminder_asks;
SELECT t_publish(job('remind'), payledger.nostr_job_feedback(job('remind'), 'payment-required'));
SELECT * FROM t_state(job('remind'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('remind')), 30000, 'rm1'));
-- an upfront job asked twice owes its price once; paid in two parts
INSERT INTO t_job SELECT 'twice', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 20000), r
  FROM t_request(5100, 'ask twice') r;
SELECT t_publish(job('twice'), payledger.nostr_job_feedback(job('twice'), 'payment-required'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('twice')), 5000, 'tw1'));
SELECT payledger.nostr_job_feedback(job('twice'), 'payment-required') -> 'tags' -> 1 AS second_ask;
SELECT t_publish(job('twice'), payledger.nostr_job_feedback(job('twice'), 'payment-required'));
SELECT outcome, paid_msat, requested_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('twice')), 15000, 'tw2'));
-- flexible, paid upfront: payment-required holds it until paid, as an upfront job
INSERT INTO t_job SELECT 'flex_up', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'flexible', 12000), r
  FROM t_request(5100, 'flexible, upfront') r;
SELECT * FROM t_state(job('flex_up'));
SELECT t_publish(job('flex_up'), payledger.nostr_job_feedback(job('flex_up'), 'payment-required')) AS held;
SELECT outcome, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('flex_up')), 12000, 'fu1'));
SELECT t_publish(job('flex_up'), payledger.nostr_job_result(job('flex_up'), 'done')) AS after_result;
-- flexible, paid after the result: never held
INSERT INTO t_job SELECT 'flex_after', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'flexible', 12000), r
  FROM t_request(5100, 'flexible, after') r;
SELECT t_publish(job('flex_after'), payledger.nostr_job_result(job('flex_after'), 'done')) AS delivered;
SELECT outcome, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('flex_after')), 12000, 'fa1'));
-- progressive beyond the price: the job owes the sum of its parts
INSERT INTO t_job SELECT 'parts', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'flexible', 10000), r
  FROM t_request(5100, 'in parts') r;
SELECT t_publish(job('parts'), payledger.nostr_job_feedback(job('parts'), 'partial', 6000, message => 'part 1'));
SELECT t_publish(job('parts'), payledger.nostr_job_feedback(job('parts'), 'partial', 7000, message => 'part 2'));
SELECT * FROM t_state(job('parts'));
SELECT (payledger.nostr_job_result(job('parts'), 'all') -> 'tags' -> -1) AS result_asks;
-- the events: paid, partially paid
SELECT topic, payload ->> 'paid_msat' AS paid, payload ->> 'owed_msat' AS owed, payload ->> 'state' AS state
  FROM payledger.events WHERE id > :ev0 AND topic LIKE 'nostr_job.%' ORDER BY id;

-- timeouts: nothing paid (timed_out), some paid (insufficient)
INSERT INTO t_job SELECT 'silent', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 8000, payment_timeout => '1 millisecond'), r
  FROM t_request(5100, 'never paid') r;
SELECT t_publish(job('silent'), payledger.nostr_job_feedback(job('silent'), 'payment-required'));
INSERT INTO t_job SELECT 'short2', payledger.nostr_job_open(r, pk('provider'), pk('lnurl'), :'dvm', 'upfront', 8000, payment_timeout => '1 millisecond'), r
  FROM t_request(5100, 'paid short') r;
SELECT t_publish(job('short2'), payledger.nostr_job_feedback(job('short2'), 'payment-required'));
SELECT outcome FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('short2')), 3000, 'sh1'));
SELECT pg_sleep(0.01);
SELECT payledger.nostr_expire_jobs() >= 2 AS expired;
SELECT topic, payload ->> 'paid_msat' AS paid, payload ->> 'owed_msat' AS owed, payload ->> 'error' AS error
  FROM payledger.events WHERE topic IN ('nostr_job.timed_out', 'nostr_job.insufficient')
   AND subject_id IN (job('silent'), job('short2')) ORDER BY topic;
-- the provider then publishes its error feedback: recorded, the job stays failed
SELECT t_publish(job('silent'), payledger.nostr_job_feedback(job('silent'), 'error', message => 'payment timeout')) AS error_feedback;
SELECT t_try(format('SELECT payledger.nostr_job_published(%L, %L)', job('silent'),
                    payledger.nostr_sign_event(payledger.nostr_job_result(job('silent'), 'too late'), sk('provider')))) AS result_after_failure;

-- late zaps: to a failed job or a finished one, booked to suspense with an
-- event, never refused, never credited twice
SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments')) AS late_before \gset
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('silent')), 8000, 'late1'));
SELECT outcome FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('silent')), 8000, 'late1')) AS again;
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('remind')), 1000, 'late2'));
SELECT payledger.balance(payledger.account_id('payledger', 'msat', 'suspense', 'late_payments')) - :late_before AS to_suspense;
SELECT topic, payload ->> 'amount_msat' AS amount, payload ->> 'to' AS to_whom FROM payledger.events
 WHERE topic IN ('nostr_job.paid_after_failure', 'nostr_job.paid_after_completion') AND payload ->> 'to' = 'suspense'
   AND subject_id IN (job('silent'), job('remind')) ORDER BY id;
SELECT late, count(*) FROM payledger.nostr_job_payments WHERE job_id IN (job('silent'), job('remind')) GROUP BY late ORDER BY late;

---------------------------------------------------------------------------
-- Bad input: clear errors
---------------------------------------------------------------------------
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L, %L, %L, %L, 1)', request, pk('provider'), pk('lnurl'), :'dvm', 'upfront'))
  FROM t_job WHERE name = 'upfront';
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L, %L, %L, %L, 1)',
                    jsonb_set(t_request(5100, 'x'), '{content}', '"tampered"'), pk('provider'), pk('lnurl'), :'dvm', 'upfront'));
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L, %L, %L, %L, 1)',
                    payledger.nostr_sign_event('{"kind": 1, "content": "not a job"}', sk('customer')), pk('provider'), pk('lnurl'), :'dvm', 'upfront'));
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L, %L, %L, %L, 1)', t_request(5100, 'y'), pk('provider'), pk('lnurl'), :'dvm', 'later'));
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L, %L, %L, %L)', t_request(5100, 'z'), pk('provider'), pk('lnurl'), :'dvm', 'upfront'));
SELECT t_try(format('SELECT payledger.nostr_job_published(%L, %L)', job('invoice'),
                    payledger.nostr_sign_event(payledger.nostr_job_feedback(job('invoice'), 'processing'), sk('stranger'))));
SELECT t_try(format('SELECT payledger.nostr_job_feedback(%L, %L)', job('invoice'), 'done'));
SELECT t_try($$SELECT payledger.nostr_job_feedback('00000000-0000-0000-0000-000000000000', 'processing')$$);
SELECT t_try(format('SELECT outcome FROM payledger.nostr_job_pay_zap(%L)', t_zap(repeat('e', 64), 1000, 'x1')));
SELECT t_try(format('SELECT payledger.nostr_job_published(%L, %L)', job('upfront'),
                    payledger.nostr_sign_event(payledger.nostr_job_feedback(job('upfront'), 'processing'), sk('provider'))));

-- invoice helper: bad keys and networks are clear errors
SELECT t_try(format('SELECT payledger.bolt11_create(%L, 1000, %L, %L)', '\x01'::bytea, sha256('h'), 'x'));
SELECT t_try(format('SELECT payledger.bolt11_create(%L, 1000, %L, %L, network => %L)', sk('node'), sha256('h'), 'x', 'mars'));
SELECT t_try(format('SELECT payledger.bolt11_create(%L, 1000, %L)', sk('node'), sha256('h')));
SELECT t_try(format('SELECT payledger.bolt11_create(NULL, 1000, %L, %L)', sha256('h'), 'x'));

-- a provider's settings, taken by its jobs at creation: price by kind,
-- policy, timeout, methods, the progressive part
SELECT payledger.nostr_provider_configure(pk('provider'), pk('lnurl'), :'dvm', 'flexible', price_msat => 9000,
         kind_prices => '{"5200": 4000}', payment_timeout => '10 minutes', methods => ARRAY['invoice'], chunk_msat => 2500)
       = pk('provider') AS configured;
INSERT INTO t_job SELECT 'cfg', payledger.nostr_job_open(r, pk('provider')), r FROM t_request(5200, 'by settings') r;
INSERT INTO t_job SELECT 'cfg2', payledger.nostr_job_open(r, pk('provider'), price_msat => 1234, methods => ARRAY['zap', 'invoice']), r
  FROM t_request(5100, 'overridden') r;
SELECT j.name, x.policy, x.price_msat, x.requested_msat, x.payment_timeout, x.methods, x.chunk_msat
  FROM t_job j JOIN payledger.nostr_jobs x ON x.id = j.id WHERE j.name IN ('cfg', 'cfg2') ORDER BY j.name;
SELECT payledger.nostr_job_feedback(job('cfg'), 'partial', message => 'a part') -> 'tags' -> 1 AS partial_asks_a_chunk;
-- a job that takes only invoices: a zap is booked to suspense, not credited
SELECT t_publish(job('cfg'), payledger.nostr_job_feedback(job('cfg'), 'payment-required'));
SELECT outcome, paid_msat, state FROM payledger.nostr_job_pay_zap(t_zap(t_last_event(job('cfg')), 4000, 'cfgz'));
SELECT topic FROM payledger.events WHERE subject_id = job('cfg') ORDER BY id;
UPDATE payledger.nostr_jobs SET methods = ARRAY['zap'] WHERE id = job('cfg2');
SELECT t_try(format('SELECT invoice_msat FROM payledger.nostr_job_invoice(%L)', job('cfg2'))) AS zap_only;
-- bad settings
SELECT t_try(format('SELECT payledger.nostr_provider_configure(%L, %L, %L, %L)', pk('provider'), pk('lnurl'), :'dvm', 'sometimes'));
SELECT t_try(format('SELECT payledger.nostr_provider_configure(%L, %L, %L, methods => %L)', pk('provider'), pk('lnurl'), :'dvm', '{cash}'));
SELECT t_try(format('SELECT payledger.nostr_provider_configure(%L, %L, %L, kind_prices => %L)', pk('provider'), pk('lnurl'), :'dvm', '{"1": 5}'));
SELECT t_try(format('SELECT payledger.nostr_provider_configure(%L, %L, %L, chunk_msat => 0)', pk('provider'), pk('lnurl'), :'dvm'));
SELECT t_try(format('SELECT payledger.nostr_job_open(%L, %L)', t_request(5100, 'nobody'), pk('stranger')));

-- the service provider reads its jobs through the owner-filtered view
CREATE ROLE t_provider IN ROLE payledger_enduser;
SET ROLE t_provider;
SET payledger.owner_id = 'provider';
SELECT state, count(*) FROM payledger.my_nostr_jobs GROUP BY state ORDER BY state;
SET payledger.owner_id = 'someone else';
SELECT count(*) AS others_see FROM payledger.my_nostr_jobs;
SELECT t_try($$SELECT count(*) FROM payledger.nostr_jobs$$);
RESET payledger.owner_id;
RESET ROLE;
DROP ROLE t_provider;

SELECT count(*) AS violations FROM payledger.check_invariants();

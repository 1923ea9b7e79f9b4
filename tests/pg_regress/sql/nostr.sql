-- Nostr and Lightning primitives against every fixture in tests/fixtures:
-- BIP-340 vectors, BOLT11 spec vectors, real events and zap receipts; then
-- receipts tampered one field at a time, and malformed input.
\set db t_nostr
\i sql/fixtures/base.sql
\i sql/fixtures/people.sql
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixtures :abs_srcdir '/fixtures'

---------------------------------------------------------------------------
-- BIP-340: all 19 official vectors (messages of 0, 1, 17, 32 and 100 bytes)
---------------------------------------------------------------------------
CREATE TABLE t_bip340 (idx int, seckey text, pubkey text, aux text, msg text, sig text, expected boolean, comment text);
\set f :fixtures '/bip340_test_vectors.csv'
COPY t_bip340 FROM :'f' WITH (FORMAT csv, HEADER true);  -- (an empty message reads as NULL)
SELECT idx, expected,
       t_try(format('SELECT payledger.bip340_verify(%L, %L, %L)', decode(pubkey, 'hex'), decode(coalesce(msg, ''), 'hex'), decode(sig, 'hex'))) AS got,
       comment
  FROM t_bip340 ORDER BY idx;
SELECT count(*) AS vectors, count(*) FILTER (WHERE payledger.bip340_verify(decode(pubkey, 'hex'), decode(coalesce(msg, ''), 'hex'),
                                                                            decode(sig, 'hex')) = expected) AS as_expected
  FROM t_bip340 WHERE length(pubkey) = 64;
SELECT t_try($$SELECT payledger.bip340_verify('\x01', '\x', '\x00')$$);

---------------------------------------------------------------------------
-- BOLT11: the spec's vectors, valid and invalid
---------------------------------------------------------------------------
CREATE TABLE t_bolt11 (line serial, invoice text);
\set f :fixtures '/bolt11_spec_vectors.txt'
COPY t_bolt11 (invoice) FROM :'f';
SELECT b.line, d.network, d.amount_msat, left(d.payment_hash, 16) AS payment_hash, left(d.description, 30) AS description,
       left(d.description_hash, 16) AS description_hash, d.expiry_seconds, d.created_at, left(d.payee, 16) AS payee
  FROM t_bolt11 b, LATERAL (SELECT * FROM payledger.bolt11_decode(b.invoice)) d
 WHERE b.line NOT BETWEEN 16 AND 24 ORDER BY b.line;
SELECT line, t_try(format('SELECT payment_hash FROM payledger.bolt11_decode(%L)', invoice)) AS rejected
  FROM t_bolt11 WHERE line BETWEEN 16 AND 24 ORDER BY line;
-- an LNbits (FakeWallet) invoice has no features field: accepted, every other rule checked
CREATE TABLE t_lnbits (invoice text);
\set f :fixtures '/lnbits_fakewallet_invoice.txt'
COPY t_lnbits FROM :'f';
SELECT d.network, d.amount_msat, d.payment_hash, d.description, d.expiry_seconds
  FROM t_lnbits, payledger.bolt11_decode(invoice) d;
-- ... and one character changed in its signature part is refused (the bech32 checksum catches it)
SELECT t_try(format('SELECT payment_hash FROM payledger.bolt11_decode(%L)',
                    overlay(invoice placing CASE WHEN substr(invoice, length(invoice) - 10, 1) = 'q' THEN 'p' ELSE 'q' END
                            from length(invoice) - 10 for 1)))
  FROM t_lnbits;
-- a lightning: prefix and upper case are accepted; mixed case is not
SELECT amount_msat FROM payledger.bolt11_decode('lightning:' || (SELECT invoice FROM t_bolt11 WHERE line = 2));
SELECT amount_msat FROM payledger.bolt11_decode(upper((SELECT invoice FROM t_bolt11 WHERE line = 2)));

---------------------------------------------------------------------------
-- Events: ids recompute (emoji and newlines verbatim), signatures verify
---------------------------------------------------------------------------
CREATE TABLE t_event (name text PRIMARY KEY, ev jsonb);
\set f :fixtures '/nostr/kind1_emoji_valid.json'
INSERT INTO t_event VALUES ('kind1_emoji', pg_read_file(:'f')::jsonb);
\set f :fixtures '/nostr/kind1_newlines_valid.json'
INSERT INTO t_event VALUES ('kind1_newlines', pg_read_file(:'f')::jsonb);
\set f :fixtures '/nostr/kind4_valid.json'
INSERT INTO t_event VALUES ('kind4', pg_read_file(:'f')::jsonb);
SELECT name, payledger.nostr_event_id(ev) = ev ->> 'id' AS id_recomputes, payledger.nostr_verify_event(ev) AS valid
  FROM t_event ORDER BY name;
-- one changed character, one changed tag, another signature: no longer valid
SELECT name, payledger.nostr_verify_event(jsonb_set(ev, '{content}', to_jsonb((ev ->> 'content') || ' '))) AS content_changed,
       payledger.nostr_verify_event(jsonb_set(ev, '{tags}', ev -> 'tags' || '[["t", "x"]]')) AS tag_added,
       payledger.nostr_verify_event(jsonb_set(ev, '{sig}', (SELECT e2.ev -> 'sig' FROM t_event e2 WHERE e2.name <> t_event.name LIMIT 1))) AS other_sig
  FROM t_event ORDER BY name;
-- malformed events are errors, not verdicts
SELECT t_try($$SELECT payledger.nostr_event_id('[]')$$);
SELECT t_try($$SELECT payledger.nostr_event_id('{"pubkey": "ABC", "created_at": 1, "kind": 1, "tags": [], "content": ""}')$$);
SELECT t_try(format('SELECT payledger.nostr_event_id(%L)', jsonb_set(ev, '{kind}', '70000'))) FROM t_event WHERE name = 'kind4';
SELECT t_try(format('SELECT payledger.nostr_event_id(%L)', jsonb_set(ev, '{tags}', '[["e", 1]]'))) FROM t_event WHERE name = 'kind4';
SELECT t_try(format('SELECT payledger.nostr_event_id(%L)', ev - 'content')) FROM t_event WHERE name = 'kind4';

---------------------------------------------------------------------------
-- Zap receipts: the fixtures' verdicts
---------------------------------------------------------------------------
CREATE TABLE t_zap (name text PRIMARY KEY, ev jsonb);
\set f :fixtures '/nostr/fountain1_valid_d_field.json'
INSERT INTO t_zap VALUES ('fountain', pg_read_file(:'f')::jsonb);
\set f :fixtures '/nostr/minibits_valid_empty_d.json'
INSERT INTO t_zap VALUES ('minibits', pg_read_file(:'f')::jsonb);
\set f :fixtures '/nostr/nip57_spec_example_INVALID.json'
INSERT INTO t_zap VALUES ('nip57_example', pg_read_file(:'f')::jsonb);
SELECT z.name, v.valid, v.failures, v.amount_msat, left(v.payer_pubkey, 12) AS payer, left(v.payment_hash, 12) AS payment_hash,
       v.description_hash_present AS h_present, v.description_hash_matches AS h_matches, v.preimage_matches, v.request_lnurl,
       v.timing_ok
  FROM t_zap z, LATERAL payledger.verify_zap_receipt(z.ev, z.ev ->> 'pubkey') v ORDER BY z.name;
-- what the verifier expects: the recipient, the amount, the event
SELECT v.valid, v.failures
  FROM t_zap z, LATERAL payledger.verify_zap_receipt(z.ev, z.ev ->> 'pubkey',
         recipient => (SELECT t ->> 1 FROM jsonb_array_elements(z.ev -> 'tags') t WHERE t ->> 0 = 'p'),
         expected_amount_msat => 100000) v
 WHERE z.name = 'fountain';
SELECT v.valid, v.failures
  FROM t_zap z, LATERAL payledger.verify_zap_receipt(z.ev, z.ev ->> 'pubkey', recipient => repeat('a', 64),
                                                       expected_amount_msat => 99000, expected_event => repeat('e', 64)) v
 WHERE z.name = 'fountain';

---------------------------------------------------------------------------
-- Tampered receipts, one field at a time, each rejected with its reason
---------------------------------------------------------------------------
-- a tag of the receipt replaced (by name)
CREATE FUNCTION t_retag(ev jsonb, tag text, v text) RETURNS jsonb LANGUAGE sql AS $$
  SELECT jsonb_set(ev, '{tags}', (SELECT jsonb_agg(CASE WHEN t ->> 0 = tag THEN jsonb_build_array(tag, v) ELSE t END)
                                    FROM jsonb_array_elements(ev -> 'tags') t)) $$;
CREATE FUNCTION t_desc(ev jsonb) RETURNS jsonb LANGUAGE sql AS $$
  SELECT (SELECT t ->> 1 FROM jsonb_array_elements(ev -> 'tags') t WHERE t ->> 0 = 'description')::jsonb $$;
CREATE TEMP TABLE t_tampered AS
SELECT 'signature' AS field, jsonb_set(ev, '{sig}', to_jsonb(repeat('0', 128))) AS ev FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'pubkey', jsonb_set(ev, '{pubkey}', to_jsonb(repeat('1', 64))) FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'p tag', t_retag(ev, 'p', repeat('2', 64)) FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'bolt11 (another amount)', t_retag(ev, 'bolt11', (SELECT invoice FROM t_bolt11 WHERE line = 2)) FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'description (amount)', t_retag(ev, 'description',
                   jsonb_set(t_desc(ev), '{tags}', (SELECT jsonb_agg(CASE WHEN t ->> 0 = 'amount' THEN '["amount", "200000"]'::jsonb ELSE t END)
                                                      FROM jsonb_array_elements(t_desc(ev) -> 'tags') t))::text)
  FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'description (not JSON)', t_retag(ev, 'description', 'not json') FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'kind', jsonb_set(ev, '{kind}', '9734') FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'P tag', t_retag(ev, 'P', repeat('3', 64)) FROM t_zap WHERE name = 'fountain'
UNION ALL SELECT 'no bolt11', jsonb_set(ev, '{tags}', (SELECT jsonb_agg(t) FROM jsonb_array_elements(ev -> 'tags') t WHERE t ->> 0 <> 'bolt11'))
  FROM t_zap WHERE name = 'fountain';
SELECT t.field, v.valid, v.failures
  FROM t_tampered t, LATERAL payledger.verify_zap_receipt(t.ev, 'b866ce76be5b826695980248322b8df4c381608ffa5a5b47c4f3abe0d8f767a5') v
 ORDER BY t.field;

---------------------------------------------------------------------------
-- Malformed and huge input: a clear error (22023), never a crash
---------------------------------------------------------------------------
SELECT t_try($$SELECT count(*) FROM payledger.bolt11_decode('')$$);
SELECT t_try($$SELECT count(*) FROM payledger.bolt11_decode('lnbc1')$$);
SELECT t_try($$SELECT count(*) FROM payledger.bolt11_decode('not an invoice at all')$$);
SELECT t_try($$SELECT count(*) FROM payledger.bolt11_decode('lnbc' || repeat('q', 100000))$$);
SELECT t_try($$SELECT count(*) FROM payledger.bolt11_decode('lnbc1' || repeat('qpzry9x8', 800))$$);
SELECT t_try($$SELECT valid FROM payledger.verify_zap_receipt('{}', 'x')$$);
SELECT t_try($$SELECT valid FROM payledger.verify_zap_receipt('"text"', 'x')$$);
SELECT t_try(format($$SELECT valid FROM payledger.verify_zap_receipt(%L, 'x')$$,
                    jsonb_build_object('pubkey', repeat('a', 64), 'created_at', 1, 'kind', 9735, 'content', repeat('x', 1000000),
                                       'tags', (SELECT jsonb_agg(jsonb_build_array('t', g::text)) FROM generate_series(1, 10000) g))));
-- random bytes as invoices, events and signatures
SELECT count(*) AS random_invoices_rejected
  FROM generate_series(1, 200) g
 WHERE t_try(format('SELECT payment_hash FROM payledger.bolt11_decode(%L)',
                    'lnbc' || translate(encode(decode(md5(g::text) || md5((g + 1)::text), 'hex'), 'base64'), '+/=', 'xyz'))) LIKE '22023:%';
SELECT count(*) AS random_signatures_false
  FROM generate_series(1, 200) g
 WHERE NOT payledger.bip340_verify(sha256(g::text::bytea), sha256((g + 1)::text::bytea),
                                   sha256(g::text::bytea) || sha256((g + 2)::text::bytea));

---------------------------------------------------------------------------
-- Mutation fuzzing: every one-character deletion, substitution and insertion
-- of a valid invoice, and receipts with tags or fields of the wrong type;
-- each is a result or 22023, nothing else
---------------------------------------------------------------------------
CREATE TEMP TABLE t_fuzz AS
SELECT 'delete ' || i AS what, overlay(b.invoice placing '' from i for 1) AS input
  FROM t_bolt11 b, generate_series(1, length(b.invoice)) i WHERE b.line = 10
UNION ALL
SELECT 'replace ' || i, overlay(b.invoice placing CASE WHEN substr(b.invoice, i, 1) = 'q' THEN 'z' ELSE 'q' END from i for 1)
  FROM t_bolt11 b, generate_series(1, length(b.invoice)) i WHERE b.line = 10
UNION ALL
SELECT 'insert ' || i, overlay(b.invoice placing 'x' from i for 0)
  FROM t_bolt11 b, generate_series(1, length(b.invoice)) i WHERE b.line = 10;
SELECT count(*) AS mutated_invoices,
       count(*) FILTER (WHERE r LIKE 'ok%') AS decoded,
       count(*) FILTER (WHERE r LIKE '22023:%') AS rejected_22023,
       count(*) FILTER (WHERE r NOT LIKE 'ok%' AND r NOT LIKE '22023:%') AS other
  FROM (SELECT t_try(format('SELECT payment_hash FROM payledger.bolt11_decode(%L)', input)) AS r FROM t_fuzz) x;
-- receipts whose tags, tag values or fields have the wrong shape or type
CREATE TEMP TABLE t_fuzz_zap AS
SELECT 'tag ' || i || ' -> ' || v AS what,
       jsonb_set(z.ev, ARRAY['tags', (i - 1)::text], v::jsonb) AS ev
  FROM t_zap z, generate_series(1, jsonb_array_length((SELECT ev FROM t_zap WHERE name = 'fountain') -> 'tags')) i,
       unnest(ARRAY['null', '1', '"x"', '[]', '["bolt11"]', '["description", "{}"]', '["description", "[1, 2]"]',
                    '["bolt11", "lnbc1"]', '{"a": 1}', '[["nested"]]']) v
 WHERE z.name = 'fountain'
UNION ALL
SELECT 'field ' || k || ' -> ' || v, jsonb_set(z.ev, ARRAY[k], v::jsonb)
  FROM t_zap z, unnest(ARRAY['kind', 'created_at', 'pubkey', 'sig', 'content', 'tags', 'id']) k,
       unnest(ARRAY['null', '-1', '1e40', '"x"', '[]', '{}', '18446744073709551616']) v
 WHERE z.name = 'fountain';
SELECT count(*) AS mutated_receipts,
       count(*) FILTER (WHERE r = 'ok: false') AS invalid_verdicts,
       count(*) FILTER (WHERE r = 'ok: true') AS still_valid,
       count(*) FILTER (WHERE r LIKE '22023:%') AS rejected_22023,
       count(*) FILTER (WHERE r NOT LIKE 'ok%' AND r NOT LIKE '22023:%') AS other
  FROM (SELECT t_try(format($$SELECT valid FROM payledger.verify_zap_receipt(%L, %L)$$, ev,
                            coalesce(ev ->> 'pubkey', 'none'))) AS r
          FROM t_fuzz_zap) x;
SELECT t_try($$SELECT valid FROM payledger.verify_zap_receipt('{}', NULL)$$) AS null_key;

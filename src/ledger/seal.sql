-- Tamper evidence. Entries (with their journals) are sealed into
-- hash-chained blocks, off the hot path: the worker's housekeeping calls
-- seal_ledger() each tick. A block records, for each account row with new
-- entries, the range of seq it seals and a SHA-256 digest of each entry;
-- its hash covers the previous block's hash and every range. verify_ledger()
-- recomputes all of it and names what was altered. Someone who can rewrite
-- the entries and every seal after them can forge a consistent chain: keep
-- ledger_head() somewhere else (a log, another system) to catch that too.
-- See docs/reliability.md.

CREATE TABLE payledger.ledger_blocks (
    block_no  bigint PRIMARY KEY CHECK (block_no > 0),
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL,
    entries   integer NOT NULL CHECK (entries > 0),
    sealed_at timestamptz NOT NULL DEFAULT now()
);

-- The entries from_seq .. to_seq of one account row, sealed by a block, and
-- each one's digest (in seq order).
CREATE TABLE payledger.ledger_block_ranges (
    block_no   bigint NOT NULL REFERENCES payledger.ledger_blocks,
    account_id uuid NOT NULL,
    from_seq   bigint NOT NULL CHECK (from_seq > 0),
    to_seq     bigint NOT NULL,
    digests    bytea[] NOT NULL,
    PRIMARY KEY (block_no, account_id),
    CHECK (to_seq >= from_seq AND cardinality(digests) = to_seq - from_seq + 1)
);
CREATE INDEX ledger_block_ranges_account ON payledger.ledger_block_ranges (account_id, from_seq);

-- How far each account row is sealed (derived: the ranges are the record).
CREATE TABLE payledger.ledger_seal_marks (
    account_id uuid PRIMARY KEY,
    sealed_seq bigint NOT NULL
);

ALTER TABLE payledger.ledger_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.ledger_block_ranges ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.ledger_seal_marks ENABLE ROW LEVEL SECURITY;
CREATE TRIGGER ledger_blocks_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.ledger_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER ledger_block_ranges_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.ledger_block_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_blocks', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_block_ranges', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.ledger_seal_marks', '');

-- An entry's digest: SHA-256 of a canonical JSON array of its columns and its
-- journal's (times as epoch microseconds: the text of a timestamptz depends
-- on the session's time zone).
CREATE FUNCTION payledger_internal.entry_digest(e payledger.entries, j payledger.journals)
RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT sha256(convert_to(jsonb_build_array(
        e.account_id, e.seq, e.journal_id, e.owner_id, e.asset, e.amount, e.balance_after,
        (extract(epoch FROM e.effective_at) * 1000000)::bigint, (extract(epoch FROM e.effective_max) * 1000000)::bigint,
        j.id, j.kind, j.idempotency_key, encode(j.request_hash, 'hex'), j.hold_id, j.metadata,
        (extract(epoch FROM j.effective_at) * 1000000)::bigint, (extract(epoch FROM j.created_at) * 1000000)::bigint,
        j.entry_accounts, j.entry_seqs)::text, 'UTF8'));
$$;

-- A range's part of its block's hash.
CREATE FUNCTION payledger_internal.range_hash(account_id uuid, from_seq bigint, to_seq bigint, digests bytea[])
RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT uuid_send(account_id) || int8send(from_seq) || int8send(to_seq)
           || sha256((SELECT string_agg(d.d, ''::bytea ORDER BY d.o) FROM unnest(digests) WITH ORDINALITY AS d(d, o)));
$$;

-- Seal the entries committed since the last block, up to max_entries (whole
-- account rows first, in id order; the rest at the next call) into one
-- block, whose hash is SHA-256 of the previous block's hash, its number and
-- its ranges' hashes in account order. An account row's entries commit in
-- seq order (the row stays locked until then), so what this snapshot sees of
-- a row is a prefix of it. Returns the entries sealed (0: nothing new; no
-- block). One sealer at a time.
CREATE FUNCTION payledger.seal_ledger(max_entries integer DEFAULT 100000)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    prev payledger.ledger_blocks;
    n bigint;
    sealed bigint;
BEGIN
    IF max_entries IS NULL OR max_entries < 1 THEN
        RAISE EXCEPTION 'max_entries must be positive' USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(pg_catalog.hashtextextended('payledger.seal', 0));
    SELECT * INTO prev FROM payledger.ledger_blocks x ORDER BY x.block_no DESC LIMIT 1;
    n := coalesce(prev.block_no, 0) + 1;
    WITH todo AS (
        SELECT a.id, coalesce(m.sealed_seq, 0) + 1 AS from_seq, a.entry_count AS last_seq,
               sum(a.entry_count - coalesce(m.sealed_seq, 0)) OVER (ORDER BY a.id) AS upto
          FROM payledger.accounts a LEFT JOIN payledger.ledger_seal_marks m ON m.account_id = a.id
         WHERE a.entry_count > coalesce(m.sealed_seq, 0)),
    ranges AS (
        SELECT t.id, t.from_seq, least(t.last_seq, t.last_seq - (t.upto - max_entries))::bigint AS to_seq
          FROM todo t WHERE t.upto - (t.last_seq - t.from_seq + 1) < max_entries),
    dig AS (
        SELECT r.id, r.from_seq, r.to_seq,
               (SELECT array_agg(payledger_internal.entry_digest(e, j) ORDER BY e.seq)
                  FROM payledger.entries e JOIN payledger.journals j ON j.id = e.journal_id
                 WHERE e.account_id = r.id AND e.seq BETWEEN r.from_seq AND r.to_seq) AS digests
          FROM ranges r),
    blk AS (
        INSERT INTO payledger.ledger_blocks (block_no, prev_hash, hash, entries)
        SELECT n, coalesce(prev.hash, ''::bytea),
               sha256(coalesce(prev.hash, ''::bytea) || int8send(n)
                      || string_agg(payledger_internal.range_hash(d.id, d.from_seq, d.to_seq, d.digests), ''::bytea ORDER BY d.id)),
               sum(cardinality(d.digests))
          FROM dig d HAVING count(*) > 0
        RETURNING entries),
    rng AS (
        INSERT INTO payledger.ledger_block_ranges (block_no, account_id, from_seq, to_seq, digests)
        SELECT n, d.id, d.from_seq, d.to_seq, d.digests FROM dig d)
    INSERT INTO payledger.ledger_seal_marks AS m (account_id, sealed_seq)
    SELECT d.id, d.to_seq FROM dig d
    ON CONFLICT ON CONSTRAINT ledger_seal_marks_pkey DO UPDATE SET sealed_seq = excluded.sealed_seq;
    GET DIAGNOSTICS sealed = ROW_COUNT;
    RETURN CASE WHEN sealed > 0 THEN (SELECT b.entries FROM payledger.ledger_blocks b WHERE b.block_no = n) ELSE 0 END;
END;
$$;

-- The chain's head: publish it elsewhere now and then, to catch a rewrite of
-- the seals themselves.
CREATE FUNCTION payledger.ledger_head(OUT block_no bigint, OUT hash text, OUT sealed_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT b.block_no, encode(b.hash, 'hex'), b.sealed_at FROM payledger.ledger_blocks b ORDER BY b.block_no DESC LIMIT 1;
$$;

-- Every discrepancy between the seals and the ledger, in chain order (the
-- first row is the first thing altered); empty when all is intact:
--   block_altered   a block's hash does not follow from its ranges
--   chain_broken    a block's prev_hash is not the previous block's hash
--   entry_altered   an entry (or its journal) differs from what was sealed
--   entry_missing   a sealed entry is gone
--   range_gap       an account row's ranges do not follow one another
CREATE FUNCTION payledger.verify_ledger()
RETURNS TABLE (block_no bigint, problem text, account_id uuid, seq bigint, journal_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT x.block_no, x.problem, x.account_id, x.seq, x.journal_id FROM (
        SELECT b.block_no, 'block_altered' AS problem, NULL::uuid AS account_id, NULL::bigint AS seq, NULL::uuid AS journal_id, 1 AS o
          FROM payledger.ledger_blocks b
         WHERE b.hash IS DISTINCT FROM
               (SELECT sha256(b.prev_hash || int8send(b.block_no)
                              || string_agg(payledger_internal.range_hash(r.account_id, r.from_seq, r.to_seq, r.digests), ''::bytea
                                            ORDER BY r.account_id))
                  FROM payledger.ledger_block_ranges r WHERE r.block_no = b.block_no)
        UNION ALL
        SELECT b.block_no, 'chain_broken', NULL, NULL, NULL, 0
          FROM payledger.ledger_blocks b
          LEFT JOIN payledger.ledger_blocks p ON p.block_no = b.block_no - 1
         WHERE b.prev_hash IS DISTINCT FROM coalesce(p.hash, CASE WHEN b.block_no = 1 THEN ''::bytea END)
        UNION ALL
        SELECT r.block_no, CASE WHEN e.seq IS NULL THEN 'entry_missing' ELSE 'entry_altered' END,
               r.account_id, r.from_seq + d.o - 1, e.journal_id, 2
          FROM payledger.ledger_block_ranges r
         CROSS JOIN LATERAL unnest(r.digests) WITH ORDINALITY AS d(digest, o)
          LEFT JOIN payledger.entries e ON e.account_id = r.account_id AND e.seq = r.from_seq + d.o - 1
          LEFT JOIN payledger.journals j ON j.id = e.journal_id
         WHERE e.seq IS NULL OR j.id IS NULL OR payledger_internal.entry_digest(e, j) <> d.digest
        UNION ALL
        SELECT r.block_no, 'range_gap', r.account_id, r.from_seq, NULL, 3
          FROM payledger.ledger_block_ranges r
         WHERE r.from_seq <> 1 + coalesce((SELECT max(p.to_seq) FROM payledger.ledger_block_ranges p
                                            WHERE p.account_id = r.account_id AND p.block_no < r.block_no), 0)
    ) x
    ORDER BY x.block_no, x.o, x.account_id, x.seq;
$$;

-- tamper evidence, off the hot path: blocks of up to 100,000 entries, for
-- about 5 seconds a tick at most
SELECT payledger_internal.register_housekeeping_step('ledger', 'entries_sealed', 80, 'payledger.seal_ledger(integer)',
                                            per_call => 100000, max_calls => 2147483647, budget => '5 seconds');

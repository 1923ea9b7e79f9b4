-- payledger p2p: the wallets users attach to receive peer to peer. A p2p
-- pay-in's receiver share is paid into one of them (Stacker News' zaps to an
-- attached wallet) instead of a custodial balance.

-- nwc: Nostr Wallet Connect (NIP-47) over a relay; lnbits: an LNbits
-- wallet's invoice key; lnd_rest: an LND node's invoice macaroon;
-- lightning_address: LNURL-pay (LUD-16), no credentials.
CREATE TYPE payledger.receiver_wallet_kind AS ENUM ('nwc', 'lnbits', 'lnd_rest', 'lightning_address');

-- Non-secret settings only; credentials live in receiver_wallet_secrets.
CREATE TABLE payledger.receiver_wallets (
    id          uuid PRIMARY KEY,
    owner_id    text NOT NULL,     -- the receiver: the owner of the pay-out's account
    kind        payledger.receiver_wallet_kind NOT NULL,
    label       text NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    -- nwc: wallet_pubkey, relays, client_pubkey; lnbits, lnd_rest: url
    -- (tls_cert_pem); lightning_address: address
    config      jsonb NOT NULL,
    priority    integer NOT NULL DEFAULT 0,   -- lower first
    enabled     boolean NOT NULL DEFAULT true,
    -- health, kept by the worker: a wallet that failed this many times in a
    -- row is skipped for a while (see docs/p2p.md)
    consecutive_failures integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_failure_at timestamptz,
    last_error  text,
    last_ok_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- detached wallets stay (their pay-ins name them) but are never used
    detached_at timestamptz
);
CREATE INDEX receiver_wallets_owner_idx ON payledger.receiver_wallets (owner_id, priority) WHERE detached_at IS NULL;

-- Readable by the worker (a superuser connection) and payledger_admin only.
CREATE TABLE payledger.receiver_wallet_secrets (
    wallet_id   uuid PRIMARY KEY REFERENCES payledger.receiver_wallets ON DELETE CASCADE,
    credentials jsonb NOT NULL,  -- {"secret"} (nwc), {"invoice_key"}, {"invoice_macaroon"}
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE payledger.receiver_wallets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.receiver_wallet_secrets ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.receiver_wallets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.receiver_wallet_secrets', '');

-- One per p2p pay-in: the receiver's invoice its hold invoice wraps, and the
-- forward that pays it. (A retry is another pay-in, with its own row.)
--   asking      the receiver's wallet is being asked for an invoice (the worker)
--   wrapped     its invoice checked; the hold invoice, with the same payment
--               hash, is issued at the operator's node (payledger.invoices,
--               hold); forwarded once the payer's payment is held (HELD)
--   forwarding  the receiver's invoice is being paid by the node: recorded
--               before the call, so that after a crash it is looked up, never
--               paid twice
--   forwarded   paid, the preimage known: it settles the hold invoice
--   settled     the hold invoice settled: the pay-in is PAID
--   failed      no wallet, no node, the wallet refused, or the forward
--               failed (see failure); the pay-in is FAILED, and retried
--               (the fallback) when that blames the receiver's wallet
CREATE TABLE payledger.p2p_forwards (
    payin_id      uuid PRIMARY KEY,
    receiver_id   text NOT NULL,            -- the owner of the receiver pay-out's account
    wallet_id     uuid REFERENCES payledger.receiver_wallets,
    provider_id   uuid REFERENCES payledger.providers,   -- the operator's node, which holds
    amount        bigint NOT NULL CHECK (amount > 0),     -- msat for the receiver
    fee_budget    bigint NOT NULL CHECK (fee_budget >= 0), -- msat, the routing_fee pay-out
    status        text NOT NULL CHECK (status IN ('asking', 'wrapped', 'forwarding', 'forwarded', 'settled', 'failed')),
    failure       text,
    -- a failure the claim found (no wallet, no node, too few blocks), made
    -- in a transaction of its own (the pay-in's money moves then)
    fail_reason   payledger.payin_failure_reason,
    -- the receiver's invoice, once given and checked
    bolt11        text,
    payment_hash  text CHECK (payment_hash ~ '^[0-9a-f]{64}$'),
    expires_at    timestamptz,
    final_cltv    integer,                  -- its min_final_cltv_expiry
    -- the forward
    cltv_limit    integer,                  -- blocks the route may take (the held HTLC's less the margin)
    sent_at       timestamptz,
    preimage      text CHECK (preimage ~ '^[0-9a-f]{64}$'),
    fee_paid      bigint CHECK (fee_paid >= 0),  -- msat, the actual routing fee
    forwarded_at  timestamptz,
    settled_at    timestamptz,
    forward_journal uuid,                   -- the share and the fee leaving by Lightning, at PAID
    -- the worker's bookkeeping
    attempts      integer NOT NULL DEFAULT 0,
    errors        integer NOT NULL DEFAULT 0,
    last_error    text,
    next_check_at timestamptz,              -- NULL: nothing to do (failed: the fallback is due)
    locked_until  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT p2p_forward_wallet CHECK (status = 'failed' OR fail_reason IS NOT NULL
                                         OR (wallet_id IS NOT NULL AND provider_id IS NOT NULL)),
    CONSTRAINT p2p_forward_invoice CHECK (status IN ('asking', 'failed') OR (bolt11 IS NOT NULL AND payment_hash IS NOT NULL)),
    CONSTRAINT p2p_forward_sent CHECK (status NOT IN ('forwarding', 'forwarded', 'settled') OR sent_at IS NOT NULL),
    -- never a settle without the preimage
    CONSTRAINT p2p_forward_preimage CHECK (status NOT IN ('forwarded', 'settled')
                                           OR (preimage IS NOT NULL AND fee_paid IS NOT NULL AND forwarded_at IS NOT NULL)),
    -- (its journal is written in the same transaction, after the pay-in's:
    -- check_invariants() checks it)
    CONSTRAINT p2p_forward_settled CHECK ((status = 'settled') = (settled_at IS NOT NULL))
);
CREATE INDEX p2p_forwards_due_idx ON payledger.p2p_forwards (next_check_at) WHERE next_check_at IS NOT NULL;
-- the wrapped ones wait for their pay-in to be HELD
CREATE INDEX p2p_forwards_wrapped_idx ON payledger.p2p_forwards (payin_id) WHERE status = 'wrapped';
-- one receiver invoice is wrapped once
CREATE UNIQUE INDEX p2p_forwards_hash_idx ON payledger.p2p_forwards (payment_hash) WHERE status <> 'failed';
CREATE INDEX p2p_forwards_wallet_idx ON payledger.p2p_forwards (wallet_id);

ALTER TABLE payledger.p2p_forwards ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('payledger.p2p_forwards', '');

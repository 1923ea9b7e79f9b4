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

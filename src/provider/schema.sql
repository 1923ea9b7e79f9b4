-- payledger providers: merchant profiles, the payment providers they own,
-- the invoices issued at them (each pinned to its provider), subscriptions
-- (pinned to a profile and provider at creation), withdrawals (money out,
-- paid at a provider). The background worker (src/worker/) drives invoices
-- and withdrawals.

CREATE TYPE payledger.provider_kind AS ENUM ('lnbits', 'lnd_rest', 'cln_rest', 'btcpay', 'stripe');

-- creating: the worker is to create it at the provider; pending: issued,
-- unpaid; paid; expired: past its expiry unpaid (still watched for late
-- money until monitor_until); failed: never created, or invalid at the
-- provider.
CREATE TYPE payledger.invoice_status AS ENUM ('creating', 'pending', 'paid', 'expired', 'failed');

CREATE TABLE payledger.merchant_profiles (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    owner_id   text,                           -- the merchant, when profiles belong to tenants
    is_default boolean NOT NULL DEFAULT false, -- used when nothing routes a pay-in elsewhere
    metadata   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX merchant_profiles_one_default ON payledger.merchant_profiles ((true)) WHERE is_default;

-- Non-secret settings only; credentials live in provider_secrets.
CREATE TABLE payledger.providers (
    id             uuid PRIMARY KEY,
    profile_id     uuid NOT NULL REFERENCES payledger.merchant_profiles,
    name           text NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    kind           payledger.provider_kind NOT NULL,
    base_url       text NOT NULL CHECK (base_url ~ '^https?://[^\s/?#@]+(/[^\s?#]*)?$'),
    -- the pay-in external method it serves ('invoice' for Lightning, 'card', …)
    rail           text NOT NULL,
    -- amounts it is asked for are in this asset (msat for Lightning providers)
    asset          text NOT NULL REFERENCES payledger.assets (code),
    -- store_id (BTCPay), tls_cert_pem (LND, Core Lightning), …
    config         jsonb NOT NULL DEFAULT '{}'::jsonb,
    invoice_expiry interval NOT NULL DEFAULT '1 hour' CHECK (invoice_expiry > '0'),
    -- how long an expired invoice is still watched for money that arrives late
    -- (BTCPay's PaidLate); the provider's own figure wins when it gives one
    monitoring     interval NOT NULL DEFAULT '1 hour' CHECK (monitoring >= '0'),
    priority       integer NOT NULL DEFAULT 0,   -- lower first within a profile
    active         boolean NOT NULL DEFAULT true, -- inactive: no new invoices, old ones still polled
    -- health, kept by the worker: after failures it waits until retry_after
    consecutive_failures integer NOT NULL DEFAULT 0,
    retry_after    timestamptz,
    last_error     text,
    last_ok_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (profile_id, name)
);

-- Readable by the worker (a superuser connection) and payledger_admin only.
CREATE TABLE payledger.provider_secrets (
    provider_id    uuid PRIMARY KEY REFERENCES payledger.providers ON DELETE CASCADE,
    credentials    jsonb NOT NULL,  -- {"invoice_key"}, {"macaroon"}, {"rune"}, {"api_key"}, {"secret_key"}
    webhook_secret text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Which profile issues the invoices of a pay-in type (a product).
CREATE TABLE payledger.payin_routes (
    payin_type text PRIMARY KEY,
    profile_id uuid NOT NULL REFERENCES payledger.merchant_profiles
);

CREATE TABLE payledger.subscriptions (
    id              uuid PRIMARY KEY,
    owner_id        text NOT NULL,
    payin_type      text NOT NULL,
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    period          interval NOT NULL CHECK (period > '0'),
    methods         jsonb NOT NULL,
    payouts         jsonb,
    split           text,
    payees          jsonb,
    -- the snapshot: renewals are invoiced here, whatever the routes say later
    -- (NULL on rows made before snapshots existed: see docs/providers.md)
    profile_id      uuid REFERENCES payledger.merchant_profiles,
    provider_id     uuid REFERENCES payledger.providers,
    -- lapsed: a period went unpaid (its pay-in failed); no more renewals
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled', 'lapsed')),
    renewals        integer NOT NULL DEFAULT 0 CHECK (renewals >= 0),
    next_renewal_at timestamptz NOT NULL,
    last_payin_id   uuid,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- a renewal that failed (an error, not an unpaid invoice) is tried again
    -- after a backoff, so that it cannot hold up the others
    errors          integer NOT NULL DEFAULT 0 CHECK (errors >= 0),
    last_error      text,
    retry_at        timestamptz
);
CREATE INDEX subscriptions_due_idx ON payledger.subscriptions (next_renewal_at) WHERE status = 'active';

-- One invoice per pay-in; creation retries update the same row.
CREATE TABLE payledger.invoices (
    id              uuid PRIMARY KEY,
    payin_id        uuid NOT NULL UNIQUE,
    -- the snapshot of who issued it: polled there, whatever routes say later
    provider_id     uuid NOT NULL REFERENCES payledger.providers,
    provider_kind   payledger.provider_kind NOT NULL,
    provider_name   text NOT NULL,
    profile_id      uuid,
    subscription_id uuid,
    asset           text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),
    memo            text NOT NULL DEFAULT '',
    expiry          interval NOT NULL,
    status          payledger.invoice_status NOT NULL,
    external_id     text,       -- the provider's id (the payment hash for Lightning nodes)
    payment_hash    text CHECK (payment_hash ~ '^[0-9a-f]{64}$'),
    payment_request text,       -- BOLT11, checkout link or client secret
    expires_at      timestamptz,
    monitor_until   timestamptz,
    amount_received bigint CHECK (amount_received > 0),
    preimage        text,
    paid_at         timestamptz,
    -- paid after its pay-in had failed: the money went to the late account
    paid_late       boolean NOT NULL DEFAULT false,
    late_journal    uuid,
    -- more received than asked: the excess booked (record_overpayment)
    overpay_journal uuid,
    -- its pay-in ended (FAILED, CANCELLED) while it was open: requested (the
    -- worker is to cancel it at the provider), cancelled, too_late (paid
    -- first: late money), gone (the provider had no such invoice), cannot
    -- (LNbits, BTCPay: watched for late money until monitor_until instead)
    cancel          text CHECK (cancel IN ('requested', 'cancelled', 'too_late', 'gone', 'cannot')),
    cancelled_at    timestamptz,
    -- the worker's bookkeeping
    create_attempts integer NOT NULL DEFAULT 0,
    checks          integer NOT NULL DEFAULT 0,
    errors          integer NOT NULL DEFAULT 0,  -- consecutive
    last_error      text,
    next_check_at   timestamptz,                 -- NULL: no longer watched
    locked_until    timestamptz,                 -- a worker's claim on it
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- a hold invoice (a p2p pay-in's, src/p2p/): issued for a payment hash
    -- whose preimage payledger does not know, with this final CLTV delta;
    -- a payment to it is held by the node until settled or cancelled
    hold            boolean NOT NULL DEFAULT false,
    cltv_expiry     integer CHECK (cltv_expiry > 0),
    -- the payer's payment held by the node (LND's ACCEPTED): when first
    -- seen, how much, the held HTLC's timeout and the node's block height
    held_at         timestamptz,
    held_amount     bigint CHECK (held_amount > 0),
    htlc_expiry_height integer,
    held_block_height  integer,
    CONSTRAINT invoice_held CHECK (hold OR held_at IS NULL),
    CONSTRAINT invoice_hold CHECK (hold = (cltv_expiry IS NOT NULL) AND (NOT hold OR payment_hash IS NOT NULL)),
    CONSTRAINT invoice_issued CHECK (status IN ('creating', 'failed') OR external_id IS NOT NULL),
    CONSTRAINT invoice_paid CHECK ((status = 'paid') = (paid_at IS NOT NULL)
                                   AND (status = 'paid') = (amount_received IS NOT NULL)),
    CONSTRAINT invoice_late CHECK (paid_late = (late_journal IS NOT NULL) AND (NOT paid_late OR status = 'paid')),
    CONSTRAINT invoice_cancelled CHECK ((cancelled_at IS NOT NULL) = (cancel IN ('cancelled', 'gone'))
                                        AND (cancelled_at IS NULL OR status = 'failed')),
    CONSTRAINT invoice_overpaid CHECK (overpay_journal IS NULL OR (status = 'paid' AND amount_received > amount))
);
CREATE UNIQUE INDEX invoices_external_id ON payledger.invoices (provider_id, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX invoices_payment_hash ON payledger.invoices (payment_hash) WHERE payment_hash IS NOT NULL;
CREATE INDEX invoices_due_idx ON payledger.invoices (next_check_at) WHERE next_check_at IS NOT NULL;

-- Money out: a withdrawal pay-in's payment of a BOLT11 at a provider, or
-- its refund of a card payment (Stripe: destination is the PaymentIntent,
-- no payment hash).
--   resolving  a Lightning Address or LNURL (address) the worker is to turn
--              into a BOLT11 first
--   sending    to be paid at the worker's next claim
--   unknown    the worker claimed it to pay (recorded before the call): what
--              came of it is learnt by looking the payment up, never by paying again
--   pending    the provider is still paying
--   succeeded  paid; the pay-in is PAID, the fee booked
--   failed     not paid; the pay-in is FAILED, the escrow returned
CREATE TYPE payledger.withdrawal_status AS ENUM ('resolving', 'sending', 'unknown', 'pending', 'succeeded', 'failed');

CREATE TABLE payledger.withdrawals (
    id             uuid PRIMARY KEY,
    payin_id       uuid NOT NULL UNIQUE REFERENCES payledger.payins (id),
    provider_id    uuid NOT NULL REFERENCES payledger.providers (id),
    destination    text NOT NULL,          -- the BOLT11 paid, or the PaymentIntent refunded
    -- the Lightning Address or LNURL asked (destination is its BOLT11 once resolved)
    address        text,
    payment_hash   text CHECK (payment_hash ~ '^[0-9a-f]{64}$'),
    amount         bigint NOT NULL CHECK (amount > 0),
    max_fee        bigint NOT NULL CHECK (max_fee >= 0),
    -- where the unused fee budget goes back (the payer's first account)
    refund_account uuid NOT NULL REFERENCES payledger.accounts (id),
    status         payledger.withdrawal_status NOT NULL DEFAULT 'sending',
    fee            bigint CHECK (fee >= 0),
    preimage       text,
    -- the journal that settles the fee: the budget's unused part back to the
    -- payer, or a fee above the budget from suspense
    fee_journal    uuid,
    attempts       integer NOT NULL DEFAULT 0,
    errors         integer NOT NULL DEFAULT 0,
    last_error     text,
    sent_at        timestamptz,            -- when the worker last claimed it to pay
    next_check_at  timestamptz,
    locked_until   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    settled_at     timestamptz,
    CONSTRAINT withdrawal_settled CHECK ((status = 'succeeded') = (fee IS NOT NULL)
                                        AND (status IN ('succeeded', 'failed')) = (settled_at IS NOT NULL)),
    CONSTRAINT withdrawal_due CHECK (status NOT IN ('succeeded', 'failed') OR next_check_at IS NULL)
);
-- never two live payments of one hash at a provider (a BOLT11 is paid once)
CREATE UNIQUE INDEX withdrawals_live_hash ON payledger.withdrawals (provider_id, payment_hash) WHERE status <> 'failed';
CREATE INDEX withdrawals_due_idx ON payledger.withdrawals (next_check_at) WHERE next_check_at IS NOT NULL;

-- How long a pay-in may wait in a state before the housekeeping fails it,
-- where an operator changed the default (src/provider/deadlines.sql has the
-- defaults: a restore must not meet seeded rows). reason NULL: the
-- transition's own default.
CREATE TABLE payledger.payin_deadlines (
    state  payledger.payin_state PRIMARY KEY
           CHECK (state NOT IN ('PAID', 'FAILED', 'FORWARDING', 'FORWARDED')),
    after  interval NOT NULL CHECK (after > '0'),
    reason payledger.payin_failure_reason
);

ALTER TABLE payledger.merchant_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.provider_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_routes ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.withdrawals ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.payin_deadlines ENABLE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('payledger.merchant_profiles', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.providers', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.provider_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_routes', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.invoices', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.withdrawals', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.payin_deadlines', '');

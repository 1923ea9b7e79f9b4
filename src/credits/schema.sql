-- payledger credits: prepaid credits in grants (lots), burnt in one order,
-- metered against plans, blocked per metric. The model is Capgo's usage
-- credits (issue #941) with the semantics of OpenMeter, Lago, Stripe and Orb
-- (../shared/reference/credits-semantics.md); see docs/credits.md.
--
-- Every movement of credits is a ledger journal in the credits asset: each
-- grant has its own account (kind credit_grant) whose balance is what is
-- left of it; issuing, consuming, expiring and voiding move money between
-- that account and the system accounts credits_issued / credits_consumed /
-- credits_expired / credits_voided. Grant rows are never edited.

-- Grant accounts and the system accounts are the credits module's: the
-- generic API neither opens nor moves them (PL034), so that no credit is made
-- or spent outside this module.
INSERT INTO payledger.account_kinds (kind, description, builtin, module) VALUES
    ('credit_sink', 'where consumed, expired or voided credits go', true, 'credits'),
    ('credit_source', 'where granted credits come from', true, 'credits');
UPDATE payledger.account_kinds SET module = 'credits' WHERE kind = 'credit_grant';

-- At most one row (none: the defaults); set with credits_configure().
CREATE TABLE payledger.credit_settings (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    asset text NOT NULL DEFAULT 'credit',
    -- how long after a grant's expiry usage from before it may still burn it
    -- (metering runs late; the sweep waits this long)
    expiry_grace interval NOT NULL DEFAULT '1 day' CHECK (expiry_grace >= '0')
);

CREATE TABLE payledger.credit_metrics (
    metric     text PRIMARY KEY CHECK (metric ~ '^[a-z][a-z0-9_]{0,62}$'),
    -- counter: usage adds up over the cycle (MAU, bandwidth, build time);
    -- gauge: the cycle's usage is its highest reading (storage)
    kind       text NOT NULL CHECK (kind IN ('counter', 'gauge')),
    unit       text NOT NULL DEFAULT 'unit',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payledger.credit_grants (
    id              uuid PRIMARY KEY,
    org_id          text NOT NULL,
    amount          bigint NOT NULL CHECK (amount > 0),   -- in the credits asset's minor unit
    metric          text,                                 -- NULL: any metric
    priority        integer NOT NULL DEFAULT 10 CHECK (priority BETWEEN 0 AND 1000),  -- lower burns first
    category        text NOT NULL CHECK (category IN ('paid', 'promotional')),
    source          text NOT NULL CHECK (source IN ('purchase', 'recurring_purchase', 'gift_code', 'promotion',
                                                    'manual', 'rollover')),
    effective_at    timestamptz NOT NULL,
    expires_at      timestamptz,                          -- NULL: never
    cost_basis      numeric CHECK (cost_basis >= 0),      -- what one credit cost, in cost_asset
    cost_asset      text,
    payin_id        uuid,                                 -- the pay-in that bought it
    account_id      uuid NOT NULL UNIQUE,                 -- what is left of it
    grant_journal   uuid NOT NULL,
    idempotency_key text,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at IS NULL OR expires_at > effective_at)
);
CREATE UNIQUE INDEX credit_grants_key ON payledger.credit_grants (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX credit_grants_payin ON payledger.credit_grants (payin_id) WHERE payin_id IS NOT NULL;
CREATE INDEX credit_grants_org ON payledger.credit_grants (org_id, effective_at);

-- The burn queue: the grants in effect or to come, in burn order. A grant
-- leaves it when it has expired (and been swept) or is voided; its history
-- stays in the ledger. Balances and burns read these rows, never the past.
CREATE TABLE payledger.credit_live_grants (
    grant_id     uuid PRIMARY KEY,
    org_id       text NOT NULL,
    metric       text,
    priority     integer NOT NULL,
    expires_at   timestamptz,
    promo_first  smallint NOT NULL,   -- 0 promotional, 1 paid
    effective_at timestamptz NOT NULL,
    account_id   uuid NOT NULL
);
CREATE INDEX credit_live_burn ON payledger.credit_live_grants
    (org_id, priority, expires_at NULLS LAST, promo_first, effective_at, grant_id);
CREATE INDEX credit_live_expiry ON payledger.credit_live_grants (expires_at) WHERE expires_at IS NOT NULL;

-- A consumption: credits burnt for a metric at a time, by key; its parts say
-- which grants paid for it. An undo restores the same grants.
CREATE TABLE payledger.credit_consumptions (
    id              uuid PRIMARY KEY,
    org_id          text NOT NULL,
    metric          text NOT NULL,
    amount          bigint NOT NULL CHECK (amount >= 0),  -- burnt (may be less than asked)
    requested       bigint NOT NULL CHECK (requested > 0),
    usage_at        timestamptz NOT NULL,
    idempotency_key text NOT NULL,
    journal_id      uuid,
    undone_at       timestamptz,
    undo_journal    uuid,
    source          text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'metering')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, idempotency_key),
    CHECK ((amount > 0) = (journal_id IS NOT NULL)),
    CHECK ((undone_at IS NULL) = (undo_journal IS NULL) OR amount = 0)
);
CREATE INDEX credit_consumptions_org ON payledger.credit_consumptions (org_id, usage_at);

CREATE TABLE payledger.credit_consumption_parts (
    consumption_id uuid NOT NULL,
    grant_id       uuid NOT NULL,
    amount         bigint NOT NULL CHECK (amount > 0),
    category       text NOT NULL,
    PRIMARY KEY (consumption_id, grant_id)
);
CREATE INDEX credit_consumption_parts_grant ON payledger.credit_consumption_parts (grant_id);

-- Expiries and voids, one row per grant event (the journal says how much).
CREATE TABLE payledger.credit_grant_events (
    grant_id   uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('expired', 'voided', 'restored_expired')),
    amount     bigint NOT NULL CHECK (amount > 0),
    journal_id uuid NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    reason     text,
    PRIMARY KEY (grant_id, journal_id)
);

-- Overage prices, in credits per unit, by step of the cycle's overage
-- (graduated: each step prices the units that fall in it).
CREATE TABLE payledger.credit_price_tiers (
    metric          text NOT NULL REFERENCES payledger.credit_metrics,
    from_units      numeric NOT NULL CHECK (from_units >= 0),
    to_units        numeric CHECK (to_units > from_units),      -- NULL: no upper bound
    credits_per_unit numeric NOT NULL CHECK (credits_per_unit >= 0),
    PRIMARY KEY (metric, from_units)
);

CREATE TABLE payledger.credit_packages (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    metric       text REFERENCES payledger.credit_metrics,  -- NULL: any metric
    credits      bigint NOT NULL CHECK (credits > 0),
    price_asset  text NOT NULL,
    price        bigint NOT NULL CHECK (price > 0),
    -- NULL: one-time; else each period of a subscription grants again
    period       interval CHECK (period > '0'),
    validity     interval NOT NULL DEFAULT '1 year' CHECK (validity > '0'),
    priority     integer NOT NULL DEFAULT 10,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Where end users' purchases of packages priced in an asset are paid to
-- (buy_credits: end users never name an account).
CREATE TABLE payledger.credit_sales_accounts (
    asset      text PRIMARY KEY REFERENCES payledger.assets (code),
    account_id uuid NOT NULL REFERENCES payledger.accounts
);

CREATE TABLE payledger.gift_codes (
    code            text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9_-]{4,64}$'),
    credits         bigint NOT NULL CHECK (credits > 0),
    metric          text REFERENCES payledger.credit_metrics,
    valid_until     timestamptz,                 -- the code's own expiry
    validity        interval NOT NULL DEFAULT '1 year' CHECK (validity > '0'),  -- of each grant
    max_redemptions integer CHECK (max_redemptions > 0),  -- NULL: no total limit
    per_org_limit   integer NOT NULL DEFAULT 1 CHECK (per_org_limit > 0),
    redemptions     integer NOT NULL DEFAULT 0 CHECK (redemptions >= 0),
    priority        integer NOT NULL DEFAULT 5,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (max_redemptions IS NULL OR redemptions <= max_redemptions)
);

CREATE TABLE payledger.gift_redemptions (
    code     text NOT NULL,
    org_id   text NOT NULL,
    n        integer NOT NULL CHECK (n > 0),
    grant_id uuid NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, org_id, n)
);

-- Plans: a monthly limit per metric; usage beyond it is paid with credits.
CREATE TABLE payledger.credit_plans (
    name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE payledger.credit_plan_limits (
    plan   text NOT NULL REFERENCES payledger.credit_plans,
    metric text NOT NULL REFERENCES payledger.credit_metrics,
    monthly_limit numeric NOT NULL CHECK (monthly_limit >= 0),
    PRIMARY KEY (plan, metric)
);
CREATE TABLE payledger.credit_orgs (
    org_id      text PRIMARY KEY,
    plan        text REFERENCES payledger.credit_plans,  -- NULL: no plan, every unit is overage
    cycle_anchor timestamptz NOT NULL DEFAULT date_trunc('month', now()),  -- cycles are months from here
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Usage readings: counters add up over the cycle; gauges keep the highest.
CREATE TABLE payledger.credit_usage (
    org_id      text NOT NULL,
    metric      text NOT NULL,
    cycle_start timestamptz NOT NULL,
    usage       numeric NOT NULL DEFAULT 0 CHECK (usage >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, cycle_start)
);

-- The metering watermark and blocking state per org, metric and cycle: the
-- credits charged so far for the cycle's overage, and what could not be
-- paid. A run charges cost(overage) - charged, under this row's lock.
CREATE TABLE payledger.credit_meters (
    org_id      text NOT NULL,
    metric      text NOT NULL,
    cycle_start timestamptz NOT NULL,
    overage     numeric NOT NULL DEFAULT 0,
    cost        bigint NOT NULL DEFAULT 0 CHECK (cost >= 0),     -- credits the overage costs
    charged     bigint NOT NULL DEFAULT 0 CHECK (charged >= 0),  -- credits burnt for it
    forgiven    bigint NOT NULL DEFAULT 0 CHECK (forgiven >= 0), -- charges undone (refunded)
    blocked     boolean NOT NULL DEFAULT false,                  -- owed and out of credits
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, metric, cycle_start),
    CHECK (charged + forgiven <= cost),
    CHECK (blocked = (charged + forgiven < cost))
);
CREATE INDEX credit_meters_blocked ON payledger.credit_meters (org_id) WHERE blocked;

-- A meter as a metering run sees it (meter_batch's working set).
CREATE TYPE payledger.credit_meter_due AS (
    org_id      text,
    metric      text,
    cycle_start timestamptz,
    usage_at    timestamptz,  -- the latest reading's time (at most now): the burn is judged then
    overage     numeric,
    owed        bigint,       -- what the overage costs now, never less than settled
    settled     bigint,       -- charged + forgiven so far
    charged     bigint,
    is_new      boolean,      -- no meter row yet
    changed     boolean       -- overage or cost differ from the row's
);

-- Threshold rules: an event is written when an organisation's credits cross
-- one (once per crossing): used_pct (share of active granted credit used, in
-- percent), depleted (nothing left; its falling edge is "recovered"),
-- expiring (credit left expires within `days`).
CREATE TABLE payledger.credit_thresholds (
    name   text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind   text NOT NULL CHECK (kind IN ('used_pct', 'depleted', 'expiring')),
    value  numeric NOT NULL DEFAULT 0 CHECK (value >= 0),  -- percent, or days
    active boolean NOT NULL DEFAULT true
);
-- Whether each rule holds for each organisation, as last seen.
CREATE TABLE payledger.credit_threshold_state (
    org_id     text NOT NULL,
    threshold  text NOT NULL,
    crossed    boolean NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, threshold)
);

-- What the organisation has been told about a meter in a cycle (the plan
-- notices run, src/credits/thresholds.sql): the highest share of the
-- metric's plan limit its usage reached (50, 75, 90, 100 %), and whether it
-- was last told the metric is blocked.
CREATE TABLE payledger.credit_plan_notices (
    org_id      text NOT NULL,
    metric      text NOT NULL,
    cycle_start timestamptz NOT NULL,
    level       integer NOT NULL DEFAULT 0 CHECK (level IN (0, 50, 75, 90, 100)),
    -- the level before the last raise (the events are for the levels between)
    previous_level integer NOT NULL DEFAULT 0 CHECK (previous_level < level OR level = 0),
    blocked     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (org_id, metric, cycle_start)
);

ALTER TABLE payledger.credit_thresholds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_plan_notices ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_threshold_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_metrics ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_live_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_consumptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_consumption_parts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_grant_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_price_tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_packages ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.gift_codes ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_sales_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.gift_redemptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_plan_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.credit_meters ENABLE ROW LEVEL SECURITY;

CREATE TRIGGER credit_grants_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_grants
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER credit_consumption_parts_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_consumption_parts
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();
CREATE TRIGGER credit_grant_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON payledger.credit_grant_events
    FOR EACH STATEMENT EXECUTE FUNCTION payledger_internal.reject_mutation();

SELECT pg_catalog.pg_extension_config_dump('payledger.credit_settings', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_metrics', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_grants', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_live_grants', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_consumptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_consumption_parts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_grant_events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_price_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_packages', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_sales_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.gift_codes', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.gift_redemptions', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_plans', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_plan_limits', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_orgs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_usage', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_meters', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_thresholds', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_threshold_state', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.credit_plan_notices', '');

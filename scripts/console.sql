-- The credits console's data, for the demo (after scripts/demo.sql) and for
-- tests/integration/console.sh: on top of the demo's credits (the metrics
-- storage and bandwidth, the plan starter, the organisation acme) and its
-- Lightning provider. Two organisations, three users, packages sold for
-- sats, and eleven months of history.
SELECT payledger.set_credit_org('globex', 'starter');
-- ana owns acme and may only look at globex; bo is a member of globex
SELECT payledger.add_org_member('acme', 'ana', 'owner') AS ana_acme,
       payledger.add_org_member('globex', 'ana', 'read_only') AS ana_globex,
       payledger.add_org_member('globex', 'bo', 'member') AS bo_globex;
SELECT payledger.define_credit_package('credits-100', 100, 'msat', 50000) IS NOT NULL AS credits_100,
       payledger.define_credit_package('credits-1000', 1000, 'msat', 400000) IS NOT NULL AS credits_1000,
       payledger.define_credit_package('monthly-500', 500, 'msat', 200000, period => '1 month') IS NOT NULL AS monthly_500;
SELECT payledger.set_credit_sales_account('msat', payledger.open_account('vendor', 'msat', 'revenue', 'credit_sales'))
       IS NOT NULL AS on_sale;
-- a year's grant, used month by month (bandwidth), and a promotion for globex
SELECT payledger.grant_credits('acme', 300, 'purchase', expires_at => now() + interval '40 days',
                               effective_at => now() - interval '1 year') IS NOT NULL AS acme_granted,
       payledger.grant_credits('globex', 7, 'promotion') IS NOT NULL AS globex_granted;
SELECT sum(c.consumed) AS acme_history_used
  FROM generate_series(1, 11) n,
       LATERAL payledger.consume_credits('acme', 'bandwidth', 4 + (n * 7) % 13, 'history-' || n,
                                         usage_at => now() - make_interval(months => n)) c;
SELECT payledger.record_usage('acme', 'bandwidth', 40) AS acme_bandwidth;
-- globex stores 100 GiB on a 5 GiB plan: metering burns its 7 credits and
-- blocks storage (uploads), not bandwidth
SELECT payledger.record_usage('globex', 'storage', 100) AS globex_storage, payledger.meter_org('globex') AS globex_metered;

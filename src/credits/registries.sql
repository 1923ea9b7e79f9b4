-- payledger credits: metrics, their price tiers, plans, organisations and
-- their billing cycles (admin).

CREATE FUNCTION payledger.register_credit_metric(metric text, kind text DEFAULT 'counter', unit text DEFAULT 'unit')
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(metric, 'metric');
    IF metric !~ '^[a-z][a-z0-9_]{0,62}$' OR kind IS NULL OR kind NOT IN ('counter', 'gauge') THEN
        RAISE EXCEPTION 'a metric is a lower-case name, of kind counter or gauge' USING ERRCODE = '22023';
    END IF;
    INSERT INTO payledger.credit_metrics AS m (metric, kind, unit) VALUES (metric, kind, coalesce(unit, 'unit'))
    ON CONFLICT ON CONSTRAINT credit_metrics_pkey DO NOTHING;
    IF NOT FOUND AND (SELECT m.kind FROM payledger.credit_metrics m WHERE m.metric = register_credit_metric.metric) <> kind THEN
        RAISE EXCEPTION 'metric % exists with another kind', metric USING ERRCODE = 'PL014';
    END IF;
    RETURN metric;
END;
$$;

CREATE FUNCTION payledger_internal.credit_require_metric(metric text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    IF metric IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_metrics m WHERE m.metric = credit_require_metric.metric) THEN
        RAISE EXCEPTION 'metric % is not registered', metric USING ERRCODE = 'PL031';
    END IF;
END;
$$;

-- tiers: [{"from": 0, "to": 1000000, "price": 0.003}, {"from": 1000000, "price": 0.0022}]
-- in credits per unit of overage, contiguous from 0, the last one open.
CREATE FUNCTION payledger.set_credit_price_tiers(metric text, tiers jsonb)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    t record;
    expect numeric := 0;
    n integer := 0;
    last_open boolean := false;
BEGIN
    PERFORM payledger_internal.require(metric, 'metric');
    PERFORM payledger_internal.require(tiers, 'tiers');
    PERFORM payledger_internal.credit_require_metric(metric);
    IF jsonb_typeof(tiers) <> 'array' OR jsonb_array_length(tiers) = 0 THEN
        RAISE EXCEPTION 'tiers must be a non-empty JSON array' USING ERRCODE = '22023';
    END IF;
    DELETE FROM payledger.credit_price_tiers p WHERE p.metric = set_credit_price_tiers.metric;
    FOR t IN SELECT (x ->> 'from')::numeric AS f, (x ->> 'to')::numeric AS u, (x ->> 'price')::numeric AS price
               FROM jsonb_array_elements(tiers) x LOOP
        IF last_open OR t.f IS DISTINCT FROM expect OR t.price IS NULL OR t.price < 0 OR (t.u IS NOT NULL AND t.u <= t.f) THEN
            RAISE EXCEPTION 'tiers must run contiguously from 0 (each "from" the previous "to"), with a price >= 0'
                USING ERRCODE = '22023';
        END IF;
        INSERT INTO payledger.credit_price_tiers VALUES (metric, t.f, t.u, t.price);
        expect := t.u;
        last_open := t.u IS NULL;
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

-- What an overage costs, in credits (graduated tiers), rounded up to the
-- asset's minor unit once, on the total.
CREATE FUNCTION payledger.credit_cost(metric text, overage numeric)
RETURNS numeric LANGUAGE sql STABLE SET search_path = payledger, pg_catalog, pg_temp AS $$
    SELECT trim_scale(ceil(coalesce(sum((least(overage, coalesce(p.to_units, overage)) - p.from_units) * p.credits_per_unit), 0)
                           * (10::numeric ^ a.scale)) / (10::numeric ^ a.scale))
      FROM payledger.assets a
      LEFT JOIN payledger.credit_price_tiers p ON p.metric = credit_cost.metric AND p.from_units < greatest(overage, 0)
     WHERE a.code = payledger.credit_asset()
     GROUP BY a.scale;
$$;
GRANT EXECUTE ON FUNCTION payledger.credit_cost(text, numeric) TO payledger_app;

CREATE FUNCTION payledger.define_credit_plan(name text, limits jsonb)
RETURNS text LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    k text;
BEGIN
    PERFORM payledger_internal.require(name, 'name');
    IF name !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' OR jsonb_typeof(limits) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'a plan has a name and limits as {"metric": monthly limit}' USING ERRCODE = '22023';
    END IF;
    FOR k IN SELECT jsonb_object_keys(limits) LOOP
        PERFORM payledger_internal.credit_require_metric(k);
        IF jsonb_typeof(limits -> k) <> 'number' OR (limits ->> k)::numeric < 0 THEN
            RAISE EXCEPTION 'the limit of % must be a number >= 0', k USING ERRCODE = '22023';
        END IF;
    END LOOP;
    INSERT INTO payledger.credit_plans (name) VALUES (name) ON CONFLICT DO NOTHING;
    DELETE FROM payledger.credit_plan_limits l WHERE l.plan = define_credit_plan.name;
    INSERT INTO payledger.credit_plan_limits (plan, metric, monthly_limit)
    SELECT name, e.key, e.value::text::numeric FROM jsonb_each(limits) e;
    RETURN name;
END;
$$;

-- An organisation's plan and billing-cycle anchor (cycles are months from it).
CREATE FUNCTION payledger.set_credit_org(org text, plan text DEFAULT NULL, cycle_anchor timestamptz DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require(org, 'org');
    IF plan IS NOT NULL AND NOT EXISTS (SELECT 1 FROM payledger.credit_plans p WHERE p.name = set_credit_org.plan) THEN
        RAISE EXCEPTION 'plan % does not exist', plan USING ERRCODE = 'PL031';
    END IF;
    INSERT INTO payledger.credit_orgs AS o (org_id, plan, cycle_anchor)
    VALUES (org, plan, coalesce(cycle_anchor, date_trunc('month', now())))
    ON CONFLICT ON CONSTRAINT credit_orgs_pkey DO UPDATE
       SET plan = excluded.plan, cycle_anchor = coalesce(set_credit_org.cycle_anchor, o.cycle_anchor);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.set_credit_org(text, text, timestamptz) TO payledger_app;

-- The start of the monthly cycle containing t: anchor + m months, for the m
-- that lands in t's own month, or the one before it (months clamp to their
-- last day: from Jan 31 the cycles start Feb 28, Mar 31, ...).
CREATE FUNCTION payledger_internal.credit_cycle_start(anchor timestamptz, t timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m integer := (extract(year FROM t) - extract(year FROM anchor)) * 12 + extract(month FROM t) - extract(month FROM anchor);
BEGIN
    RETURN anchor + make_interval(months => m - (anchor + make_interval(months => m) > t)::integer);
END;
$$;

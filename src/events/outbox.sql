-- payledger events: the outbox. Rows written in the transaction that makes
-- the change, announced by one NOTIFY payledger_events shortly after, read
-- by id.

-- Only the row: a NOTIFY in the writing transaction would take PostgreSQL's
-- cluster-wide notify lock at every commit (it serializes committing
-- notifiers, and cut pay-in throughput by about a third in the benchmark).
-- announce_events() sends one NOTIFY for all rows written since the last.
-- (PL/pgSQL: its INSERT's plan is kept for the session; a SQL function with
-- SET is planned again at every call)
CREATE FUNCTION payledger_internal.emit_event(topic text, subject uuid, owner text, payload jsonb)
RETURNS bigint LANGUAGE plpgsql VOLATILE SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    event_id bigint;
BEGIN
    INSERT INTO payledger.events AS e (topic, subject_id, owner_id, payload)
    VALUES (emit_event.topic, subject, owner, payload) RETURNING e.id INTO event_id;
    RETURN event_id;
END;
$$;

-- NOTIFY payledger_events once, with {"last_id": n}, when events were written
-- since the last announcement; returns n (NULL: nothing new). The worker calls
-- it every payledger.worker_notify_interval ms, run_tick at its end. The
-- UPDATE makes concurrent announcers take turns.
CREATE FUNCTION payledger.announce_events()
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
DECLARE
    newest bigint;
BEGIN
    SELECT max(e.id) INTO newest FROM payledger.events e;
    UPDATE payledger.events_announced a SET last_id = newest WHERE a.last_id < newest;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('payledger_events', jsonb_build_object('last_id', newest)::text);
    RETURN newest;
END;
$$;

CREATE FUNCTION payledger.events_since(after_id bigint DEFAULT 0, max_events integer DEFAULT 100)
RETURNS SETOF payledger.events LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = payledger, pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payledger_internal.require_limit(coalesce(max_events, 100), 'max_events');
    RETURN QUERY SELECT * FROM payledger.events e WHERE e.id > coalesce(after_id, 0) ORDER BY e.id
                  LIMIT least(coalesce(max_events, 100), 10000);
END;
$$;
GRANT EXECUTE ON FUNCTION payledger.events_since(bigint, integer) TO payledger_app;

CREATE VIEW payledger.my_events WITH (security_barrier) AS
SELECT e.id, e.topic, e.subject_id, e.payload, e.created_at
  FROM payledger.events e
 WHERE e.owner_id = payledger.current_owner_id();

-- payledger events: the outbox of what happened (settlements, failures,
-- late money, hook failures) and the settle hooks that applications hang on
-- pay-ins. Below the providers, above pay-ins: every module may write an
-- event; pay-ins reach this room only through their lifecycle registry.

-- Application functions run when a pay-in reaches one of on_states.
CREATE TABLE payledger.settle_hooks (
    name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    function     text NOT NULL,  -- a signature (payledger_internal.proc_name)
    on_states    payledger.payin_state[] NOT NULL CHECK (on_states <@ '{PAID,FAILED,CANCELLED}'),
    max_attempts integer NOT NULL DEFAULT 10 CHECK (max_attempts >= 1),
    -- the registering session's search_path: the hook runs with it, as it
    -- would have in that session
    search_path  text NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One run per hook, pay-in and state: the key makes a hook run once even when
-- the webhook and the worker both settle (only one of them moves the pay-in).
CREATE TABLE payledger.hook_runs (
    hook            text NOT NULL,
    payin_id        uuid NOT NULL,
    state           payledger.payin_state NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    PRIMARY KEY (hook, payin_id, state)
);
CREATE INDEX hook_runs_due_idx ON payledger.hook_runs (next_attempt_at) WHERE status = 'pending';

-- The outbox: settlements, failures, late money, hook failures. Written in
-- the transaction that makes the change; announced by NOTIFY payledger_events
-- shortly after commit (announce_events); consumers read by id.
CREATE TABLE payledger.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      text NOT NULL,
    subject_id uuid,
    owner_id   text,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_owner_idx ON payledger.events (owner_id, id) WHERE owner_id IS NOT NULL;

-- One row: the last event announced by NOTIFY payledger_events.
CREATE TABLE payledger.events_announced (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_id bigint NOT NULL DEFAULT 0
);
INSERT INTO payledger.events_announced DEFAULT VALUES;

ALTER TABLE payledger.settle_hooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.hook_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE payledger.events_announced ENABLE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('payledger.settle_hooks', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.hook_runs', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.events', '');
SELECT pg_catalog.pg_extension_config_dump('payledger.events_id_seq', '');

-- The bot's own schema. The platform's tables are never altered (no columns, triggers or indexes added).

CREATE TABLE rollback_bot.incidents (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('rollback', 'halt', 'resume', 'fix')),
    model_name      text,
    target_backup   text,
    from_version    text,
    state           text NOT NULL,
    reason          text NOT NULL DEFAULT '',
    severity        text NOT NULL DEFAULT 'high',
    estimated_loss  double precision,
    keep_halted     boolean NOT NULL DEFAULT false,
    requested_by    text NOT NULL,
    approved_by     text,
    decided_by      text,
    decision_note   text,
    source          text NOT NULL DEFAULT 'slack',
    channel         text,
    message_ts      text,
    thread_ts       text,
    emergency_backup text,
    target_sha256   text,
    deployed_at     timestamptz,
    previous_rows   jsonb,
    plan            jsonb NOT NULL DEFAULT '{}'::jsonb,
    error           text,
    root_cause      text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    approved_at     timestamptz,
    expires_at      timestamptz,
    halted_at       timestamptz,
    resumed_at      timestamptz,
    resolved_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- At most one open rollback per model, enforced by the database (two bot processes behave as one).
CREATE UNIQUE INDEX incidents_one_open_per_model ON rollback_bot.incidents (model_name)
    WHERE kind = 'rollback' AND state NOT IN ('resolved', 'denied', 'failed', 'cancelled');
CREATE INDEX incidents_state ON rollback_bot.incidents (state);

-- The journal: every step with start/end time, actor, outcome and error text.
CREATE TABLE rollback_bot.steps (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES rollback_bot.incidents(id),
    step        text NOT NULL,
    actor       text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome     text NOT NULL DEFAULT 'running' CHECK (outcome IN ('running', 'ok', 'failed', 'warning', 'skipped')),
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    error       text
);
CREATE INDEX steps_incident ON rollback_bot.steps (incident_id, id);

-- Who asked for what, including every refusal.
CREATE TABLE rollback_bot.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    action      text NOT NULL,
    outcome     text NOT NULL,
    incident_id bigint,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The trading-halt flag the platform can read:  SELECT halted FROM rollback_bot.trading_state;
CREATE TABLE rollback_bot.trading_halts (
    id          bigserial PRIMARY KEY,
    halted_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    halted_by   text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    resumed_at  timestamptz,
    resumed_by  text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- At most one active halt at a time.
CREATE UNIQUE INDEX trading_halts_one_active ON rollback_bot.trading_halts ((true)) WHERE resumed_at IS NULL;

-- Who keeps the active halt in place (an incident, or a person's manual halt); resume restores
-- settings only when the last holder lets go.
CREATE TABLE rollback_bot.halt_holders (
    halt_id     bigint NOT NULL REFERENCES rollback_bot.trading_halts(id),
    holder      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (halt_id, holder)
);

-- Each active client's own settings before the halt, restored exactly on resume.
CREATE TABLE rollback_bot.saved_client_settings (
    halt_id                 bigint NOT NULL REFERENCES rollback_bot.trading_halts(id),
    client_id               text NOT NULL,
    auto_rebalance          boolean,
    require_manual_approval boolean,
    restored                boolean NOT NULL DEFAULT false,
    PRIMARY KEY (halt_id, client_id)
);

CREATE VIEW rollback_bot.trading_state AS
    SELECT EXISTS (SELECT 1 FROM rollback_bot.trading_halts WHERE resumed_at IS NULL) AS halted,
           (SELECT halted_at FROM rollback_bot.trading_halts WHERE resumed_at IS NULL) AS since,
           (SELECT reason FROM rollback_bot.trading_halts WHERE resumed_at IS NULL) AS reason;

-- Background work shared by every bot process: claimed with FOR UPDATE SKIP LOCKED, so each job runs once.
CREATE TABLE rollback_bot.jobs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    incident_id bigint,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    run_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    dedupe_key  text UNIQUE,
    attempts    int NOT NULL DEFAULT 0,
    locked_by   text,
    locked_until timestamptz,
    done_at     timestamptz,
    last_error  text
);
CREATE INDEX jobs_due ON rollback_bot.jobs (run_at) WHERE done_at IS NULL;

-- Slack deliveries already handled (retries and duplicates answered once).
CREATE TABLE rollback_bot.deliveries (
    key         text PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    result      jsonb
);

-- Follow-ups after a rollback (the runbook's next steps and "prevention measures identified"): one row per item,
-- with an owner and a due date; reminders are jobs in rollback_bot.jobs.
CREATE TABLE rollback_bot.followups (
    id           bigserial PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES rollback_bot.incidents(id),
    kind         text NOT NULL CHECK (kind IN ('root_cause', 'monitoring', 'retrain', 'checklist', 'prevention')),
    title        text NOT NULL,
    owner        text,
    assigned_by  text,
    assigned_at  timestamptz,
    due_at       timestamptz NOT NULL,
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done')),
    completed_by text,
    completed_at timestamptz,
    reminded_at  timestamptz,
    reminders    int NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (incident_id, kind)
);
CREATE INDEX followups_open ON rollback_bot.followups (due_at) WHERE state = 'open';

-- The incident's follow-ups message in Slack (one per incident, updated in place).
CREATE TABLE rollback_bot.followup_boards (
    incident_id bigint PRIMARY KEY REFERENCES rollback_bot.incidents(id),
    channel     text,
    message_ts  text,
    claimed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- What people wrote into the report's Prevention section.
CREATE TABLE rollback_bot.prevention_measures (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES rollback_bot.incidents(id),
    text        text NOT NULL,
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX prevention_measures_incident ON rollback_bot.prevention_measures (incident_id, id);

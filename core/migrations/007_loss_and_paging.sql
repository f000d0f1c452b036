-- The estimated loss as a live number, and paging that wakes people (issue 14, items 4 and 5).

-- Every figure of an incident's estimated loss, oldest first: the requester's, updates from Slack and the CLI,
-- and the P&L query's. The incident's estimated_loss column holds the latest figure.
CREATE TABLE rollback_bot.loss_estimates (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES rollback_bot.incidents(id),
    amount      double precision NOT NULL CHECK (amount >= 0 AND amount < 'Infinity'::double precision),
    source      text NOT NULL CHECK (source IN ('request', 'slack', 'cli', 'pnl_query')),
    recorded_by text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX loss_estimates_incident ON rollback_bot.loss_estimates (incident_id, id);

-- An incident's page: primary contacts first; the emergency contacts at emergency_due_at unless somebody
-- acknowledged it by then. PagerDuty follows (pagerduty_sent: the last event it accepted for dedup_key).
CREATE TABLE rollback_bot.pages (
    incident_id        bigint PRIMARY KEY REFERENCES rollback_bot.incidents(id),
    dedup_key          text NOT NULL UNIQUE,
    reason             text NOT NULL,
    paged_at           timestamptz NOT NULL,
    emergency_due_at   timestamptz NOT NULL,
    emergency_paged_at timestamptz,
    acknowledged_at    timestamptz,
    acknowledged_by    text,
    closed_at          timestamptz,
    pagerduty_sent     text NOT NULL DEFAULT 'none'
                       CHECK (pagerduty_sent IN ('none', 'trigger', 'acknowledge', 'resolve')),
    pagerduty_error    text
);

-- Who was paged and how: each Slack DM and each PagerDuty event, delivered or not.
CREATE TABLE rollback_bot.page_log (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES rollback_bot.incidents(id),
    tier        text NOT NULL CHECK (tier IN ('primary', 'emergency')),
    channel     text NOT NULL CHECK (channel IN ('slack', 'pagerduty')),
    recipient   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok          boolean NOT NULL,
    error       text
);
CREATE INDEX page_log_incident ON rollback_bot.page_log (incident_id, id);

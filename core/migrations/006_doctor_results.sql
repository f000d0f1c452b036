-- `rollback-bot doctor` runs (CLI, `/rollback doctor`, and the one at `serve` start): `/rollback status` shows
-- the latest from any process. Only the newest few hundred are kept.
CREATE TABLE rollback_bot.doctor_results (
    id      bigserial PRIMARY KEY,
    run_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    source  text NOT NULL,
    ok      boolean NOT NULL,
    checks  jsonb NOT NULL DEFAULT '[]'::jsonb
);

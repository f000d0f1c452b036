-- Heavy commands (`/rollback diagnose`, `backups`, `status MODEL`) each person ran recently: the rate limit is
-- counted here, so two bot processes sharing the database limit a person as one.
CREATE TABLE rollback_bot.command_uses (
    id          bigserial PRIMARY KEY,
    user_id     text NOT NULL,
    command     text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX command_uses_user_at ON rollback_bot.command_uses (user_id, at);

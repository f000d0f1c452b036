-- Who looked at the App Home recently: their tab is re-published when an incident changes.
CREATE TABLE rollback_bot.home_viewers (
    user_id   text PRIMARY KEY,
    opened_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

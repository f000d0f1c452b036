-- Fencing tokens of rollback executors (core/fencing.py): each process that takes an incident's advisory lock
-- bumps the token; before every file operation the executor checks that it still holds the lock and that the
-- token is still its own, so a process that lost the lock never touches the model files.
CREATE TABLE rollback_bot.executor_fences (
    incident_id bigint PRIMARY KEY,
    token       bigint NOT NULL,
    owner       text NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

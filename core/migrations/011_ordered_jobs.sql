-- Jobs claimed in order per incident (the Slack updates, core/slack_outbox.py): a job is claimable only when its
-- incident has no earlier undone job of its kind. This index answers that question without scanning done jobs.
CREATE INDEX jobs_undone_by_incident ON rollback_bot.jobs (incident_id, kind, id) WHERE done_at IS NULL;

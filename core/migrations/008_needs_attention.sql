-- Issue 14: when the rollback does not fix it.
-- A rollback that monitoring found failing stays open as 'needs_attention'; a follow-up rollback of the same
-- model may then be requested, and its approval closes the old incident as 'superseded'. So the "one open
-- rollback per model" index no longer counts 'needs_attention' (nor the new closed state 'superseded'), and a
-- second index keeps at most one incident per model in 'needs_attention'.
DROP INDEX IF EXISTS rollback_bot.incidents_one_open_per_model;
CREATE UNIQUE INDEX incidents_one_open_per_model ON rollback_bot.incidents (model_name)
    WHERE kind = 'rollback' AND state NOT IN ('resolved', 'denied', 'failed', 'cancelled', 'superseded',
                                              'needs_attention');
CREATE UNIQUE INDEX incidents_one_needing_attention_per_model ON rollback_bot.incidents (model_name)
    WHERE kind = 'rollback' AND state = 'needs_attention';

-- Which version of each platform client_settings row a halt wrote (its xmin, as text): at resume, a row of
-- another version was changed by somebody during the halt, even to exactly the halted values, and is left as
-- that person set it (core/trading.py). NULL: not known (no right to read xmin, or a halt made before this).
ALTER TABLE rollback_bot.saved_client_settings ADD COLUMN halted_version text;

-- The retention rule (`[[retention.rules]]` name, or `default`) each removed root was
-- kept under. NULL on rows recorded before this migration.
ALTER TABLE {audit}.deletions ADD COLUMN rule text;

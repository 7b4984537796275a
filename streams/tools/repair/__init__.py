"""The repair commands: verify drift between a namespace's targets, backfill one from another, replay the log."""

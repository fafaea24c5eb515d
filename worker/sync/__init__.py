"""Sync: windows and checkpoints (engine), the schedule (scheduler), progress reporting (progress)."""

"""Run folders, checkpoints and atomic file writes."""

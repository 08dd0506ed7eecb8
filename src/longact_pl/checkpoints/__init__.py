"""Checkpoint files: atomic writes, and checks of a checkpoint before a run resumes from it."""

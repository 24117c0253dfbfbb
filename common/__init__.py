"""Helpers every app may use: database cursors, the scheduler wake-up, DRF parts."""

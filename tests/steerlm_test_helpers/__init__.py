"""Helpers shared by test tiers (scripts run in subprocesses, CLI wrappers)."""

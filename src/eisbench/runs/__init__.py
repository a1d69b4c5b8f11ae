"""Runs: the stage cache, stages, the run record, claims, presets and overrides."""

"""Executors: run tasks (specs, never live models) in local processes or on Ray."""

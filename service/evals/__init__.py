"""Evaluations: graders, eval runs and the worker that executes them (no web framework here)."""

"""Shared pytest setup: fast XLA compiles, deterministic CPU, warnings surfaced."""

import os

# Tiny models: compile time dominates, so trade runtime optimisation for fast compiles.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


def pytest_configure(config):
  """Always report the 25 slowest tests, so every CI log shows where the suite's time goes (the
  suite must stay under 15 minutes on 2 idle cores)."""
  if not config.option.durations:
    config.option.durations = 25

"""Shared pytest setup: fast XLA compiles, deterministic CPU, warnings surfaced."""

import os

# Tiny models: compile time dominates, so trade runtime optimisation for fast compiles.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

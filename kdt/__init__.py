"""kdt: lottery tickets, rewinding and knowledge-distillation tickets in JAX/Flax."""

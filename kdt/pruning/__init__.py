"""kdt.pruning."""

"""kdt.models."""

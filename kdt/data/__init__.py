"""kdt.data."""

"""kdt.train."""

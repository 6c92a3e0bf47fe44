"""kdt.analysis."""

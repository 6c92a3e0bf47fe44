"""kdt.tickets."""

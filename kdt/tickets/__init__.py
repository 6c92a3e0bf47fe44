"""kdt.tickets: the IMP driver and the re-training recipes."""

"""Feature store: feature tables, point-in-time training sets, the online store."""

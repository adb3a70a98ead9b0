"""kloop_registry."""

"""kloop_core."""

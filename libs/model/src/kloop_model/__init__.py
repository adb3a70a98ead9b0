"""kloop_model."""

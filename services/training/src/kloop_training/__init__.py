"""kloop_training."""

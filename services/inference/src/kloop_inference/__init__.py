"""kloop_inference."""

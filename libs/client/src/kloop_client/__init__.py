"""kloop_client."""

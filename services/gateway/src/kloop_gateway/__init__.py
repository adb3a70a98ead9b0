"""kloop gateway: the public front door for predictions and feedback."""

"""kloop vectorstore service."""

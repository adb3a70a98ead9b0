"""kloop rag service."""

"""Stand-ins for what the RAG service talks to, for tests, benchmarks and offline demos:
an in-memory vector store (gRPC kloop.vectorstore.v1) and a local server that speaks
Anthropic's Messages API (so the real anthropic SDK can be exercised without network).
Never used by the running service."""

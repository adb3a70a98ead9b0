"""The HTTP API (FastAPI): schemas, dependencies, routes."""

"""Shared service plumbing: settings, logging, errors, metrics, tracing, gRPC/HTTP bootstrap,
Redis and retries. See libs/core/README.md."""

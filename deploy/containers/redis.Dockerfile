# Redis for `make e2e-containers` only (the chart runs the official redis image): no
# registry can be pulled from here, so Debian's redis-server goes onto the same base.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim
FROM ${PYTHON_IMAGE}
# The base image's Debian suite decides the version (bookworm: 7.0; see .hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /tmp
USER 10001:10001
EXPOSE 6379
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["redis-cli", "-p", "6379", "ping"]
ENTRYPOINT ["redis-server"]
CMD ["--bind", "0.0.0.0", "--port", "6379", "--save", "", "--appendonly", "no"]

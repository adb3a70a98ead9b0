# MLflow tracking server for `make e2e-containers` (the chart runs the official
# ghcr.io/mlflow/mlflow image). Same version as uv.lock's mlflow; SQLite + local
# artifacts under /mlflow (mount a volume or a tmpfs there).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim
FROM ${PYTHON_IMAGE}
ARG MLFLOW_VERSION=3.17.2
RUN PIP_CERT=/etc/ssl/certs/ca-certificates.crt pip install --no-cache-dir \
      --disable-pip-version-check "mlflow==${MLFLOW_VERSION}" \
 && groupadd --gid 10001 mlflow \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mlflow \
 && install -d -o 10001 -g 10001 /mlflow
ENV MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /mlflow
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLFLOW_PORT', '5000') + '/health', timeout=2)"]
ENTRYPOINT ["mlflow"]
CMD ["server", "--backend-store-uri", "sqlite:////mlflow/mlflow.db", "--artifacts-destination", "/mlflow/artifacts", "--host", "0.0.0.0", "--port", "5000", "--workers", "1"]

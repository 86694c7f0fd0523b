# syntax=docker/dockerfile:1
# MLflow tracking server for the SmartMixed stack: PostgreSQL backend store, artifacts
# proxied by the server (--serve-artifacts) into the /mlartifacts volume.
#
# Build (compose does this): docker build -f docker/mlflow.Dockerfile -t smartmixed-mlflow:3.17.2 docker
#
# Configuration comes from the environment at run time, never from the image:
#   POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB  (docker/.env, passed by compose.yaml)
#   POSTGRES_HOST (default postgres), POSTGRES_PORT (default 5432)
#   MLFLOW_SERVER_ALLOWED_HOSTS  Host headers the server accepts (DNS-rebinding protection)
FROM python:3.11.14-slim-bookworm

# Keep the server on the MLflow version the project's clients are tested with.
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_SERVER_ALLOWED_HOSTS=mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
    && groupadd --gid 1000 mlflow \
    && useradd --uid 1000 --gid mlflow --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts

# uid 1000 = mlflow (numeric: resolvable on any host, hadolint DL3066)
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000

# /health is exempt from the Host-header check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

# The backend store URI is assembled here from the environment and passed to MLflow through
# MLFLOW_BACKEND_STORE_URI, so the password does not appear on the server's command line.
# The password must be URL-safe (it is part of the URI): see docker/.env.example.
CMD ["sh", "-c", "export MLFLOW_BACKEND_STORE_URI=\"postgresql+psycopg2://${POSTGRES_USER:?}:${POSTGRES_PASSWORD:?}@${POSTGRES_HOST:-postgres}:${POSTGRES_PORT:-5432}/${POSTGRES_DB:?}\" && exec mlflow server --host 0.0.0.0 --port 5000 --serve-artifacts --artifacts-destination /mlartifacts"]

# syntax=docker/dockerfile:1
# calendly-connect's image: the wheel with its tracing extra (OpenTelemetry, used only when
# OTEL_EXPORTER_OTLP_ENDPOINT is set), installed with the pinned dependencies of requirements.lock
# (constraints: the runtime's, not the dev extra's), as tests/packaging/test_wheel.py installs
# and runs it. No container engine runs where this project is developed: this file is checked by
# tests/unit/test_container_files.py, not built in CI.
#
#   docker build -t calendly-connect .
#   docker run --env-file .env -p 127.0.0.1:8000:8000 calendly-connect          # serve
#   docker run --env-file .env calendly-connect calendly-connect migrate        # or worker, doctor

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# The uv the Makefile installs (UV_VERSION).
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY . .
RUN uv build --out-dir /dist \
    && uv venv --python /usr/local/bin/python3.11 /opt/calendly-connect \
    && uv pip install --no-cache --python /opt/calendly-connect/bin/python \
        -c requirements.lock "$(ls /dist/calendly_connect-*.whl)[tracing]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/calendly-connect/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
RUN useradd --system --create-home --uid 10001 --shell /usr/sbin/nologin calendly
COPY --from=builder /opt/calendly-connect /opt/calendly-connect
USER calendly
WORKDIR /home/calendly
EXPOSE 8000
# Ready means the database answers with the schema this code expects; python, not curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health/ready', timeout=4)"]
CMD ["calendly-connect", "serve"]

# syntax=docker/dockerfile:1
#
# bridge container image.
#
# Two stages: the builder installs the package and its dependencies into a virtualenv;
# the final stage copies only that virtualenv onto python:3.11-slim, so no compiler,
# pip cache or source tree ships. The image runs as uid 10001 and writes nothing outside
# /data (SQLite store, a volume) and /tmp (an emptyDir in Kubernetes), so it runs with a
# read-only root filesystem.
#
#   docker build -t bridge:dev .
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/bridge:ro" bridge:dev

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
# Only what the wheel needs: the build does not see tests, docs or the chart (.dockerignore).
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# pip compiles .pyc files into the venv here, so the read-only runtime never needs to.
RUN /opt/venv/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}

# Re-declared so the OCI base-name label below can use it.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="bridge" \
      org.opencontainers.image.description="Keeps Rootly and incident.io in step: webhooks in, mapped actions out, exactly once." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes.
# WORKDIR / makes the default store URL sqlite:///data/bridge.db resolve to /data/bridge.db.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_CONFIG=/etc/bridge/bridge.yaml \
    BRIDGE_RULES_FILE=/app/config/rules.yaml

RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin bridge \
    && mkdir -p /data /etc/bridge /app \
    && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv
# The default rules (and sample config) live outside /etc/bridge, so that a ConfigMap
# mounted on /etc/bridge does not hide them; the Helm chart points at them by default.
COPY config/ /app/config/

WORKDIR /
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080

ENTRYPOINT ["bridge"]
CMD ["serve", "--config", "/etc/bridge/bridge.yaml"]

#
# bridge container image.
#
# Two stages: the builder installs the pinned dependencies and the package into a
# virtualenv; the final stage copies only that virtualenv onto the same base, so no
# compiler, pip cache or source tree ships. Every dependency comes from
# requirements/image.lock, checked against the hashes there (pip --require-hashes, wheels
# only), so a rebuild installs the same bytes. The image runs as uid 10001 and writes
# nothing outside /data (SQLite store, a volume) and /tmp (an emptyDir in Kubernetes), so
# it runs with a read-only root filesystem.
#
#   docker build -t bridge:0.1.0 .          # the Helm chart's default image
#   docker run --rm -p 8080:8080 -e BRIDGE_SERVER__HOST=0.0.0.0 bridge:0.1.0 \
#     serve --sandbox --config /app/config/bridge.yaml
#
# PYTHON_IMAGE: any Debian-based image with Python 3.11 and venv (python:3.11-slim, or a
# base of your own). pip trusts that image's CA bundle, so a base that carries a company CA
# builds behind a TLS-inspecting proxy; PIP_INDEX_URL names a PyPI mirror.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_INDEX_URL=${PIP_INDEX_URL} \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Dependencies first: this layer is rebuilt only when a lock file changes. /opt/build holds
# the build backend (hatchling), which never reaches the final stage.
COPY requirements/image.lock requirements/build.lock requirements/
RUN python3 -m venv /opt/venv \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
       -r requirements/build.lock \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
       -r requirements/image.lock
# Only what the wheel needs: the build does not see tests, docs or the chart (.dockerignore).
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# The package itself, built offline with the pinned backend. pip compiles .pyc files into
# the venv here, so the read-only runtime never needs to.
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --no-index \
       --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/bridge-*.whl

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

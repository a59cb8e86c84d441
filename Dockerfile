# syntax=docker/dockerfile:1
#
# One image, both entry points: `podcache-sidecar` (the default command) and
# `podcache-operator` (the Helm chart sets `command:` for the operator Deployment).
#
# The builder stage turns the project and every dependency into wheels; the final
# stage installs them from a read-only bind mount of those wheels, so it never holds
# a compiler, a build tool, a pip cache or the wheels themselves.
#
#   docker build -t ghcr.io/podcache/podcache:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (see .dockerignore): a test or chart edit does not
# invalidate this layer.
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
# Our wheel first, then the wheels of its runtime dependencies (binary wheels from
# PyPI; `--prefer-binary` keeps sdists out unless nothing else exists).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m pip wheel --prefer-binary --wheel-dir /wheels /wheels/podcache-*.whl

FROM ${PYTHON_IMAGE} AS final
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="podcache" \
      org.opencontainers.image.description="Cache sidecar and Kubernetes operator: TTL cache, distributed locks and leader election over a Unix socket" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/podcache/podcache" \
      org.opencontainers.image.url="https://github.com/podcache/podcache" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# No .pyc writes at run time (the root filesystem is read-only in the chart); the
# install below byte-compiles once. Unbuffered logs reach `kubectl logs` at once.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Installed offline from the builder's wheels, mounted only for this RUN; pip itself is
# removed afterwards so the image carries no installer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels podcache \
 && python -m pip uninstall --yes pip setuptools wheel \
 && podcache-sidecar --help >/dev/null \
 && podcache-operator --help >/dev/null
# 65532 is the conventional "nonroot" uid/gid (distroless); numeric so that
# `runAsNonRoot: true` can verify it without an /etc/passwd lookup.
USER 65532:65532
WORKDIR /tmp
# The default ports (documentation only; the chart and the operator name the real ones):
# 9090 the sidecar's /metrics; the operator's 9443 admission webhook (HTTPS), 8080 kopf's
# /healthz and 9091 its /metrics and /readyz.
EXPOSE 9090 9443 8080 9091
CMD ["podcache-sidecar"]

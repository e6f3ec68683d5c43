# syntax=docker/dockerfile:1
# The circuitgate operator's image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t circuitgate-operator:0.1.0 .
# Dependencies come from docker/operator.lock (exact versions and hashes, `python docker/lock.py`):
# the circuitgate-operator distribution alone (operator/), with no Celery in it.

# Pinned: Python and Debian patch versions. Pin the digest too where your registry policy asks:
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/circuitgate
COPY docker/operator.lock /tmp/operator.lock
RUN /opt/circuitgate/bin/pip install --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/operator.lock
# The operator distribution, built here with a pinned backend and installed without
# dependencies: the lock has them all, `pip check` proves it.
RUN pip install setuptools==80.9.0
WORKDIR /src
COPY operator ./operator
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels ./operator \
    && /opt/circuitgate/bin/pip install --no-deps /tmp/wheels/circuitgate_operator-*.whl \
    && /opt/circuitgate/bin/pip check

# The webhook's certificate comes from the cryptography library: no openssl binary needed.
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/circuitgate /opt/circuitgate
ENV PATH=/opt/circuitgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Not root; the chart runs it with this uid, a read-only root filesystem and /tmp as emptyDir.
USER 65532:65532
EXPOSE 8080 9090 9443
ENTRYPOINT ["circuitgate-operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]

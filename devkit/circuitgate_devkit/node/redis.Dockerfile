# syntax=docker/dockerfile:1
# A Redis image for the node's tests, from Debian's redis-server on the same base as the
# project's images (the node has no registry to pull redis from). Not for use elsewhere.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
USER 999:999
EXPOSE 6379
ENTRYPOINT ["redis-server", "--protected-mode", "no", "--bind", "0.0.0.0"]

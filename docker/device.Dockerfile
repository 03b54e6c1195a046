# syntax=docker/dockerfile:1
# semlink device: runs the model's head, picks tokens, sends them to the server (through a link),
# answers on its HTTP API (8080). Healthy = serving and the server answers; while the server is
# away the device answers locally, marked degraded, and reports unhealthy.
# Models: the default zoo is baked into /models; mount your own repository there instead.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a virtual environment with semlink and its serving dependencies --------------------
# (the same in every semlink image, so one build's layers serve the others from the cache)
FROM ${BASE_IMAGE} AS build
COPY docker/ca-certificates/ /tmp/extra-ca/
COPY docker/install-venv.sh pyproject.toml /src/
RUN sh /src/install-venv.sh deps
COPY semlink /src/semlink
COPY models /src/models
COPY device /src/device
COPY server /src/server
COPY protocol /src/protocol
COPY runtime /src/runtime
COPY link /src/link
COPY README.md /src/
RUN sh /src/install-venv.sh semlink

# ---- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/semlink \
        --shell /usr/sbin/nologin semlink \
    && install -d -o semlink -g semlink /certs
COPY --from=build /opt/semlink /opt/semlink
ENV PATH=/opt/semlink/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY zoo /models
ENV SEMLINK_DEVICE_HOST=0.0.0.0 SEMLINK_DEVICE_MODEL_REPOSITORY=/models
USER semlink
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "semlink.healthcheck", "http://127.0.0.1:8080/v2/health/ready", "server=reachable"]
ENTRYPOINT ["semlink", "device"]

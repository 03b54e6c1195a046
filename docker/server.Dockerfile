# syntax=docker/dockerfile:1
# semlink edge server: Open Inference Protocol over gRPC (8001) and HTTP (8000) on ONNX Runtime.
# Models: the default zoo is baked into /models; mount your own repository there instead.
# TLS material and API keys come from mounts or the environment at run time, never the image.
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
ENV SEMLINK_SERVER_HOST=0.0.0.0 SEMLINK_SERVER_MODEL_REPOSITORY=/models
USER semlink
EXPOSE 8000 8001
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "semlink.healthcheck", "http://127.0.0.1:8000/v2/health/ready"]
ENTRYPOINT ["semlink", "server"]

# syntax=docker/dockerfile:1
# semlink link emulator: a TCP proxy (9001) that shapes bytes to a Mahimahi trace, with its
# state and metrics on HTTP (9002). Example traces are generated into /traces at build time;
# mount your own folder there and point SEMLINK_LINK_UPLINK / _DOWNLINK at its files.
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
RUN install -d /traces \
    && semlink trace random-walk --low 1mbit --high 20mbit --duration 300 --seed 1 --out /traces/walk-1-20mbit.trace \
    && semlink trace gilbert-elliott --low 0.2mbit --high 10mbit --duration 300 --seed 2 --out /traces/ge-0.2-10mbit.trace \
    && semlink trace step --low 0.5mbit --high 5mbit --duration 300 --seed 3 --out /traces/step-0.5-5mbit.trace \
    && semlink trace constant --low 10mbit --high 10mbit --duration 60 --out /traces/constant-10mbit.trace
ENV SEMLINK_LINK_LISTEN=0.0.0.0:9001
USER semlink
EXPOSE 9001 9002
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-m", "semlink.healthcheck", "http://127.0.0.1:9002/health"]
ENTRYPOINT ["semlink", "link"]

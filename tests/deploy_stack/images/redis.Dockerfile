# Redis from Debian's packages (docker/compose.local-images.yml): `redis-server ARGS` as in the
# official image, data in /data, protected mode off (the official image's entrypoint does the same).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/bin/redis-server", "--bind", "0.0.0.0", "::", "--protected-mode", "no", "--dir", "/data"]
CMD []

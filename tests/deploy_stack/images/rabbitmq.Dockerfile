# RabbitMQ with the management plugin from Debian's packages (docker/compose.local-images.yml):
# RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS as in the official image, data in /var/lib/rabbitmq.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && rabbitmq-plugins enable --offline rabbitmq_management >/dev/null \
    && mkdir -p /etc/rabbitmq/conf.d && chown -R rabbitmq:rabbitmq /etc/rabbitmq /var/lib/rabbitmq
COPY --chmod=0755 rabbitmq-entrypoint.sh /usr/local/bin/rabbitmq-entrypoint.sh
ENV RABBITMQ_LOGS=-
USER rabbitmq
EXPOSE 5672 15672
ENTRYPOINT ["/usr/local/bin/rabbitmq-entrypoint.sh"]

# ticketbot image: the bot on PostgreSQL. Build: docker build -t ticketbot .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core core
COPY storage storage
COPY intake intake
COPY bot bot
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 ticketbot
COPY --from=build /install /usr/local
WORKDIR /app
COPY config.yaml /app/config.yaml
RUN mkdir -p /app/var && chown ticketbot:ticketbot /app/var
USER ticketbot
ENV TICKETBOT_CONFIG=/app/config.yaml \
    TICKETBOT_DATA_DIR=/app/var \
    TICKETBOT_EMAIL__SMTP_INTAKE__HOST=0.0.0.0 \
    TICKETBOT_HTTP__HOST=0.0.0.0
EXPOSE 2525 8080
# `run` applies migrations before it starts the channels.
CMD ["ticketbot", "run"]

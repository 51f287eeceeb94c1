# ticketbot image: `ticketbot run` on PostgreSQL (docs/deploy.md). Build: docker build -t ticketbot .
# Nothing secret is baked in: tokens, keys and passwords come from the environment at run time (.env.example).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install ticketbot and its dependencies into a virtualenv (wheels only; no compiler needed) ---------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/ticketbot
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not re-download them.
COPY pyproject.toml README.md ./
RUN mkdir core storage intake bot \
 && /opt/ticketbot/bin/pip install --upgrade pip setuptools wheel \
 && /opt/ticketbot/bin/pip install .
COPY core core
COPY storage storage
COPY intake intake
COPY bot bot
RUN /opt/ticketbot/bin/pip install --no-deps --force-reinstall . \
 && /opt/ticketbot/bin/python -m compileall -q /opt/ticketbot/lib

# --- runtime: the virtualenv, the default config and an unprivileged user -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 ticketbot \
 && useradd --system --uid 10001 --gid ticketbot --home-dir /var/lib/ticketbot --shell /usr/sbin/nologin ticketbot \
 && mkdir -p /var/lib/ticketbot \
 && chown ticketbot:ticketbot /var/lib/ticketbot
COPY --from=build /opt/ticketbot /opt/ticketbot
COPY config.yaml /etc/ticketbot/config.yaml
COPY --chmod=0755 scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# Listen on every interface inside the container; what is published, and where, is compose's decision.
ENV PATH=/opt/ticketbot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TICKETBOT_CONFIG=/etc/ticketbot/config.yaml \
    TICKETBOT_DATA_DIR=/var/lib/ticketbot \
    TICKETBOT_EMAIL__SMTP_INTAKE__HOST=0.0.0.0 \
    TICKETBOT_HTTP__HOST=0.0.0.0
WORKDIR /var/lib/ticketbot
VOLUME ["/var/lib/ticketbot"]
# A numeric user, so orchestrators that check runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 2525: SMTP intake (email.smtp_intake.port); 8080: HTTP (Slack HTTP mode, /healthz, /readyz, /metrics).
EXPOSE 2525 8080
# Ready means the database answers and every enabled channel works (a 503 from /readyz fails the check).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TICKETBOT_HTTP__PORT', '8080'), timeout=4)"]
# The entrypoint applies migrations (`ticketbot db upgrade`) and then execs `ticketbot run` as PID 1.
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["run"]

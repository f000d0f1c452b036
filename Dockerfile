# rollback-bot: the Slack app. `rollback-bot serve` answers Slack and starts (and restarts) its own work
# process, so one container runs both; tini, as PID 1, forwards SIGTERM to it and reaps orphans.
#
#   docker build -t rollback-bot .
#   docker run --env-file .env -p 3000:3000 -v /srv/models:/data/models rollback-bot
#
# Settings come from the environment or from files in /run/secrets (see .env.example); none is baked in.
# The runtime set is requirements.lock alone, every file checked against its hash; no test dependency.

FROM python:3.11-slim-bookworm AS build
COPY pyproject.toml README.md /src/
COPY bot /src/bot
COPY core /src/core
COPY handlers /src/handlers
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/rollback-bot/bin:$PATH \
    MODELS_DIR=/data/models \
    INCIDENTS_DIR=/data/incidents \
    PORT=3000

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rollback-bot \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin rollback-bot \
 && mkdir -p /data/models /data/incidents \
 && chown -R 10001:10001 /data

COPY requirements.lock /tmp/requirements.lock
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/rollback-bot \
 && pip install --require-hashes -r /tmp/requirements.lock \
 && pip install --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/requirements.lock /tmp/wheels

USER 10001:10001
WORKDIR /data
EXPOSE 3000
# HTTP mode (the default without SLACK_APP_TOKEN): /healthz is 200 while PostgreSQL answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "rollback-bot"]
CMD ["serve"]

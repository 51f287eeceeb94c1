#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use (TICKETBOT_TEST_POSTGRES_URL, default 127.0.0.1:5432) is up.
# Starts an installed-but-stopped local cluster; says how to get one otherwise. Never installs a server.
set -u
url="${TICKETBOT_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$url"; then
    exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ "$(id -u)" = 0 ]; then
    for version in $(ls /etc/postgresql); do
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    done
    for _ in $(seq 1 20); do
        pg_isready -q -d "$url" && exit 0
        sleep 0.5
    done
fi
echo "ensure-postgres: PostgreSQL is not reachable at $url; the PostgreSQL tests will skip" \
     "(or fail with TICKETBOT_REQUIRE_POSTGRES=1). Start one or set TICKETBOT_TEST_POSTGRES_URL." >&2
exit 0

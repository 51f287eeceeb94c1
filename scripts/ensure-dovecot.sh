#!/bin/sh
# Test setup for the IMAP intake tests: make sure Debian's dovecot-imapd is installed (the tests run their own
# private instance; this script never starts or enables the system service).
# Idempotent and silent when /usr/sbin/dovecot already exists; exits non-zero when it cannot install.
set -eu

DOVECOT=/usr/sbin/dovecot
PACKAGE=dovecot-imapd

if [ -x "$DOVECOT" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-dovecot: $DOVECOT is missing and this is not root; install it with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y $PACKAGE" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-dovecot: $DOVECOT is missing and apt-get is not available; install Dovecot 2.3 ($PACKAGE)" >&2
    exit 1
fi

echo "ensure-dovecot: installing $PACKAGE" >&2
export DEBIAN_FRONTEND=noninteractive
# Quiet unless it fails: keep apt's output and show it only then.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update && apt-get install -y "$PACKAGE"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-dovecot: installing $PACKAGE failed" >&2
    exit 1
fi

if [ ! -x "$DOVECOT" ]; then
    echo "ensure-dovecot: $PACKAGE installed but $DOVECOT is still missing" >&2
    exit 1
fi

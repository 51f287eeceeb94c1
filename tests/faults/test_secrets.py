"""Fault: secrets in logs. Every replica of the suite runs with distinctive secrets (Slack token and signing secret,
Anthropic key, IMAP and SMTP passwords, the database password inside its URL). This test makes each of them take
part in a failure, at DEBUG, and then greps every log the suite produced and every stored error message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import anthropic_api as fake_claude
from tests.fakes.dovecot import Dovecot
from tests.fakes.slack_api import signed_headers
from tests.fakes.smtp import LoopbackController, PasswordCheck, RecordingRelay
from tests.faults.conftest import MakeCluster
from tests.faults.harness import (
    ALL_SECRETS,
    DB_PASSWORD,
    ROOT,
    SECRETS,
    AuthSlackAPI,
    PrivatePostgres,
    SlackSender,
    SmtpSender,
    free_port,
    grep_secrets,
    imap_account,
    request_mail,
    wait_until,
)

# The test relays ask for AUTH without TLS (loopback only), which aiosmtpd warns about on every connection.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture
def wrong_password_relay() -> Iterator[int]:
    """A relay that refuses the suite's SMTP password (535), so the sender reports an authentication failure."""
    controller = LoopbackController(
        RecordingRelay(),
        auth_required=True,
        auth_require_tls=False,
        authenticator=PasswordCheck("ticketbot", "another-password"),
    )
    controller.start()
    try:
        yield int(controller.port)
    finally:
        controller.stop()


def test_no_secret_in_any_log_or_error(
    dovecot: Dovecot,
    make_cluster: MakeCluster,
    pg: PrivatePostgres,
    slack_api: AuthSlackAPI,
    wrong_password_relay: int,
    faults_root: Path,
) -> None:
    # IMAP: a mailbox whose real password is not the one in FAULTS_IMAP_PASSWORD: every login fails.
    _user, _drop, imap = imap_account(dovecot)
    wrong = dovecot.add_user()  # pool account: password "secret"
    imap = {**imap, "username": wrong.username}
    with fake_claude.FakeAnthropicAPI(default=fake_claude.server_error()) as claude:
        claude.script(fake_claude._error(401, "authentication_error", "invalid x-api-key"))
        cluster = make_cluster(
            1,
            imap=imap,
            slack_api=slack_api,
            relay={
                "host": "127.0.0.1",
                "port": wrong_password_relay,
                "security": "none",
                "username": "ticketbot",
                "password_env": "FAULTS_SMTP_PASSWORD",
                "timeout_seconds": 5,
            },
            classifier={"mode": "claude", "deadline_seconds": 5, "claude": {"timeout_seconds": 2, "max_retries": 0}},
            extra_env={"ANTHROPIC_BASE_URL": claude.url, "TICKETBOT_LOG_LEVEL": "DEBUG"},
        )
        cluster.start()
        slack_api.outage(5, status=500)
        SmtpSender(cluster).send("sec-1", request_mail("sec-1", 1))
        SlackSender(cluster, slack_api).send("sec-trig-1", "my password expired")
        # A forged Slack request: the signature check fails (401) and is logged.
        body = SlackSender(cluster, slack_api).body("forged", "x", "U1")
        forged = urllib.request.Request(
            f"http://127.0.0.1:{cluster.replicas[0].http_port}/slack/events",
            data=body.encode(),
            headers=signed_headers(body, secret="not-the-signing-secret"),
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 401
        wait_until(lambda: cluster.scalar("SELECT count(*) FROM tickets") == 2, 60, "both tickets")
        wait_until(
            lambda: cluster.scalar("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL"), 60, "a delivery error"
        )
        time.sleep(3)  # a few IMAP login failures and outbox retries more
        stored_errors = "\n".join(
            str(v)
            for row in cluster.query(
                "SELECT last_error FROM inbound_messages UNION ALL SELECT last_error FROM outbox "
                "UNION ALL SELECT last_error FROM mailbox_state"
            )
            for v in row
            if v
        )
        cluster.stop()

    # A database that cannot be reached at start: the error names it, without the password.
    env = {
        **cluster.env(),
        "TICKETBOT_DATABASE__URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{free_port()}/ticketbot",
    }
    failed = subprocess.run(
        [sys.executable, "-c", "from bot.cli import main; main()", "run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    (cluster.root / "unreachable-db.log").write_text(failed.stdout + failed.stderr)
    assert failed.returncode != 0

    problems = [s for s in ALL_SECRETS if s in stored_errors]
    problems += grep_secrets([faults_root, dovecot.log, pg.log])
    logs = list(faults_root.rglob("*.log"))
    size = sum(p.stat().st_size for p in logs) // 1024
    print(f"\nsecrets: grepped {len(logs)} logs ({size} KiB) and the stored errors for {len(ALL_SECRETS)} secrets")
    # Sanity: the failures did happen and were logged (so the grep looked at real error paths).
    text = "\n".join(p.read_text(errors="replace") for p in cluster.logs())
    assert " DEBUG " in text, "the replica logged at DEBUG"
    assert "login" in text.lower() and "imap" in text.lower()
    assert "535" in text or "auth" in text.lower()
    assert "Connection refused" in text or "connection" in text.lower()
    assert not problems, f"secrets leaked: {problems}"
    # The config file on disk holds no secret either: they come by environment only.
    assert not grep_secrets([cluster.config_file], (*SECRETS.values(), DB_PASSWORD))
    assert os.environ.get("SLACK_BOT_TOKEN") != SECRETS["SLACK_BOT_TOKEN"]

"""Faults in what the bot depends on: Dovecot restarted with a new UIDVALIDITY, the Slack API answering 500s and
429s, Claude down, the SMTP relay refusing mail. Each for a while, then healthy again: every one recovers without a
person, and afterwards every request has exactly one ticket and one acknowledgement.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.fakes import anthropic_api as fake_claude
from tests.fakes.dovecot import running_dovecot
from tests.fakes.smtp import LoopbackController, PasswordCheck, RecordingRelay
from tests.faults.conftest import MakeCluster
from tests.faults.harness import (
    FULL,
    SECRETS,
    AuthSlackAPI,
    SlackSender,
    SmtpSender,
    check_invariants,
    dump,
    imap_account,
    request_mail,
    slack_cards,
    wait_until,
)

# The issue asks for a minute of each outage; make test uses a few seconds (FAULTS_FULL=1: the minute).
OUTAGE_S = 60.0 if FULL else 6.0
COUNT = 100 if FULL else 20
# The test relays ask for AUTH without TLS (loopback only), which aiosmtpd warns about on every connection.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def test_dovecot_restart_and_uidvalidity_change(make_cluster: MakeCluster) -> None:
    """Mail stays in INBOX (flag mode), so the rescan after the UIDVALIDITY change re-reads every message."""
    with running_dovecot() as server:
        user, drop, imap = imap_account(server)
        cluster = make_cluster(2, imap={**imap, "after_fetch": "flag"})
        cluster.start()
        first = [f"dc-first-{i}" for i in range(COUNT)]
        for i, key in enumerate(first):
            drop.deliver(request_mail(key, i))
        cluster.wait_drained(COUNT, 120)
        old = server.uidvalidity(user)

        server.stop()
        second = [f"dc-second-{i}" for i in range(COUNT)]
        for i, key in enumerate(second):  # arrives while the server is down
            drop.deliver(request_mail(key, 1000 + i))
        time.sleep(OUTAGE_S)
        server.start()
        new = server.change_uidvalidity(user)
        third = [f"dc-third-{i}" for i in range(COUNT)]
        for i, key in enumerate(third):
            drop.deliver(request_mail(key, 2000 + i))
        cluster.wait_drained(3 * COUNT, 180)
        # The rescan re-fetched every message of INBOX: each must have been recognised as already stored.
        rescanned = cluster.scalar("SELECT count(*) FROM inbound_messages WHERE uidvalidity = :v", v=new)
        report = check_invariants(cluster, email_keys=[*first, *second, *third])
        logs = "".join(p.read_text(errors="replace") for p in cluster.logs())
        cluster.stop()
    print(f"\nDovecot restart, UIDVALIDITY {old} -> {new}: {dump(report)}; rows under the new one: {rescanned}")
    assert "UIDVALIDITY of INBOX changed" in logs
    assert not report.violations, report.fail_message()


def test_slack_api_500s_then_429s(make_cluster: MakeCluster, slack_api: AuthSlackAPI) -> None:
    cluster = make_cluster(2, slack_api=slack_api)
    cluster.start()
    slack = SlackSender(cluster, slack_api)
    smtp = SmtpSender(cluster)
    slack_api.outage(OUTAGE_S, status=500)
    triggers = [f"sl-{i}" for i in range(COUNT)]
    keys = [f"sl-mail-{i}" for i in range(COUNT)]

    def traffic() -> None:
        for n, trigger in enumerate(triggers):
            slack.send(trigger, f"VPN is down for me ({trigger})", user=f"U{n:05d}")
            smtp.send(keys[n], request_mail(keys[n], n))
            time.sleep(2 * OUTAGE_S / COUNT)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    time.sleep(OUTAGE_S)
    slack_api.outage(OUTAGE_S, status=429)  # then rate limited for as long again
    sender.join(300)
    cluster.wait_drained(2 * COUNT, 240)
    report = check_invariants(cluster, email_keys=keys, slack_triggers=triggers)
    cluster.stop()
    responds = Counter(c.params["_path"] for c in slack_api.calls("respond"))
    print(f"\nSlack 500s then 429s: {slack_api.outage_answers} failed calls; {dump(report)}")
    assert not report.violations, report.fail_message()
    assert slack_cards(slack_api) == report.tickets, "one department card per ticket"
    assert sorted(responds.values()) == [1] * COUNT, "one answer per /ticket"


@pytest.fixture
def claude() -> Iterator[fake_claude.FakeAnthropicAPI]:
    with fake_claude.FakeAnthropicAPI(default=fake_claude.tool_call("Finance")) as api:
        yield api


def test_claude_down_for_a_while(make_cluster: MakeCluster, claude: fake_claude.FakeAnthropicAPI) -> None:
    cluster = make_cluster(
        2,
        classifier={
            "mode": "claude",
            "deadline_seconds": 5,
            "claude": {"timeout_seconds": 2, "max_retries": 0, "circuit_failures": 3, "circuit_reset_seconds": 2},
        },
        extra_env={"ANTHROPIC_BASE_URL": claude.url},
    )
    cluster.start()
    smtp = SmtpSender(cluster)
    claude.default = fake_claude.server_error()
    down = [f"cl-down-{i}" for i in range(COUNT)]
    smtp.send_all([(k, request_mail(k, i)) for i, k in enumerate(down)], rate=COUNT / OUTAGE_S)
    cluster.wait_drained(COUNT, 120)
    claude.default = fake_claude.tool_call("Finance")
    time.sleep(3)  # past circuit_reset_seconds: the breaker lets a probe through
    up = [f"cl-up-{i}" for i in range(COUNT)]
    smtp.send_all([(k, request_mail(k, 100 + i)) for i, k in enumerate(up)], rate=COUNT / OUTAGE_S)
    cluster.wait_drained(2 * COUNT, 120)
    report = check_invariants(cluster, email_keys=[*down, *up])
    by = dict(
        cluster.query(
            "SELECT CASE WHEN m.message_id LIKE '<cl-down-%' THEN 'down' ELSE 'up' END || ':' || t.classifier, "
            "count(*) FROM tickets t JOIN inbound_messages m ON m.id = t.inbound_id GROUP BY 1"
        )
    )
    cluster.stop()
    print(f"\nClaude down then up: tickets by phase:classifier {by}; {dump(report)}")
    assert not report.violations, report.fail_message()
    assert by.get("down:offline", 0) + by.get("down:claude", 0) == COUNT
    assert by.get("down:claude", 0) == 0, "no ticket can have been classified by Claude while it was down"
    # Back up: once the breaker's probe succeeds Claude decides again (the first few may still fall back).
    assert by.get("up:claude", 0) >= COUNT // 2


@pytest.fixture
def relay() -> Iterator[tuple[RecordingRelay, int]]:
    handler = RecordingRelay()
    controller = LoopbackController(
        handler,
        auth_required=True,
        auth_require_tls=False,  # loopback only; the password is what the secrets test looks for
        authenticator=PasswordCheck("ticketbot", SECRETS["FAULTS_SMTP_PASSWORD"]),
    )
    controller.start()
    try:
        yield handler, int(controller.port)
    finally:
        controller.stop()


def test_smtp_relay_refusing_for_a_while(make_cluster: MakeCluster, relay: tuple[RecordingRelay, int]) -> None:
    handler, port = relay
    cluster = make_cluster(
        2,
        relay={
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "username": "ticketbot",
            "password_env": "FAULTS_SMTP_PASSWORD",
            "timeout_seconds": 5,
        },
    )
    cluster.start()
    handler.refuse("451 4.3.0 Relay busy, try again later", stage="DATA", times=None)
    keys = [f"rl-{i}" for i in range(COUNT)]
    SmtpSender(cluster).send_all([(k, request_mail(k, i)) for i, k in enumerate(keys)])
    wait_until(lambda: cluster.scalar("SELECT count(*) FROM tickets") == COUNT, 60, "the tickets")
    time.sleep(OUTAGE_S)
    refused = handler.attempts
    handler.heal()
    cluster.wait_drained(COUNT, 120)
    report = check_invariants(cluster, email_keys=keys, outbox_files=False)
    cluster.stop()
    delivered = Counter(d.rcpt_tos for d in handler.deliveries)
    print(
        f"\nrelay refusing {OUTAGE_S:.0f}s: {refused} refused attempts, {len(handler.deliveries)} delivered; "
        f"{dump(report)}"
    )
    assert refused >= COUNT
    assert not report.violations, report.fail_message()
    assert len(delivered) == COUNT and set(delivered.values()) == {1}, "one reply per requester"

"""Fault: `kill -9` of replicas at random points while mail drains from Dovecot and arrives over SMTP and Slack.

Three replicas share one PostgreSQL database, one IMAP mailbox and one data dir. Each round delivers a slice of the
IMAP backlog, waits a random moment and kills a replica with SIGKILL (the first round kills the IMAP lease holder, to
measure the takeover), then starts it again. SMTP senders and Slack retry on any failure, as real ones do.
Afterwards: exactly one ticket per request, one acknowledgement per ticket, nothing parked, nothing left over, and
Dovecot never saw two pollers of the mailbox at once.
"""

from __future__ import annotations

import random
import threading
import time

from tests.fakes.dovecot import Dovecot
from tests.faults.conftest import MakeCluster
from tests.faults.harness import (
    FULL,
    AuthSlackAPI,
    SessionSampler,
    SlackSender,
    SmtpSender,
    check_invariants,
    dump,
    holder_pid,
    imap_account,
    request_mail,
    wait_until,
)

# The counts with FAULTS_FULL=1 (make soak); a smaller run in make test.
IMAP_MAILS, SMTP_MAILS, SLACK_REQUESTS, ROUNDS = (5000, 2000, 300, 10) if FULL else (300, 150, 30, 3)
LEASE_TTL = 60.0  # intake.imap.LEASE_TTL: a dead holder's lease runs out after at most this long


def test_kill9_replicas_while_mail_drains(dovecot: Dovecot, make_cluster: MakeCluster, slack_api: AuthSlackAPI) -> None:
    rng = random.Random(8)
    user, drop, imap = imap_account(dovecot)
    cluster = make_cluster(3, imap=imap, slack_api=slack_api)
    cluster.start()  # all three at once on an empty database: their migrations race, as under an orchestrator

    imap_keys = [f"kill-imap-{i}" for i in range(IMAP_MAILS)]
    smtp_keys = [f"kill-smtp-{i}" for i in range(SMTP_MAILS)]
    triggers = [f"kill-trig-{i}" for i in range(SLACK_REQUESTS)]
    smtp = SmtpSender(cluster)
    slack = SlackSender(cluster, slack_api)

    def send_slack(pause: float) -> None:
        for n, trigger in enumerate(triggers):
            slack.send(trigger, f"The printer on floor {n % 9 + 1} is jammed ({trigger})", user=f"U{n:05d}")
            time.sleep(pause)

    # Paced so that the SMTP and Slack traffic spans every round: kills land mid-transaction.
    span = ROUNDS * 8.0
    senders = [
        threading.Thread(
            target=smtp.send_all,
            args=([(key, request_mail(key, 100_000 + i)) for i, key in enumerate(smtp_keys)],),
            kwargs={"rate": SMTP_MAILS / span},
            daemon=True,
        ),
        threading.Thread(target=send_slack, args=(span / SLACK_REQUESTS,), daemon=True),
    ]
    holder_killed: tuple[float, int] | None = None
    slice_size = -(-IMAP_MAILS // ROUNDS)
    with SessionSampler(dovecot, user.username, cluster) as sampler:
        for thread in senders:
            thread.start()
        for round_no in range(ROUNDS):
            for i in range(round_no * slice_size, min(IMAP_MAILS, (round_no + 1) * slice_size)):
                drop.deliver(request_mail(imap_keys[i], i))
            time.sleep(rng.uniform(0.5, 3.0))
            if round_no == 0:
                # Kill the IMAP poller itself; the sampler sees when another replica takes the mailbox over.
                pid = wait_until(lambda: holder_pid(sampler.owner()), 60, "an IMAP lease holder")
                victim = next(r for r in cluster.replicas if r.alive and r.pid == pid)
            else:
                victim = rng.choice(cluster.running())
            victim.kill9()
            if round_no == 0:
                holder_killed = (time.time(), pid)
            victim.start()
            victim.wait_ready()
        for thread in senders:
            thread.join(600)
        # Every message must get out of INBOX: the pollers are still running here, restarts included.
        wait_until(lambda: drop.inbox_count() == 0, 300, "the IMAP INBOX to drain", 0.5)
        # The new holder may have drained INBOX between two samples: keep sampling until it shows up.
        wait_until(
            lambda: holder_pid(sampler.owner()) not in (None, pid), LEASE_TTL + 60, "the new IMAP lease holder", 0.5
        )
        time.sleep(2 * sampler.interval)
    assert holder_killed is not None
    takeovers = [
        at - holder_killed[0]
        for at, _, owner in sampler.samples
        if at > holder_killed[0] and holder_pid(owner) not in (None, holder_killed[1])
    ]
    takeover_s = takeovers[0] if takeovers else None

    # Rows a killed replica had claimed stay locked for the claim lease (5 minutes); instead of waiting, stop
    # everything, let the leases "expire", and have one replica finish the work, as a restart would.
    cluster.stop()
    released = cluster.expire_claims()
    survivor = cluster.replicas[0]
    cluster.start([survivor])
    cluster.wait_drained(IMAP_MAILS + SMTP_MAILS, timeout=600 if FULL else 120)
    cluster.stop()

    assert all(r.final == 250 for r in smtp.results.values()), "an SMTP sender gave up or got a permanent refusal"
    assert all(r.final == 200 for r in slack.results.values()), "a Slack request was never acknowledged"
    # A slash command is committed before it is acknowledged (bot/slack.py): no acknowledged request may be missing.
    stored = {row.dedupe_key for row in cluster.query("SELECT dedupe_key FROM inbound_messages WHERE channel='slack'")}
    lost = [t for t in triggers if f"slack:trigger:{t}" not in stored]
    assert not lost, f"acknowledged Slack requests that were never stored: {lost}"
    report = check_invariants(cluster, email_keys=imap_keys + smtp_keys, slack_triggers=triggers)
    retries = sum(len(r.codes) - 1 for r in smtp.results.values())
    print(
        f"\nkill -9: {ROUNDS} rounds, {IMAP_MAILS} IMAP + {SMTP_MAILS} SMTP + {SLACK_REQUESTS} Slack; "
        f"{retries} SMTP retries; claims released after the kills (inbound, outbox) = {released}; "
        f"IMAP takeover after killing the holder {takeover_s or -1:.1f}s; "
        f"max IMAP sessions seen {sampler.max_sessions}; "
        f"acknowledged Slack requests lost {len(lost)}; {dump(report)}"
    )
    assert not report.violations, report.fail_message()
    assert sampler.max_sessions <= 1, "two pollers had the mailbox open at once"
    around = [(round(at - holder_killed[0], 1), n, owner) for at, n, owner in sampler.samples][-10:]
    assert takeover_s is not None and takeover_s < LEASE_TTL + 60, f"killed pid {holder_killed[1]}; {around}"

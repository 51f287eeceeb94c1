"""Fault: PostgreSQL stopped mid-run and started again (a private cluster this test owns, never the shared one).

While the database is down: SMTP answers 451 and the senders retry, IMAP leaves the mail in the mailbox, the
replicas stay up. Queued outbox items (Slack posts held back by a Slack outage just before) wait. Once the database
is back everything resumes by itself: nothing lost, nothing twice.
"""

from __future__ import annotations

import threading
import time

from tests.fakes.dovecot import Dovecot
from tests.faults.conftest import MakeCluster
from tests.faults.harness import (
    FULL,
    AuthSlackAPI,
    PrivatePostgres,
    SmtpSender,
    check_invariants,
    dump,
    imap_account,
    request_mail,
    slack_cards,
    wait_until,
)

OUTAGE_S = 20.0 if FULL else 8.0
BEFORE, DURING_IMAP, DURING_SMTP = (200, 200, 100) if FULL else (30, 30, 20)


def test_postgres_down_and_back(
    dovecot: Dovecot, make_cluster: MakeCluster, own_pg: PrivatePostgres, slack_api: AuthSlackAPI
) -> None:
    _user, drop, imap = imap_account(dovecot)
    cluster = make_cluster(2, imap=imap, slack_api=slack_api, db=own_pg)
    cluster.start()
    smtp = SmtpSender(cluster, retry_delay=0.5)

    # Before: requests processed while Slack refuses, so their department posts sit in the outbox.
    slack_api.outage(3600, status=500)
    before = [f"pg-before-{i}" for i in range(BEFORE)]
    for i, key in enumerate(before):
        drop.deliver(request_mail(key, i))
    smtp.send_all([(f"{key}-smtp", request_mail(f"{key}-smtp", 10_000 + i)) for i, key in enumerate(before)])
    wait_until(lambda: cluster.scalar("SELECT count(*) FROM tickets") == 2 * BEFORE, 120, "the first tickets")
    pending_posts = cluster.scalar("SELECT count(*) FROM outbox WHERE status = 'pending' AND kind = 'slack_post'")
    assert pending_posts, "the Slack outage should have left posts waiting"
    cluster.stop_engine()

    own_pg.stop()
    down_at = time.monotonic()
    slack_api.outage(0)  # Slack is back, but the outbox cannot know until the database is
    during = [f"pg-during-{i}" for i in range(DURING_IMAP)]
    for i, key in enumerate(during):
        drop.deliver(request_mail(key, 1000 + i))
    smtp_during = [f"pg-during-smtp-{i}" for i in range(DURING_SMTP)]
    sender = threading.Thread(
        target=smtp.send_all,
        args=([(key, request_mail(key, 20_000 + i)) for i, key in enumerate(smtp_during)],),
        kwargs={"threads": 4},
        daemon=True,
    )
    sender.start()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    left_in_inbox = drop.inbox_count()
    alive = [r.name for r in cluster.replicas if r.alive]
    own_pg.start()
    sender.join(300)

    cluster.wait_drained(2 * BEFORE + DURING_IMAP + DURING_SMTP, timeout=300)
    report = check_invariants(
        cluster, email_keys=[*before, *(f"{k}-smtp" for k in before), *during, *smtp_during], outbox_files=True
    )
    refusals = sum(code == 451 for r in smtp.results.values() for code in r.codes)
    cluster.stop()
    print(
        f"\nPostgreSQL down {OUTAGE_S:.0f}s: {refusals} SMTP 451 answers, {left_in_inbox}/{DURING_IMAP} IMAP mails "
        f"left in INBOX meanwhile, {pending_posts} Slack posts queued before; {dump(report)}"
    )
    assert alive == [r.name for r in cluster.replicas], "a replica died while the database was down"
    assert left_in_inbox == DURING_IMAP, "IMAP must leave mail in place while nothing can be stored"
    assert refusals > 0, "SMTP should have answered 451 while the database was down"
    assert all(r.final == 250 for r in smtp.results.values())
    assert not report.violations, report.fail_message()
    # Every department card went out once the database was back, and none twice.
    assert slack_cards(slack_api) == report.tickets

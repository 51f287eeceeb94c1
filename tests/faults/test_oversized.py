"""Fault: hostile sizes. A 50 MB mail (over SMTP and in the IMAP mailbox), a mail with 1,000 attachments and a
1 MB subject line: each gets a clear answer (552, a parked row naming the size, or a ticket), and the replica's
memory stays bounded (its peak RSS, VmHWM, is measured around the whole run).
"""

from __future__ import annotations

from email.message import EmailMessage

from tests.fakes.dovecot import Dovecot
from tests.faults.conftest import MakeCluster
from tests.faults.harness import SmtpSender, check_invariants, dump, imap_account, request_mail, wait_until

MB = 1024 * 1024
# Peak RSS may grow by at most this much over the idle replica's: a few copies of the 25 MB limit, not the 50 MB
# mail many times over.
RSS_HEADROOM_KIB = 400 * 1024


def big_mail(key: str, index: int, size: int) -> bytes:
    """A request with a ``size``-byte attachment (base64 makes the mail a third bigger)."""
    msg = EmailMessage()
    msg["From"] = f"employee{index}@example.com"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Screen recording of the crash ({key})"
    msg["Message-ID"] = f"<{key}@faults.example.com>"
    msg["Date"] = "Mon, 02 Nov 2026 09:30:00 +0000"
    msg.set_content("The recording of the crash is attached.\n")
    msg.add_attachment(b"\x00\x17" * (size // 2), maintype="video", subtype="mp4", filename="crash.mp4")
    return msg.as_bytes()


def many_attachments(key: str, index: int, count: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"employee{index}@example.com"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"Scanned receipts for my expense claim ({key})"
    msg["Message-ID"] = f"<{key}@faults.example.com>"
    msg["Date"] = "Mon, 02 Nov 2026 09:31:00 +0000"
    msg.set_content("Please find my receipts attached for reimbursement.\n")
    for n in range(count):
        msg.add_attachment(bytes([n % 256]) * 2048, maintype="image", subtype="png", filename=f"receipt-{n}.png")
    return msg.as_bytes()


def test_oversized_input_gets_clear_answers_in_bounded_memory(dovecot: Dovecot, make_cluster: MakeCluster) -> None:
    _user, drop, imap = imap_account(dovecot)
    cluster = make_cluster(1, imap=imap)
    cluster.start()
    [replica] = cluster.replicas
    smtp = SmtpSender(cluster, give_up_after=60)
    # Warm up (first ticket loads the classifier) before taking the baseline.
    smtp.send("big-warmup", request_mail("big-warmup", 0))
    cluster.wait_drained(1, 60)
    idle_rss, _ = replica.rss()

    smtp.send("big-smtp", big_mail("big-smtp", 1, 50 * MB))
    drop.deliver(big_mail("big-imap", 2, 50 * MB))
    smtp.send("big-attachments", many_attachments("big-attachments", 3, 1000))
    smtp.send("big-subject", request_mail("big-subject", 4, subject="Printer broken " + "x" * MB))
    wait_until(lambda: drop.inbox_count() == 0, 120, "the 50 MB IMAP mail to leave INBOX")
    cluster.wait_drained(4, 120)
    rss, peak = replica.rss()

    rows = {
        r.message_id: r
        for r in cluster.query("SELECT message_id, status, size, last_error, ticket_id FROM inbound_messages")
    }
    tickets = {r.id: r for r in cluster.query("SELECT id, subject, length(subject) AS subject_len, body FROM tickets")}
    report = check_invariants(
        cluster, email_keys=["big-warmup", "big-imap", "big-attachments", "big-subject"], expect_parked=["big-imap"]
    )
    failed_folder = (drop.maildir / ".Ticketbot.Failed").exists() or any(drop.maildir.glob(".Ticketbot*Failed*"))
    cluster.stop()
    imap_row = rows["<big-imap@faults.example.com>"]
    attachments_ticket = tickets[rows["<big-attachments@faults.example.com>"].ticket_id]
    subject_ticket = tickets[rows["<big-subject@faults.example.com>"].ticket_id]
    print(
        f"\noversized: SMTP 50 MB answered {smtp.results['big-smtp'].final}; IMAP 50 MB {imap_row.status} "
        f"({imap_row.size} bytes stored: {imap_row.last_error}); 1,000 attachments -> ticket #{attachments_ticket.id} "
        f"(body {len(attachments_ticket.body)} chars); 1 MB subject -> ticket subject {subject_ticket.subject_len} "
        f"chars; RSS idle {idle_rss // 1024} MiB, now {rss // 1024} MiB, peak {peak // 1024} MiB; {dump(report)}"
    )
    assert smtp.results["big-smtp"].final == 552
    assert "over the" in (imap_row.last_error or "") and imap_row.size < MB, "parked with its header only"
    assert failed_folder, "the oversized IMAP mail is moved to the failed folder"
    assert subject_ticket.subject_len <= 2000
    assert not report.violations, report.fail_message()
    assert peak - idle_rss < RSS_HEADROOM_KIB, f"peak RSS {peak // 1024} MiB from {idle_rss // 1024} MiB idle"

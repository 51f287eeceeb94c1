"""Bench: throughput of 1, 2 and 3 `ticketbot run` replicas on one PostgreSQL (how it scales across processes).

For each replica count: a fresh database, the replicas started, then N requests at once (half delivered into the
shared IMAP mailbox, half sent over SMTP to the replicas in turn) and the time until every one has a ticket and its
acknowledgement is sent. Prints requests/s in total and per replica. Private PostgreSQL, private Dovecot and the
offline classifier, as in the fault suite (tests/faults/harness.py).

    .venv/bin/python bench/replicas.py [--n 1000] [--replicas 1 2 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.dovecot import running_dovecot  # noqa: E402 - after the path set-up
from tests.faults.harness import (  # noqa: E402
    Cluster,
    PrivatePostgres,
    SmtpSender,
    check_invariants,
    imap_account,
    latencies,
    percentile,
    replica_config,
    request_mail,
)


def measure(pg: PrivatePostgres, dovecot: object, count: int, replicas: int, root: Path) -> dict[str, float]:
    _user, drop, imap = imap_account(dovecot, poll_seconds=1)
    cluster = Cluster(
        root=root / f"r{replicas}",
        db_url=pg.create_database("bench"),
        config=replica_config(imap=imap, slack_api_url=None),
        drop_env=("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"),
    )
    cluster.add(replicas)
    cluster.start()
    try:
        half = count // 2
        imap_keys = [f"bench{replicas}-imap-{i}" for i in range(half)]
        smtp_keys = [f"bench{replicas}-smtp-{i}" for i in range(count - half)]
        mails = [(k, request_mail(k, 10_000 + i)) for i, k in enumerate(smtp_keys)]
        started = time.monotonic()
        for i, key in enumerate(imap_keys):
            drop.deliver(request_mail(key, i))
        sender = threading.Thread(target=SmtpSender(cluster).send_all, args=(mails,), kwargs={"threads": 8})
        sender.start()
        sender.join()
        cluster.wait_drained(count, 900)
        elapsed = time.monotonic() - started
        report = check_invariants(cluster, email_keys=imap_keys + smtp_keys)
        lat = latencies(cluster)
        peak = max(r.rss()[1] for r in cluster.replicas)
    finally:
        cluster.stop()
    if report.violations:
        print(report.fail_message())
    return {
        "replicas": replicas,
        "requests": count,
        "seconds": elapsed,
        "per_s": count / elapsed,
        "per_replica": count / elapsed / replicas,
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "peak_mib": peak / 1024,
        "violations": len(report.violations),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="requests per run (half IMAP, half SMTP)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    pg = PrivatePostgres()
    pg.start()
    root = Path(tempfile.mkdtemp(prefix="ticketbot-bench-replicas-"))
    rows = []
    try:
        with running_dovecot() as dovecot:
            for replicas in args.replicas:
                rows.append(measure(pg, dovecot, args.n, replicas, root))
    finally:
        pg.remove()
        if os.environ.get("FAULTS_KEEP") != "1":  # FAULTS_KEEP=1 keeps configs and replica logs
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'replicas':>8} {'requests':>8} {'wall s':>7} {'req/s':>7} {'per replica':>11} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS':>9} {'violations':>10}")  # fmt: skip
    base = rows[0]["per_s"] if rows else 1.0
    for r in rows:
        print(
            f"{r['replicas']:>8.0f} {r['requests']:>8.0f} {r['seconds']:>7.1f} {r['per_s']:>7.1f} "
            f"{r['per_replica']:>11.1f} {r['p50'] * 1000:>7.0f} {r['p99'] * 1000:>7.0f} {r['peak_mib']:>5.0f} MiB "
            f"{r['violations']:>10.0f}   (x{r['per_s'] / base:.2f})"
        )
    return 1 if any(r["violations"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

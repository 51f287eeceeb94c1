"""Soak: 3 `ticketbot run` replicas for SOAK_SECONDS at a steady request rate mixed across SMTP, IMAP and Slack.

Prints throughput, latency from receipt to acknowledgement (p50/p99), memory per replica at start and end, and the
invariant check (one ticket per request, one acknowledgement per ticket, nothing parked or left over); exits 1 on a
violation. Everything runs on this machine: a private PostgreSQL cluster, a private Dovecot, the fake Slack API; the
harness is tests/faults/harness.py, the one the fault suite uses.

    .venv/bin/python scripts/soak.py [--seconds 1800] [--rate 20] [--replicas 3]     (make soak)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.dovecot import running_dovecot  # noqa: E402 - after the path set-up
from tests.faults.harness import (  # noqa: E402
    AuthSlackAPI,
    Cluster,
    MaildirDrop,
    PrivatePostgres,
    SlackSender,
    SmtpSender,
    check_invariants,
    imap_account,
    latencies,
    percentile,
    replica_config,
    request_mail,
)

MIX = (("smtp", 0.4), ("imap", 0.3), ("slack", 0.3))


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 1800)))
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second, all channels together")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--report-every", type=float, default=60.0)
    args = parser.parse_args()

    rng = random.Random(20)
    pg = PrivatePostgres()
    pg.start()
    root = Path(tempfile.mkdtemp(prefix="ticketbot-soak-"))
    try:
        with running_dovecot() as dovecot, AuthSlackAPI() as slack_api:
            _user, drop, imap = imap_account(dovecot)
            cluster = Cluster(
                root=root,
                db_url=pg.create_database("soak"),
                config=replica_config(imap=imap, slack_api_url=slack_api.api_url),
            )
            cluster.add(args.replicas)
            cluster.start()
            try:
                return run(cluster, drop, slack_api, args, rng)
            finally:
                cluster.stop()
    finally:
        pg.remove()
        if os.environ.get("FAULTS_KEEP") != "1":  # FAULTS_KEEP=1 keeps configs and replica logs
            shutil.rmtree(root, ignore_errors=True)


def run(
    cluster: Cluster, drop: MaildirDrop, slack_api: AuthSlackAPI, args: argparse.Namespace, rng: random.Random
) -> int:
    smtp, slack = SmtpSender(cluster), SlackSender(cluster, slack_api)
    keys: dict[str, list[str]] = {"smtp": [], "imap": [], "slack": []}
    # Warm up every replica (the first ticket loads the classifier), then take the starting memory.
    for n in range(len(cluster.replicas)):
        smtp.send(f"soak-warmup-{n}", request_mail(f"soak-warmup-{n}", 900_000 + n))
        keys["smtp"].append(f"soak-warmup-{n}")
    cluster.wait_drained(len(cluster.replicas), 120)
    start_rss = {r.name: r.rss()[0] for r in cluster.replicas}
    print(
        f"soak: {args.replicas} replicas, {args.rate:g} requests/s for {args.seconds:.0f}s "
        f"({', '.join(f'{c} {w:.0%}' for c, w in MIX)}); memory at start: "
        + ", ".join(f"{name} {mib(v)}" for name, v in start_rss.items()),
        flush=True,
    )
    pool = ThreadPoolExecutor(max_workers=32)
    started = time.monotonic()
    next_report = started + args.report_every
    n = 0
    lock = threading.Lock()
    while (now := time.monotonic()) - started < args.seconds:
        due = started + n / args.rate
        if due > now:
            time.sleep(due - now)
        channel = rng.choices([c for c, _ in MIX], [w for _, w in MIX])[0]
        key = f"soak-{channel}-{n}"
        with lock:
            keys[channel].append(key)
        if channel == "imap":
            drop.deliver(request_mail(key, n))
        elif channel == "smtp":
            pool.submit(smtp.send, key, request_mail(key, n))
        else:
            pool.submit(slack.send, key, f"My monitor flickers since the update ({key})", f"U{n % 5000:05d}")
        n += 1
        if time.monotonic() >= next_report:
            next_report += args.report_every
            tickets = cluster.scalar("SELECT count(*) FROM tickets")
            print(
                f"  t={time.monotonic() - started:5.0f}s sent {n} tickets {tickets} backlog {cluster.backlog()} rss "
                + ", ".join(f"{r.name} {mib(r.rss()[0])}" for r in cluster.replicas),
                flush=True,
            )
    sent_for = time.monotonic() - started
    pool.shutdown(wait=True)
    total = sum(len(v) for v in keys.values())
    cluster.wait_drained(total, 300)
    drained_after = time.monotonic() - started
    end_rss = {r.name: r.rss() for r in cluster.replicas}
    lat = latencies(cluster)
    report = check_invariants(
        cluster, email_keys=keys["smtp"] + keys["imap"], slack_triggers=keys["slack"], outbox_files=True
    )
    print(f"sent {n} requests in {sent_for:.0f}s ({n / sent_for:.1f}/s offered); all done after {drained_after:.0f}s")
    print(f"throughput: {report.tickets} tickets, {report.tickets / drained_after:.1f} tickets/s sustained")
    print(
        f"receipt -> acknowledgement sent: p50 {percentile(lat, 50) * 1000:.0f} ms, "
        f"p99 {percentile(lat, 99) * 1000:.0f} ms, max {max(lat, default=0) * 1000:.0f} ms ({len(lat)} tickets)"
    )
    for replica in cluster.replicas:
        rss, peak = end_rss[replica.name]
        print(
            f"memory {replica.name}: start {mib(start_rss[replica.name])}, end {mib(rss)} "
            f"({(rss - start_rss[replica.name]) / 1024:+.0f} MiB), peak {mib(peak)}"
        )
    print(
        f"invariants: {report.requests} requests, {report.tickets} tickets, "
        f"{len(report.violations)} violations {report.figures}"
    )
    for line in report.violations[:20]:
        print(f"  VIOLATION {line}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the email intake: IMAP drain to tickets and SMTP acceptance, against a minimal reference loop.

For each N (default 1,000 and 10,000) the same realistic corpus (plain, HTML, attachments, non-ASCII, replies;
tests/fakes/mail.py) is APPENDed into two fresh mailboxes of a private Dovecot (tests/fakes/dovecot.py). Then, each
in a process of its own so its peak RSS is its own:

* reference: imapclient ``BODY.PEEK[]`` in batches of 200, stdlib ``email.message_from_bytes(policy=default)``,
  one SQLite insert transaction per batch, then ``\\Seen``; no classification;
* imap: the real ``ImapPoller`` (as ``ImapPollerComponent``), the real inbound workers (``Loop`` x
  ``worker.threads``) and ``Pipeline`` with the real offline classifier, on SQLite in a temp dir; timed from
  start until every message is a ticket, a follow-up, or a parked/ignored inbound row;
* smtp: the real SMTP intake (``SmtpIntakeComponent``) receiving N other messages from this process over 8
  concurrent smtplib connections; accepted messages/s as the clients see them. Run twice: the intake alone,
  and with the inbound workers processing what arrives (as ``ticketbot run`` does).

Targets (issue 3): IMAP drain >= 50% of the reference in the same run; SMTP >= 200 messages/s; memory flat with N.

    python bench/email_intake.py                 # N = 1,000 and 10,000
    python bench/email_intake.py --n 2000        # other sizes
    python bench/email_intake.py --quick         # N = 300, a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import smtplib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/email_intake.py` puts bench/, not the repo, on the path

from imapclient import SEEN, IMAPClient  # noqa: E402

from tests.fakes.dovecot import Dovecot, MailUser  # noqa: E402
from tests.fakes.mail import SUPPORT, corpus  # noqa: E402

PASSWORD_ENV = "BENCH_IMAP_PASSWORD"
SMTP_CONNECTIONS = 8
REFERENCE_BATCH = 200
APPEND_CHUNK = 250
TIMEOUT_SECONDS = 1800.0


# -- helpers ----------------------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident set size (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's current resident set size."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def emit(result: dict[str, Any]) -> None:
    """A child's answer to the parent: one JSON line on stdout."""
    print("RESULT " + json.dumps(result), flush=True)


def bench_config(data_dir: Path, *, threads: int | None = None, **email: Any) -> Any:
    """The shipped config.yaml (departments, keywords), pointed at ``data_dir``, offline classifier, no Slack.

    ``threads`` overrides ``worker.threads`` (the shipped default is 4).
    """
    from core.config import load_config

    section: dict[str, Any] = {
        "support_addresses": [SUPPORT],
        "allowed_sender_domains": ["example.com"],
        "smtp_intake": {"enabled": False},
    }
    section.update(email)
    overrides: dict[str, Any] = {"data_dir": str(data_dir), "email": section, "classifier": {"mode": "offline"}}
    if threads is not None:
        overrides["worker"] = {"threads": threads}
    return load_config(ROOT / "config.yaml", **overrides)


def real_classifier(config: Any) -> Any:
    """The runtime's classifier for ``classifier.mode: offline``: the real offline model."""
    from bot.runtime import build_classifier
    from core.config import Secrets

    try:
        classifier = build_classifier(config, Secrets(anthropic_api_key=None))
    except ImportError as exc:
        if os.environ.get("BENCH_ALLOW_FAKE_CLASSIFIER") != "1":
            raise SystemExit(f"the real offline classifier cannot be imported: {exc}") from exc
        from tests.fakes.classifier import ScriptedClassifier

        print(f"WARNING: {exc}; using ScriptedClassifier, NOT the real offline model", file=sys.stderr)
        classifier = ScriptedClassifier(name="scripted-STANDIN")
    classifier.classify("warm-up", "The printer on floor 2 is jammed")  # load lazily built parts before timing
    return classifier


def counts(db: Path) -> dict[str, int]:
    """Inbound rows per status, read on a connection of our own (a plain read: it never blocks the writers)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM inbound_messages GROUP BY status").fetchall())


def wait_until_done(db: Path, n: int, started: float) -> dict[str, int]:
    """Poll until ``n`` inbound rows exist and none is still ``received``."""
    while True:
        if db.exists():
            try:
                now = counts(db)
            except sqlite3.OperationalError:  # the schema is being created
                now = {}
            if sum(now.values()) >= n and not now.get("received"):
                return now
        if time.perf_counter() - started > TIMEOUT_SECONDS:
            raise SystemExit(f"not drained after {TIMEOUT_SECONDS:.0f} s: {counts(db)}")
        time.sleep(0.05)


# -- children -------------------------------------------------------------------------------------------------------


def run_reference(host: str, port: int, user: str, password: str, n: int) -> None:
    """The minimal loop: fetch 200 at a time, parse with the stdlib, one SQLite transaction per batch, \\Seen."""
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as tmp:
        db = sqlite3.connect(Path(tmp) / "reference.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE message (uid INTEGER PRIMARY KEY, message_id TEXT UNIQUE, sender TEXT, subject TEXT, "
            "raw BLOB)"
        )
        started = time.perf_counter()
        imap = IMAPClient(host, port, ssl=False, timeout=60)
        imap.login(user, password)
        imap.select_folder("INBOX")
        uids = imap.search(["UNSEEN"])
        stored = 0
        for batch in chunks(uids, REFERENCE_BATCH):
            fetched = imap.fetch(batch, ["BODY.PEEK[]"])
            rows = []
            for uid, item in fetched.items():
                raw = item[b"BODY[]"]
                msg = message_from_bytes(raw, policy=policy.default)
                rows.append((uid, str(msg["Message-ID"]), str(msg["From"]), str(msg["Subject"]), raw))
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO message VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
            imap.add_flags(batch, [SEEN], silent=True)
            stored += len(rows)
        elapsed = time.perf_counter() - started
        imap.logout()
        db.close()
    emit({"role": "reference", "n": n, "stored": stored, "seconds": elapsed, "peak_rss_mib": peak_rss_mib()})


def processing(config: Any, store: Any, classifier: Any) -> tuple[Any, list[Any]]:
    """The inbound processing as Runtime.build assembles it: the worker process (started and warm, as it is long
    before mail arrives under `ticketbot run`, or None) and the worker threads' loops (not started)."""
    from bot.runtime import Loop, build_pipeline, email_decoders, inbound_preparer, inbound_worker, worker_threads
    from core.outbox import OutboxKind

    pipeline = build_pipeline(config, store, classifier, decoders=email_decoders(config), enabled={OutboxKind.EMAIL})
    preparer = inbound_preparer(config, classifier)
    worker = inbound_worker(config, store, pipeline, classifier, preparer)
    loops = [
        Loop(f"inbound-worker-{k}", worker.run_once, config.worker.poll_seconds)
        for k in range(1, worker_threads(config, classifier) + 1)
    ]
    if preparer is not None:
        preparer.start()
        preparer.wait_ready()
    return preparer, loops


def run_imap(host: str, port: int, user: str, password: str, n: int, threads: int | None) -> None:
    """Our IMAP path, assembled as Runtime.build assembles it, minus the outbox dispatcher and the scheduler."""
    from bot.runtime import ImapPollerComponent, open_store, worker_threads
    from core.config import ImapMailboxConfig

    os.environ[PASSWORD_ENV] = password
    with tempfile.TemporaryDirectory(prefix="bench-imap-") as tmp:
        mailbox = ImapMailboxConfig(
            name="bench",
            host=host,
            port=port,
            security="none",
            username=user,
            password_env=PASSWORD_ENV,
            import_backlog=True,
        )
        config = bench_config(Path(tmp), imap=[mailbox.model_dump()], threads=threads)
        store = open_store(config)
        classifier = real_classifier(config)
        preparer, loops = processing(config, store, classifier)
        poller = ImapPollerComponent(config.email.imap[0], store, owner="bench")

        def wake() -> None:
            for loop in loops:
                loop.wake()

        poller.set_wake(wake)
        baseline = rss_mib()
        started = time.perf_counter()
        for loop in loops:
            loop.start()
        poller.start()
        done = wait_until_done(config.data_dir / "ticketbot.db", n, started)
        elapsed = time.perf_counter() - started
        poller.stop()
        for loop in loops:
            loop.stop()
        if preparer is not None:
            preparer.stop()
        tickets = store.classifier_stats()
        outbox = store.outbox_counts()
        store.engine.dispose()
    emit(
        {
            "role": "imap",
            "n": n,
            "seconds": elapsed,
            "inbound": done,
            "classifier": classifier.name,
            "tickets": sum(t["tickets"] for t in tickets),
            "acks_queued": sum(outbox.values()),
            "baseline_rss_mib": baseline,
            "peak_rss_mib": peak_rss_mib(),
            "threads": worker_threads(config, classifier),
            "processes": preparer.processes if preparer is not None else 0,
            "batch_size": config.email.imap[0].batch_size,
        }
    )


def run_smtp_server(n: int, with_workers: bool, threads: int | None) -> None:
    """The real SMTP intake on a free port (and optionally the workers); the parent is the sending MTA."""
    from bot.prepare import ProcessPreparer
    from bot.runtime import Loop, SmtpIntakeComponent, open_store

    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        config = bench_config(Path(tmp), smtp_intake={"enabled": True, "host": "127.0.0.1", "port": 0}, threads=threads)
        store = open_store(config)
        loops: list[Loop] = []
        classifier_name = None
        preparer: ProcessPreparer | None = None
        if with_workers:
            classifier = real_classifier(config)
            classifier_name = classifier.name
            preparer, loops = processing(config, store, classifier)
        intake = SmtpIntakeComponent(config, store)

        def wake() -> None:
            for loop in loops:
                loop.wake()

        intake.set_wake(wake)
        baseline = rss_mib()
        for loop in loops:
            loop.start()
        intake.start()
        print(f"READY {intake.server.port}", flush=True)
        sys.stdin.readline()  # the parent has sent everything
        received = counts(config.data_dir / "ticketbot.db")
        drain_seconds = None
        if with_workers:
            started = time.perf_counter()
            received = wait_until_done(config.data_dir / "ticketbot.db", n, started)
            drain_seconds = time.perf_counter() - started
        intake.stop()
        for loop in loops:
            loop.stop()
        if preparer is not None:
            preparer.stop()
        store.engine.dispose()
    emit(
        {
            "role": "smtp",
            "n": n,
            "stored": sum(received.values()),
            "inbound": received,
            "classifier": classifier_name,
            "drain_after_send_seconds": drain_seconds,
            "baseline_rss_mib": baseline,
            "peak_rss_mib": peak_rss_mib(),
        }
    )


# -- the parent -----------------------------------------------------------------------------------------------------


def child(args: list[str], *, stdin: int | None = None, password: str = "") -> subprocess.Popen[str]:
    """This script in another process (its own peak RSS); the IMAP password goes by environment, not argv."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, PASSWORD_ENV: password},
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            proc.wait(timeout=60)
            data: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return data
    proc.wait(timeout=60)
    raise SystemExit(f"child {proc.args!r} exited with {proc.returncode} and no result")


def load_mailboxes(server: Dovecot, users: Sequence[MailUser], n: int) -> float:
    """APPEND the same N-message corpus into each user's INBOX (MULTIAPPEND, a chunk at a time); returns seconds."""
    started = time.perf_counter()
    clients = []
    for user in users:
        imap = IMAPClient(server.host, server.port, ssl=False, timeout=60)
        imap.login(user.username, user.password)
        clients.append(imap)
    pending: list[bytes] = []

    def flush() -> None:
        for imap in clients:
            imap.multiappend("INBOX", pending)
        pending.clear()

    for raw in corpus(n, seed=n, tag=f"imap{n}"):
        pending.append(raw)
        if len(pending) >= APPEND_CHUNK:
            flush()
    if pending:
        flush()
    for imap in clients:
        imap.logout()
    return time.perf_counter() - started


def send_smtp(port: int, messages: list[bytes]) -> tuple[float, int]:
    """Send ``messages`` over SMTP_CONNECTIONS concurrent connections; returns (seconds, messages answered 250)."""
    shares = [messages[k::SMTP_CONNECTIONS] for k in range(SMTP_CONNECTIONS)]
    barrier = threading.Barrier(SMTP_CONNECTIONS + 1)

    def sender(share: list[bytes]) -> int:
        accepted = 0
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.ehlo()
            barrier.wait()
            for raw in share:
                refused = client.sendmail("employee@example.com", [SUPPORT], raw)
                accepted += not refused
        return accepted

    with ThreadPoolExecutor(SMTP_CONNECTIONS) as pool:
        futures = [pool.submit(sender, share) for share in shares]
        barrier.wait()
        started = time.perf_counter()
        accepted = sum(f.result() for f in futures)
        elapsed = time.perf_counter() - started
    return elapsed, accepted


def smtp_round(n: int, messages: list[bytes], *, with_workers: bool, tuning: list[str]) -> dict[str, Any]:
    proc = child(
        ["--role", "smtp-server", "--n", str(n), *tuning, *(["--with-workers"] if with_workers else [])],
        stdin=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = proc.stdout.readline()
    if not ready.startswith("READY "):
        proc.kill()
        raise SystemExit(f"the SMTP intake did not start: {ready!r}")
    seconds, accepted = send_smtp(int(ready.split()[1]), messages)
    proc.stdin.write("done\n")
    proc.stdin.flush()
    result = result_of(proc)
    result.update(seconds=seconds, accepted=accepted, with_workers=with_workers)
    return result


def bench(sizes: Sequence[int], threads: int | None) -> int:
    tuning = ["--worker-threads", str(threads)] if threads else []
    server = Dovecot()
    server.start()
    results: list[dict[str, Any]] = []
    try:
        for n in sizes:
            ours_user, reference_user = server.add_user(), server.add_user()
            load = load_mailboxes(server, [ours_user, reference_user], n)
            print(f"N={n}: appended {n} messages into two mailboxes in {load:.1f} s", file=sys.stderr, flush=True)
            where = ["--host", server.host, "--port", str(server.port), "--n", str(n)]
            reference = result_of(
                child(
                    ["--role", "reference", *where, "--user", reference_user.username], password=reference_user.password
                )
            )
            ours = result_of(
                child(["--role", "imap", *where, *tuning, "--user", ours_user.username], password=ours_user.password)
            )
            messages = list(corpus(n, seed=n + 1, tag=f"smtp{n}"))
            alone = smtp_round(n, messages, with_workers=False, tuning=tuning)
            busy = smtp_round(n, list(corpus(n, seed=n + 2, tag=f"smtpw{n}")), with_workers=True, tuning=tuning)
            del messages
            results.append({"n": n, "reference": reference, "imap": ours, "smtp": alone, "smtp_busy": busy})
            report(results[-1])
    finally:
        server.remove()
    return summary(results)


def report(r: dict[str, Any]) -> None:
    n, ref, ours, smtp, busy = r["n"], r["reference"], r["imap"], r["smtp"], r["smtp_busy"]
    ref_rate, our_rate = n / ref["seconds"], n / ours["seconds"]
    print(f"\n== N = {n:,} ==")
    print(
        f"IMAP reference loop   {ref['stored']:>6} msgs {ref['seconds']:7.2f} s {ref_rate:8.1f} msg/s   "
        f"peak RSS {ref['peak_rss_mib']:6.1f} MiB"
    )
    print(
        f"IMAP ticketbot drain  {ours['tickets']:>6} tkts {ours['seconds']:7.2f} s {our_rate:8.1f} msg/s   "
        f"peak RSS {ours['peak_rss_mib']:6.1f} MiB (before start {ours['baseline_rss_mib']:.1f})"
    )
    print(
        f"  inbound {ours['inbound']}, acks queued {ours['acks_queued']}, classifier {ours['classifier']}, "
        f"{ours['threads']} workers, IMAP batch {ours['batch_size']}"
    )
    print(f"  ratio ticketbot / reference: {our_rate / ref_rate:.0%} (target >= 50%)")
    for label, s in (("SMTP intake alone", smtp), ("SMTP with workers", busy)):
        drained = (
            f", all processed {s['drain_after_send_seconds']:.1f} s after the last 250"
            if s["drain_after_send_seconds"] is not None
            else ""
        )
        print(
            f"{label:<21} {s['accepted']:>6} msgs {s['seconds']:7.2f} s {s['accepted'] / s['seconds']:8.1f} msg/s   "
            f"peak RSS {s['peak_rss_mib']:6.1f} MiB (before start {s['baseline_rss_mib']:.1f}){drained}"
        )


def summary(results: list[dict[str, Any]]) -> int:
    print("\n== summary ==")
    ok = True
    for r in results:
        n = r["n"]
        ratio = (n / r["imap"]["seconds"]) / (n / r["reference"]["seconds"])
        smtp_rate = r["smtp"]["accepted"] / r["smtp"]["seconds"]
        busy_rate = r["smtp_busy"]["accepted"] / r["smtp_busy"]["seconds"]
        ok &= ratio >= 0.5 and smtp_rate >= 200
        print(
            f"N={n:>6,}: IMAP {ratio:5.0%} of reference {'OK' if ratio >= 0.5 else 'MISSED'}; "
            f"SMTP {smtp_rate:.0f} msg/s alone, {busy_rate:.0f} with workers "
            f"{'OK' if smtp_rate >= 200 else 'MISSED'}"
        )
    if len(results) > 1:
        first, last = results[0], results[-1]
        for role in ("imap", "smtp", "smtp_busy"):
            growth = last[role]["peak_rss_mib"] - first[role]["peak_rss_mib"]
            print(
                f"peak RSS {role:<9} N={first['n']:,}: {first[role]['peak_rss_mib']:.1f} MiB, "
                f"N={last['n']:,}: {last[role]['peak_rss_mib']:.1f} MiB ({growth:+.1f} MiB)"
            )
    load1, _, _ = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load1:.2f} at the end")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="mailbox sizes (default 1000 10000)")
    parser.add_argument("--quick", action="store_true", help="one small run (N = 300)")
    parser.add_argument("--worker-threads", type=int, help="worker.threads for our side (default: config.yaml's)")
    parser.add_argument("--role", choices=["reference", "imap", "smtp-server"], help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--with-workers", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        # Children log warnings and errors (a parked message, a failed round) to stderr, as `ticketbot run` would.
        logging.basicConfig(level=logging.WARNING, format=f"[{args.role}] %(levelname)s %(name)s: %(message)s")
    if args.role == "reference":
        run_reference(args.host, args.port, args.user, os.environ[PASSWORD_ENV], args.n[0])
        return 0
    if args.role == "imap":
        run_imap(args.host, args.port, args.user, os.environ[PASSWORD_ENV], args.n[0], args.worker_threads)
        return 0
    if args.role == "smtp-server":
        run_smtp_server(args.n[0], args.with_workers, args.worker_threads)
        return 0
    return bench([300] if args.quick else args.n, args.worker_threads)


if __name__ == "__main__":
    sys.exit(main())

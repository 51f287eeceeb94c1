"""Benchmark: the REST API over 1,000,000 tickets on SQLite and PostgreSQL, and POST /tickets throughput.

For each engine, a database of ``--tickets`` synthetic tickets (a year of traffic over five departments, 5,000
requesters, realistic subjects and bodies, 4% rerouted) is bulk-loaded once and reused by later runs (SQLite:
``--sqlite-path``; PostgreSQL: the database ``ticketbot_bench_api``, created with ``createdb`` when missing).
The bot's real HTTP server (uvicorn) serves ``/api/v1`` from this process; the load generator runs in a separate
process (multiprocessing, spawn) and measures from the client side, over keep-alive HTTP connections (httpx for
the reads; the standard library's http.client for the creates, the lighter client where throughput is counted):

- ``GET /tickets`` with each filter below, one request at a time: p50/p95/p99 (target p99 < 50 ms);
- ``GET /stats`` for the default 30 days and for the whole year (target < 500 ms);
- ``POST /tickets`` at concurrency 16 with the offline classifier, after 200 uncounted creates warm the server:
  tickets/s (target >= 300/s on PostgreSQL).

Run from the repository root:  python -m bench.api [--tickets 1000000] [--engines sqlite postgresql]
                                   [--samples 200] [--creates 3000] [--reload]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import Engine, func, select, text  # noqa: E402

from bot.api.deps import ApiContext  # noqa: E402
from bot.http import HttpServer, create_http_app  # noqa: E402
from bot.runtime import build_classifier, build_pipeline  # noqa: E402
from core.config import Config, HttpConfig, Secrets  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.store import SqlStore  # noqa: E402
from storage.tables import TicketRow  # noqa: E402
from storage.tokens import TokenStore  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql://postgres@127.0.0.1:5432/ticketbot_bench_api"
NOW = datetime(2026, 11, 1, tzinfo=UTC)  # fixed, so a reused database answers the same filters the same way
YEAR = timedelta(days=365)

DEPARTMENTS = {
    "IT Support": (
        ["VPN will not connect", "Laptop does not start", "Password reset", "Printer jammed", "Outlook crashes"],
        [
            "my laptop shows a blue screen",
            "the VPN client says authentication failed",
            "I cannot log in",
            "the printer on floor {n} is jammed",
            "Outlook freezes when I open attachments",
            "my monitor flickers",
        ],
    ),
    "HR": (
        ["Holiday allowance", "Payslip question", "Parental leave", "Contract change", "Onboarding a new hire"],
        [
            "my payslip shows the wrong tax code",
            "how many holidays do I have left",
            "I need a new contract",
            "when does parental leave start",
            "our new colleague starts on Monday",
        ],
    ),
    "Facilities": (
        ["Heating broken", "Desk booking", "Parking permit", "Cleaning", "Broken chair"],
        [
            "the heating in room {n} is broken",
            "the lights on floor {n} stay on all night",
            "I need a parking permit",
            "the kitchen was not cleaned",
            "my chair is broken",
        ],
    ),
    "Finance": (
        ["Expense claim", "Invoice overdue", "Purchase order", "Budget question", "Reimbursement"],
        [
            "please reimburse my train ticket",
            "the supplier invoice {n} is overdue",
            "I need a purchase order",
            "my expense claim was rejected",
            "what is left in our travel budget",
        ],
    ),
    "General": (
        ["Question", "Newsletter", "Who do I ask", "Feedback", "Other"],
        [
            "who do I ask about the newsletter",
            "I have a general question",
            "some feedback on the office",
            "where can I find the policy",
            "not sure who handles this",
        ],
    ),
}
FILLER = (
    "since this morning",
    "again",
    "urgently",
    "thanks a lot",
    "as discussed",
    "for the third time",
    "before Friday",
    "in the Berlin office",
    "when working from home",
    "after the update",
)
STATUSES = ["resolved"] * 45 + ["closed"] * 25 + ["new"] * 12 + ["in_progress"] * 10 + ["waiting"] * 8
PRIORITIES = ["low"] * 25 + ["medium"] * 50 + ["high"] * 20 + ["urgent"] * 5
CHANNELS = ["email"] * 60 + ["slack"] * 30 + ["api"] * 7 + ["cli"] * 3
COLUMNS = [
    "subject",
    "body",
    "requester",
    "requester_name",
    "channel",
    "department",
    "priority",
    "status",
    "assignee",
    "confidence",
    "summary",
    "classifier",
    "triaged",
    "created_at",
    "updated_at",
    "first_action_at",
    "resolved_at",
]


# -- data -----------------------------------------------------------------------------------------------


def synthetic_rows(n: int, seed: int = 7) -> Any:
    """``n`` ticket rows in COLUMNS order, oldest first (created_at increases with id), as Python values."""
    rng = random.Random(seed)
    names = list(DEPARTMENTS)
    start = NOW - YEAR
    step = YEAR / n
    for i in range(n):
        department = names[rng.randrange(5)]
        subjects, bodies = DEPARTMENTS[department]
        subject = rng.choice(subjects)
        body = f"Hello, {rng.choice(bodies).format(n=rng.randrange(1, 60))} {rng.choice(FILLER)}. "
        body += f"{rng.choice(bodies).format(n=rng.randrange(1, 60))}, {rng.choice(FILLER)}. Regards"
        if rng.random() < 0.002:
            body += " (the badge reader at the side entrance)"
        status = rng.choice(STATUSES)
        created = start + step * i + timedelta(seconds=rng.random() * 30)
        updated = min(NOW, created + timedelta(hours=rng.random() * 72))
        resolved = updated if status in ("resolved", "closed") else None
        who = rng.randrange(5000)
        yield (
            subject,
            body,
            f"user{who}@example.com",
            f"User {who}",
            rng.choice(CHANNELS),
            department,
            rng.choice(PRIORITIES),
            status,
            f"agent{rng.randrange(40)}" if status != "new" else None,
            round(0.3 + rng.random() * 0.7, 3),
            subject,
            "claude" if rng.random() < 0.7 else "offline",
            False,
            created,
            updated,
            updated if status != "new" else None,
            resolved,
        )


def load(engine: Engine, n: int) -> None:
    """Bulk-load ``n`` tickets and the rerouted events of 4% of them (COPY on PostgreSQL, executemany on SQLite)."""
    started = time.monotonic()
    pg = engine.dialect.name == "postgresql"
    raw: Any = engine.raw_connection()
    try:
        cur = raw.cursor()
        if pg:
            # Trigram indexes are built once after the load: maintaining them row by row is far slower.
            cur.execute("DROP INDEX IF EXISTS ix_tickets_subject_trgm")
            cur.execute("DROP INDEX IF EXISTS ix_tickets_body_trgm")
            with cur.copy(f"COPY tickets ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in synthetic_rows(n):
                    copy.write_row(row)
            cur.execute(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'pg_trgm'"
            )
            schema = cur.fetchone()[0]
            cur.execute("SET maintenance_work_mem = '512MB'")
            cur.execute(f'CREATE INDEX ix_tickets_subject_trgm ON tickets USING gin (subject "{schema}".gin_trgm_ops)')
            cur.execute(f'CREATE INDEX ix_tickets_body_trgm ON tickets USING gin (body "{schema}".gin_trgm_ops)')
        else:
            cur.execute("BEGIN")
            sql = f"INSERT INTO tickets ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
            batch: list[tuple[Any, ...]] = []
            for row in synthetic_rows(n):
                batch.append(
                    tuple(
                        v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v
                        for v in row
                    )
                )
                if len(batch) == 20_000:
                    cur.executemany(sql, batch)
                    batch.clear()
            cur.executemany(sql, batch)
        raw.commit()
    finally:
        raw.close()
    with engine.begin() as conn:
        # 4% of tickets were rerouted by a person: what GET /stats reports as the reroute rate.
        ts = "now()" if pg else "datetime('now')"
        data = "'{}'::json" if pg else "'{}'"
        conn.execute(
            text(
                f"INSERT INTO ticket_events (ticket_id, kind, actor, data, at) "
                f"SELECT id, 'rerouted', 'bench', {data}, {ts} FROM tickets WHERE id % 25 = 0"
            )
        )
    if pg:  # autovacuum would do it soon after such a load; SQLite keeps no statistics unless told (we don't)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE tickets"))
            conn.execute(text("VACUUM ANALYZE ticket_events"))
    print(f"  loaded {n:,} tickets in {time.monotonic() - started:.0f} s", flush=True)


def prepare(engine_name: str, n: int, sqlite_path: Path, reload: bool) -> str:
    """The database URL for ``engine_name``, migrated and holding ``n`` bench tickets."""
    if engine_name == "postgresql":
        exists = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-tAc",
                "SELECT 1 FROM pg_database WHERE datname = 'ticketbot_bench_api'",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if reload and exists:
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "ticketbot_bench_api"], check=True)
            exists = ""
        if not exists:
            subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", "ticketbot_bench_api"], check=True)
        url = PG_URL
    else:
        if reload:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{sqlite_path}"
    engine = make_engine(url)
    upgrade(engine)
    with engine.connect() as conn:
        have = conn.execute(select(func.count()).select_from(TicketRow)).scalar_one()
    if have < n:
        if have:
            raise SystemExit(f"{url} holds {have:,} tickets, fewer than {n:,}: run with --reload")
        load(engine, n)
    engine.dispose()
    return url


# -- load generator (separate process) ------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_once(base: str, token: str, case: tuple[str, dict[str, Any]]) -> list[list[float]]:
    """One request's latency in ms, nothing before it (a cold cache stays cold)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        started = time.perf_counter()
        response = client.get(case[0], params=case[1])
        elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{case}: {response.status_code} {response.text[:200]}")
    return [[elapsed]]


def run_gets(base: str, token: str, cases: list[tuple[str, dict[str, Any]]], samples: int) -> list[list[float]]:
    """Each case's latencies in ms, one request at a time; the first few are warm-up and not counted."""
    out: list[list[float]] = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for path, params in cases:
            times: list[float] = []
            for i in range(samples + 3):
                started = time.perf_counter()
                response = client.get(path, params=params)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"{path} {params}: {response.status_code} {response.text[:200]}")
                if i >= 3:
                    times.append(elapsed)
            out.append(times)
    return out


def run_creates(base: str, token: str, total: int, concurrency: int) -> tuple[float, list[float], int]:
    """POST ``total`` tickets from ``concurrency`` threads: (wall seconds, latencies in ms, failures).

    Each thread keeps one keep-alive connection through the standard library's ``http.client``: it costs the
    load generator about 0.25 ms of CPU a request where httpx cost 1.1 ms, and on two cores shared with the
    server and PostgreSQL every millisecond the client burns is one the server waits for (docs/api.md).
    """
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    counter = iter(range(total))
    texts = [
        (subject, body.format(n=7))
        for subjects, bodies in DEPARTMENTS.values()
        for subject, body in zip(subjects, bodies, strict=False)
    ]
    where = urlsplit(base)
    path = f"{where.path}/tickets"

    def worker() -> None:
        nonlocal failures
        conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=60)
        try:
            for i in counter:
                subject, body = texts[i % len(texts)]
                payload = json.dumps({"requester": f"load{i % 997}@example.com", "subject": subject, "body": body})
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"bench-{time.time_ns()}-{i}",
                }
                started = time.perf_counter()
                conn.request("POST", path, body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if response.status == 201:
                        latencies.append(elapsed)
                    else:
                        failures += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, failures


def in_process(fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in a fresh process (the load generator never shares the server's GIL)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


# -- the run --------------------------------------------------------------------------------------------


@dataclass
class Served:
    server: HttpServer
    store: SqlStore
    token: str

    @property
    def base(self) -> str:
        return f"{self.server.url}/api/v1"


def serve(url: str) -> Served:
    config = Config(
        database={"url": url, "pool_size": 20}, classifier={"mode": "offline"}, api={"rate_limit_per_second": 0}
    )
    engine = make_engine(url, pool_size=20)
    store = SqlStore(engine)
    pipeline = build_pipeline(config, store, build_classifier(config, Secrets()))
    context = ApiContext(config=config, store=store, pipeline=pipeline, tokens=TokenStore(engine))
    _, token = context.tokens.create("bench", "write")
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), create_http_app(api=context))
    server.start()
    return Served(server, store, token)


FILTERS: list[tuple[str, dict[str, Any]]] = [
    ("first page, no filter", {}),
    ("department", {"department": "Finance"}),
    ("status", {"status": "waiting"}),
    ("department+status+priority", {"department": "HR", "status": "new", "priority": "urgent"}),
    ("requester", {"requester": "user4242@example.com"}),
    ("channel+priority", {"channel": "cli", "priority": "urgent"}),
    ("open, 2 statuses", {"status": ["new", "in_progress"], "department": "IT Support"}),
    ("created range (a week in May)", {"created_from": "2026-05-01T00:00:00Z", "created_to": "2026-05-08T00:00:00Z"}),
    (
        "updated range + department",
        {"updated_from": "2026-02-01T00:00:00Z", "updated_to": "2026-02-03T00:00:00Z", "department": "Facilities"},
    ),
    ('q common ("printer")', {"q": "printer"}),
    ('q rare ("badge reader", 0.2%)', {"q": "badge reader"}),
    ('q absent ("zeppelin")', {"q": "zeppelin"}),
    ("q + department", {"q": "parking permit", "department": "Facilities"}),
    ("limit 200", {"limit": 200}),
]


def deep_cursor(served: Served, pages: int) -> str:
    """A cursor ``pages`` pages deep (keyset pagination: as cheap as page 1)."""
    cursor = ""
    with httpx.Client(base_url=served.base, headers={"Authorization": f"Bearer {served.token}"}) as client:
        for _ in range(pages):
            cursor = client.get("/tickets", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()[
                "next_cursor"
            ]
    return cursor


def bench_engine(name: str, url: str, samples: int, creates: int, concurrency: int) -> dict[str, Any]:
    served = serve(url)
    try:
        cases = [("/tickets", params) for _, params in FILTERS]
        labels = [label for label, _ in FILTERS]
        cases.append(("/tickets", {"cursor": deep_cursor(served, 50)}))
        labels.append("page after 10,000 rows (cursor)")
        results = in_process(run_gets, served.base, served.token, cases, samples)
        print(f"\n{name}: GET /api/v1/tickets, {samples} sequential requests per filter (ms)")
        print(f"  {'filter':<36}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}")
        worst = 0.0
        for label, times in zip(labels, results, strict=True):
            p99 = percentile(times, 99)
            worst = max(worst, p99)
            print(f"  {label:<36}{percentile(times, 50):8.1f}{percentile(times, 95):8.1f}{p99:8.1f}{max(times):8.1f}")
        stat_cases = [
            ("/stats", {"until": NOW.isoformat()}),
            ("/stats", {"since": (NOW - YEAR).isoformat(), "until": NOW.isoformat()}),
        ]
        # A year reads closed days from stats_days: time the first request with that cache empty (it computes
        # every day), then the usual warmed-up samples.
        with served.store.engine.begin() as conn:
            conn.execute(text("DELETE FROM stats_days"))
        [[cold_year]] = in_process(run_once, served.base, served.token, stat_cases[1])
        stat_times = in_process(run_gets, served.base, served.token, stat_cases, 5)
        print(f"{name}: GET /api/v1/stats (ms)")
        for label, times in zip(["last 30 days (82k tickets)", "whole year (1M tickets)"], stat_times, strict=True):
            print(f"  {label:<36}{'p50':>4} {statistics.median(times):7.1f}  max {max(times):7.1f}")
        print(f"  {'whole year, day cache empty':<36}{'':>4} {cold_year:7.1f}")
        # Steady state: a first 200 creates (not counted) warm the connection pool, caches and the worker threads.
        in_process(run_creates, served.base, served.token, 200, concurrency)
        wall, latencies, failures = in_process(run_creates, served.base, served.token, creates, concurrency)
        rate = len(latencies) / wall
        print(f"{name}: POST /api/v1/tickets x {creates} at concurrency {concurrency} (offline classifier)")
        print(
            f"  {rate:.0f} tickets/s; latency p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms; failures {failures}"
        )
        return {
            "list_p99": worst,
            "stats_30d": max(stat_times[0]),
            "stats_year": max(stat_times[1]),
            "stats_year_cold": cold_year,
            "create_rate": rate,
        }
    finally:
        served.server.stop()
        served.store.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--creates", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sqlite-path", type=Path, default=Path("/tmp/ticketbot_bench_api.db"))
    parser.add_argument("--reload", action="store_true", help="Drop and reload the bench databases")
    args = parser.parse_args()
    summary = {}
    for name in args.engines:
        print(f"{name}: preparing {args.tickets:,} tickets", flush=True)
        url = prepare(name, args.tickets, args.sqlite_path, args.reload)
        summary[name] = bench_engine(name, url, args.samples, args.creates, args.concurrency)
    print("\nsummary (targets: list p99 < 50 ms, stats < 500 ms, create >= 300/s on PostgreSQL)")
    for name, s in summary.items():
        print(
            f"  {name:<11} worst list p99 {s['list_p99']:6.1f} ms   stats 30 days {s['stats_30d']:5.0f} ms, "
            f"a year {s['stats_year']:5.0f} ms ({s['stats_year_cold']:.0f} ms cold)   create {s['create_rate']:4.0f}/s"
        )


if __name__ == "__main__":
    main()

"""Bench for the summarise stage: admin and department digest time and peak memory over 1,000,000 tickets.

Run from the repo root: ``python bench/digest.py [--engine sqlite postgresql] [--tickets 1000000] [--regenerate]``.
Generates a year of tickets with their events (created, routed, status changes, some reroutes) once per engine,
bulk-loaded (SQLite: executemany in large transactions; PostgreSQL: COPY) into ``var/bench/digest.db`` and the
database ``ticketbot_bench_digest`` (``createdb -h 127.0.0.1 -U postgres ticketbot_bench_digest``); later runs
reuse them. Each measurement runs in a fresh process so its peak RSS is the digest's, not the generator's.
Targets: under 1 s per digest, peak memory under 200 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, func, select, text  # noqa: E402

from storage.db import make_engine, upgrade  # noqa: E402
from storage.tables import TicketRow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SQLITE_URL = f"sqlite:///{ROOT / 'var' / 'bench' / 'digest.db'}"
PG_URL = os.environ.get("TICKETBOT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/ticketbot_bench_digest")
FIRE_AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # a Friday: both digests fire
DEPARTMENTS = ["IT Support", "HR", "Facilities", "Finance", "General"]
WEIGHTS = [0.45, 0.15, 0.15, 0.15, 0.10]
TARGET_SECONDS, TARGET_MB = 1.0, 200.0


def url_for(engine: str) -> str:
    return SQLITE_URL if engine == "sqlite" else PG_URL


def generate(engine: Engine, n: int, *, seed: int = 6) -> None:
    """``n`` tickets over the year before FIRE_AT, with about three events each, bulk-loaded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    year = 365 * 86400
    start = FIRE_AT - timedelta(seconds=year)
    created = np.sort(rng.uniform(0, year, n))
    dept = rng.choice(len(DEPARTMENTS), n, p=WEIGHTS)
    priority = rng.choice(4, n, p=[0.3, 0.45, 0.2, 0.05])
    claude = rng.random(n) < 0.7
    confidence = np.clip(rng.normal(0.75, 0.15, n), 0.05, 0.99)
    acted = rng.random(n) < 0.9
    first = created + rng.exponential(4 * 3600, n)
    resolve = created + rng.exponential(2 * 86400, n)
    done = (rng.random(n) < 0.97) & (resolve < year)
    first = np.where(acted | done, np.minimum(first, np.where(done, resolve, np.inf)), np.nan)
    first = np.where(first < year, first, np.nan)
    rerouted = rng.random(n) < 0.03
    assigned = rng.random(n) < 0.6
    open_status = rng.choice(3, n)  # new, in_progress, waiting
    priorities = ["low", "medium", "high", "urgent"]
    opens = ["new", "in_progress", "waiting"]

    def ts(seconds: float) -> datetime:
        return start + timedelta(seconds=float(seconds))

    tickets: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    batch = 50_000
    t0 = time.perf_counter()
    for i in range(n):
        c = ts(created[i])
        d = DEPARTMENTS[dept[i]]
        f = None if np.isnan(first[i]) else ts(first[i])
        r = ts(resolve[i]) if done[i] else None
        routed_to = DEPARTMENTS[(dept[i] + 1) % len(DEPARTMENTS)] if rerouted[i] else d
        tickets.append(
            {
                "id": i + 1,
                "subject": f"Request {i + 1}",
                "body": "Something needs doing.",
                "requester": f"user{i % 5000}@example.com",
                "requester_name": "",
                "channel": "email",
                "department": d,
                "priority": priorities[priority[i]],
                "status": ("resolved" if i % 2 else "closed") if done[i] else opens[open_status[i]],
                "assignee": f"U{i % 40:04d}" if assigned[i] else None,
                "confidence": float(confidence[i]),
                "summary": f"Summary of request {i + 1}",
                "classifier": "claude" if claude[i] else "offline",
                "triaged": False,
                "created_at": c,
                "updated_at": max(x for x in (c, f, r) if x is not None),
                "first_action_at": f,
                "resolved_at": r,
            }
        )

        def event(
            kind: str, actor: str, data: dict[str, str], when: datetime, ticket: int = i + 1, sink: Any = events
        ) -> None:
            sink.append({"ticket_id": ticket, "kind": kind, "actor": actor, "data": json.dumps(data), "at": when})

        event("created", "requester", {}, c)
        event("routed", "router", {"to": routed_to}, c)
        if rerouted[i] and f is not None:
            event("rerouted", "U0001", {"from": routed_to, "to": d}, f)
        if r is not None:
            event("status", "U0001", {"to": "resolved"}, r)
        if len(tickets) >= batch:
            _load(engine, tickets, events)
            tickets, events = [], []
            print(f"  {i + 1:,} tickets loaded ({time.perf_counter() - t0:.0f}s)", flush=True)
    if tickets:
        _load(engine, tickets, events)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval('tickets_id_seq', (SELECT max(id) FROM tickets))"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    print(f"  generated {n:,} tickets in {time.perf_counter() - t0:.0f}s", flush=True)


TICKET_COLUMNS = [
    "id",
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
EVENT_COLUMNS = ["ticket_id", "kind", "actor", "data", "at"]


def _tables(tickets: list[dict[str, Any]], events: list[dict[str, Any]]) -> Any:
    return (("tickets", TICKET_COLUMNS, tickets), ("ticket_events", EVENT_COLUMNS, events))


def _load(engine: Engine, tickets: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for table, columns, rows in _tables(tickets, events):
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in rows:
                        copy.write_row([row[c] for c in columns])
            raw.commit()
        finally:
            raw.close()
        return

    # SQLite stores naive UTC text (storage.tables.UTCDateTime); executemany on the raw connection is the fast path.
    def value(v: Any) -> Any:
        return v.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if isinstance(v, datetime) else v

    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN")
        for table, columns, rows in _tables(tickets, events):
            marks = ", ".join("?" for _ in columns)
            cur.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                [[value(row[c]) for c in columns] for row in rows],
            )
        cur.execute("COMMIT")
    finally:
        raw.close()


def prepare(engine_name: str, n: int, regenerate: bool) -> None:
    url = url_for(engine_name)
    if engine_name == "sqlite":
        path = ROOT / "var" / "bench" / "digest.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        if regenerate:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = make_engine(url)
    if engine_name == "postgresql" and regenerate:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(engine)
    with engine.connect() as conn:
        have = int(conn.execute(select(func.count()).select_from(TicketRow)).scalar_one())
    if have != n:
        if have:
            raise SystemExit(f"{engine_name}: holds {have:,} tickets, not {n:,}; use --regenerate")
        print(f"{engine_name}: generating {n:,} tickets", flush=True)
        generate(engine, n)
    engine.dispose()


def rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory. Not getrusage: its ru_maxrss survives
    execve, so a child of the generator would report the generator's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(engine_name: str) -> dict[str, Any]:
    """Time the admin digest and the IT Support digest (compose only, then the chart), in this process."""
    from bot.digest import chart_png
    from core.config import Config
    from core.digest import ADMIN_SCOPE, DigestPeriod, compose_digest, department_scope
    from storage.digests import SqlDigestStore
    from storage.store import SqlStore

    engine = make_engine(url_for(engine_name))
    store = SqlDigestStore(SqlStore(engine))
    names = Config().department_names
    out: dict[str, Any] = {"engine": engine_name}
    with engine.connect() as conn:
        out["tickets"] = int(conn.execute(select(func.count()).select_from(TicketRow)).scalar_one())
    out["rss_before_mb"] = rss_mb("VmRSS")
    # Timings and peak RSS first, without tracemalloc (it slows allocation and adds its own memory) ...
    for label, scope in (("admin", ADMIN_SCOPE), ("department", department_scope("IT Support"))):
        period = DigestPeriod(scope, FIRE_AT.date(), FIRE_AT - timedelta(days=1), FIRE_AT, "Europe/London")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            digest = compose_digest(store, period, departments=names, now=FIRE_AT, stale_days=3)
            times.append(time.perf_counter() - t0)
        out[f"{label}_first_s"] = times[0]
        out[f"{label}_best_s"] = min(times)
        out[f"{label}_new"] = sum(d.new for d in digest.departments)
    out["max_rss_mb"] = rss_mb()
    # ... then the Python heap's peak over one admin and one department digest.
    tracemalloc.start()
    digests = []
    for scope in (ADMIN_SCOPE, department_scope("IT Support")):
        period = DigestPeriod(scope, FIRE_AT.date(), FIRE_AT - timedelta(days=1), FIRE_AT, "Europe/London")
        digests.append(compose_digest(store, period, departments=names, now=FIRE_AT, stale_days=3))
    out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    # The admin digest's chart (matplotlib is imported on first use, as in the bot), timed and measured apart.
    t0 = time.perf_counter()
    out["chart_bytes"] = len(chart_png(digests[0]))
    out["chart_s"] = time.perf_counter() - t0
    out["max_rss_with_chart_mb"] = rss_mb()
    engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--engine", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--measure-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_only:
        print(json.dumps(measure(args.measure_only)))
        return 0
    results = []
    for name in args.engine:
        prepare(name, args.tickets, args.regenerate)
        run = subprocess.run(
            [sys.executable, __file__, "--measure-only", name], capture_output=True, text=True, check=True
        )
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    buf = io.StringIO()
    buf.write(
        f"{'engine':<11}{'tickets':>10}{'admin s':>9}{'(first)':>9}{'dept s':>8}{'(first)':>9}"
        f"{'chart s':>9}{'py peak MB':>11}{'RSS MB':>8}{'(start)':>8}{'+chart':>8}\n"
    )
    missed = False
    for r in results:
        buf.write(
            f"{r['engine']:<11}{r['tickets']:>10,}{r['admin_best_s']:>9.3f}{r['admin_first_s']:>9.3f}"
            f"{r['department_best_s']:>8.3f}{r['department_first_s']:>9.3f}{r.get('chart_s', 0):>9.3f}"
            f"{r['tracemalloc_peak_mb']:>11.1f}{r['max_rss_mb']:>8.0f}{r['rss_before_mb']:>8.0f}"
            f"{r['max_rss_with_chart_mb']:>8.0f}\n"
        )
        slow = max(r["admin_first_s"], r["department_first_s"]) >= TARGET_SECONDS
        missed = missed or slow or r["max_rss_mb"] >= TARGET_MB
    print(buf.getvalue(), end="")
    print(
        f"targets: < {TARGET_SECONDS:.0f} s per digest (first run), peak RSS < {TARGET_MB:.0f} MB "
        "(RSS MB: the process's peak while composing; +chart: after drawing the chart too): "
        + ("missed" if missed else "met")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

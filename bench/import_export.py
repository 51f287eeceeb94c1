"""Benchmark of bulk import and export: 1,000,000 CSV rows into SQLite and PostgreSQL, then exported back.

A CSV of N realistic rows (subject, a body of a few sentences, requester, department, priority, status,
created_at in file order over a year, as a helpdesk export comes; ``--shuffled-times`` scatters them, the worst
case for the created_at indexes; no external id, so every row's dedupe key is the content hash) is generated
once under /tmp. Then,
for each engine, each step in a process of its own so its peak RSS is its own:

* import: the real ``Importer`` (as ``ticketbot import`` runs it: batches of 1,000, one transaction each) into
  a fresh database (SQLite in /tmp; PostgreSQL database ``ticketbot_bench_import``, dropped and created);
  rows/s, and the process's RSS sampled while it runs (it must stay flat: the file is never held);
* export: ``iter_tickets`` + ``write_export`` (as ``ticketbot export``) of every ticket to CSV; rows/s, RSS;
* with ``--reimport``, the same file imported again (every row a duplicate): rows/s.

Target (issue 7): import >= 5,000 rows/s with flat memory.

    python bench/import_export.py                    # 1,000,000 rows, SQLite and PostgreSQL
    python bench/import_export.py --rows 100000 --engines sqlite
    python bench/import_export.py --shuffled-times   # created_at in no order
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/import_export.py` puts bench/, not the repo, on the path

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "ticketbot_bench_import"
PAGE = os.sysconf("SC_PAGE_SIZE")
WORDS = (
    "printer laptop vpn password invoice payroll leave heating desk badge email account screen network "
    "expense contract parking office chair software licence monitor keyboard wifi broken slow cannot access "
    "since yesterday please help urgent again floor meeting room reimbursement purchase order budget"
).split()
DEPARTMENTS = ["IT Support", "HR", "Facilities", "Finance", "General"]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def created_at(i: int, rows: int, shuffled: bool) -> str:
    """Row i's creation time: in file order over one year (as a helpdesk export is), or scattered (worst case
    for every created_at index: each row lands on a random page)."""
    if shuffled:
        return f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z"
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=i * 365 * 86400 // max(rows, 1))
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(path: Path, rows: int, shuffled: bool) -> None:
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["subject", "body", "requester", "department", "priority", "status", "created_at"])
        for i in range(rows):
            subject = " ".join(rng.choices(WORDS, k=rng.randint(3, 8))).capitalize()
            body = ". ".join(" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(rng.randint(2, 5)))
            writer.writerow(
                [
                    subject,
                    f"{body}.\nThanks, user {i}",
                    f"user{i % 5000}@example.com",
                    DEPARTMENTS[i % 5],
                    ("low", "medium", "high", "urgent")[i % 4],
                    ("new", "closed", "resolved", "in_progress")[i % 4],
                    created_at(i, rows, shuffled),
                ]
            )


class Sampler:
    """RSS every ``interval`` seconds on a thread: the memory curve over the run, not only its peak."""

    def __init__(self, interval: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []
        self._interval = interval
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append((time.perf_counter() - self._start, rss_mib()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._start, rss_mib()))


def child(step: str, url: str, file: Path, out: Path) -> dict[str, Any]:
    """One step in this (child) process; returns its figures."""
    from bot.io.export import ExportFormat, write_export
    from bot.io.importer import Importer, ImportOptions, quick_handover, router_for
    from bot.io.readers import Format
    from core.config import Config
    from storage.db import make_engine, upgrade
    from storage.imports import SqlImportStore
    from storage.queries import TicketQuery, iter_tickets

    engine = make_engine(url)
    upgrade(engine)
    start_rss = rss_mib()
    cpu_before = cpu_seconds()
    with Sampler() as sampler:
        started = time.perf_counter()
        if step == "export":
            with out.open("w", newline="", encoding="utf-8") as f:
                rows = write_export(iter_tickets(engine, TicketQuery()), f, ExportFormat.CSV)
            extra: dict[str, Any] = {}
        else:
            importer = Importer(store=SqlImportStore(engine), router=router_for(Config()))
            with file.open("rb") as f, quick_handover():  # as `ticketbot import` runs it
                report = importer.run(f, ImportOptions(format=Format.CSV, source=file.name, actor="bench"))
            rows = report.rows
            extra = {"imported": report.imported, "duplicates": report.duplicates, "bad": report.bad}
        seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    engine.dispose()
    curve = sampler.samples
    tenths = [curve[min(len(curve) - 1, int(len(curve) * q / 10))][1] for q in range(1, 11)] if curve else []
    return {
        "step": step,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds) if seconds else 0,
        # This process's CPU time: on a shared machine the wall clock also counts waiting for a core.
        "cpu_seconds": round(cpu, 2),
        "rss_start_mib": round(start_rss, 1),
        "rss_by_tenth_mib": [round(x, 1) for x in tenths],
        "rss_peak_mib": round(max([start_rss, *(s[1] for s in curve)]), 1),
        **extra,
    }


def run_child(step: str, url: str, file: Path, out: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", step, "--url", url, "--file", str(file), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def fresh_database(engine_name: str, workdir: Path) -> str:
    if engine_name == "sqlite":
        db = workdir / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{db}"
    for command in (["dropdb", "--if-exists"], ["createdb"]):
        subprocess.run([*command, "-h", "127.0.0.1", "-U", "postgres", PG_DB], check=True)
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--reimport", action="store_true", help="also import the same file again (all duplicates)")
    parser.add_argument("--shuffled-times", action="store_true", help="created_at in no order (the worst case)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ticketbot-bench-import"))
    parser.add_argument("--child", choices=["import", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.file, args.out)))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.workdir / f"tickets-{args.rows}{'-shuffled' if args.shuffled_times else ''}.csv"
    if not source.exists():
        started = time.perf_counter()
        generate(source, args.rows, args.shuffled_times)
        print(f"generated {source} ({source.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.1f} s")
    missed = False
    print(f"{'engine':<11}{'step':<10}{'rows':>10}{'s':>8}{'rows/s':>9}{'cpu s':>7}  RSS MiB: start | tenths | peak")
    for engine_name in args.engines:
        url = fresh_database(engine_name, args.workdir)
        steps = ["import", "export", *(["import"] if args.reimport else [])]
        for i, step in enumerate(steps):
            figures = run_child(step, url, source, args.workdir / f"export-{engine_name}.csv")
            label = "reimport" if i == 2 else step
            curve = " ".join(f"{x:.0f}" for x in figures["rss_by_tenth_mib"])
            print(
                f"{engine_name:<11}{label:<10}{figures['rows']:>10,}{figures['seconds']:>8.1f}"
                f"{figures['rows_per_s']:>9,}{figures['cpu_seconds']:>7.1f}  "
                f"{figures['rss_start_mib']:.0f} | {curve} | {figures['rss_peak_mib']:.0f}"
            )
            if step == "import" and i == 0:
                if figures.get("bad"):
                    print(f"  {figures['bad']} bad rows (unexpected)")
                missed |= figures["rows_per_s"] < 5000
    print("target: import >= 5,000 rows/s with flat memory:", "missed" if missed else "met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

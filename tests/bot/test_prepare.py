"""Worker processes that decode and classify email (bot.prepare), with real spawned processes and the real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.prepare import ProcessPreparer, auto_processes, usable_cores
from bot.runtime import email_decoders, offline_classifier
from core.config import Config, load_config
from core.inbound import InboundStatus, StoredInbound
from core.message import Channel
from core.pipeline import Prepared, prepare
from tests.fakes.mail import SUPPORT, corpus, out_of_office, request

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(
        ROOT / "config.yaml",
        data_dir=str(tmp_path),
        classifier={"mode": "offline"},
        email={"support_addresses": [SUPPORT], "allowed_sender_domains": ["example.com"]},
    )


@pytest.fixture
def preparer(config: Config) -> Iterator[ProcessPreparer]:
    pool = ProcessPreparer(config, classify=True, processes=1)
    pool.start()
    pool.wait_ready()
    yield pool
    pool.stop()


def row(n: int, payload: bytes, channel: Channel = Channel.EMAIL) -> StoredInbound:
    return StoredInbound(
        id=n,
        channel=channel,
        dedupe_key=f"key-{n}",
        payload=payload,
        received_at=datetime(2026, 11, 2, 9, 0, tzinfo=UTC),
        status=InboundStatus.RECEIVED,
        attempts=0,
    )


def verdict(prepared: Prepared | None) -> tuple[object, ...] | None:
    """A Prepared without the one thing two runs may differ in (the classification's latency)."""
    if prepared is None:
        return None
    c = prepared.classification
    return (
        prepared.message,
        prepared.malformed,
        c and (c.department, c.priority, c.confidence, c.summary, c.classifier, c.model),
    )


def test_a_worker_process_prepares_exactly_what_this_process_would(config: Config, preparer: ProcessPreparer) -> None:
    rows = [row(n, raw) for n, raw in enumerate(corpus(30, seed=7, tag="prep"))]
    rows.append(row(100, out_of_office(sender="ana@example.com")))  # a robot: decoded, not classified
    rows.append(row(101, b""))  # nothing at all
    decode, classifier = email_decoders(config)[Channel.EMAIL], offline_classifier(config)
    here = [prepare(decode, classifier, r) for r in rows]
    there = list(preparer.prepare(rows))
    assert [verdict(p) for p in there] == [verdict(p) for p in here]
    assert sum(p is not None and p.classification is not None for p in there) >= 20
    assert there[-2] is not None and there[-2].classification is None


def test_other_channels_are_left_to_this_process(preparer: ProcessPreparer) -> None:
    rows = [row(1, b'{"sender": "ana@example.com", "body": "hi"}', Channel.CLI), row(2, request())]
    first, second = preparer.prepare(rows)
    assert first is None and second is not None and second.message is not None


def test_a_killed_process_costs_one_batch_then_a_new_pool_takes_over(preparer: ProcessPreparer) -> None:
    rows = [row(1, request(subject="Printer jammed"))]
    assert all(p is not None for p in preparer.prepare(rows))
    pool = preparer._pool
    assert pool is not None
    for pid in list(pool._processes):  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
    answers: list[Sequence[Prepared | None]] = [list(preparer.prepare(rows)) for _ in range(3)]
    assert answers[-1][0] is not None  # prepared by the new pool
    assert preparer._pool is not pool
    # Whatever the broken pool could not do came back as None, for the worker to do itself: never an exception.
    assert all(len(a) == 1 for a in answers)


def test_after_stop_everything_is_prepared_in_process(config: Config) -> None:
    pool = ProcessPreparer(config, classify=False, processes=1)
    assert list(pool.prepare([row(1, request())])) == [None]  # not started
    pool.start()
    [prepared] = pool.prepare([row(1, request())])
    assert prepared is not None and prepared.classification is None  # classify=False: decoding only
    pool.stop()
    assert list(pool.prepare([row(1, request())])) == [None]


def test_processes_default_to_one_with_a_second_core(config: Config) -> None:
    assert auto_processes(config) == (1 if usable_cores() > 1 else 0)
    assert auto_processes(config.model_copy(update={"worker": config.worker.model_copy(update={"processes": 0})})) == 0


def test_a_container_cpu_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # compose's cpus: "1.0"
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text("max 100000\n")  # no limit
    assert usable_cores(cpu_max) == len(os.sched_getaffinity(0))
    assert usable_cores(tmp_path / "missing") == len(os.sched_getaffinity(0))


PARENT = """
import sys
from bot.prepare import ProcessPreparer
from core.config import load_config

if __name__ == "__main__":
    config = load_config(sys.argv[1], data_dir=sys.argv[2], classifier={"mode": "offline"})
    pool = ProcessPreparer(config, classify=False, processes=2)
    pool.start()
    pool.wait_ready()
    print(*pool._pool._processes, flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_parent_killed_outright_leaves_no_worker_process_behind(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    with subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "config.yaml"), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as parent:
        assert parent.stdout is not None
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        parent.kill()
    deadline = time.monotonic() + 30  # a bound on the wait, not a measurement: they exit within milliseconds
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

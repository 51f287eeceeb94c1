"""SQLite's single writer: writers of one process queue on an in-process lock (storage/db.py), and every way a
write transaction can end gives the lock back."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, text

from storage.db import make_engine

JOIN_SECONDS = 20.0  # well under the lock's 30 s fallback, so a lock that was never given back fails the test


def engine_at(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    return engine


def write_in_thread(engine: Engine, n: int) -> threading.Thread:
    def write() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def rows(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [n for (n,) in conn.execute(text("SELECT n FROM t ORDER BY n"))]


def test_a_second_writer_waits_for_the_first_and_then_writes(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        waiting = write_in_thread(engine, 2)
        waiting.join(0.3)
        assert waiting.is_alive()  # it cannot write while this transaction is open
    waiting.join(JOIN_SECONDS)
    assert not waiting.is_alive() and rows(engine) == [1, 2]


def test_rollback_commit_and_close_without_either_all_release_the_writer(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.rollback()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))
        conn.commit()
    conn = engine.connect()
    conn.execute(text("INSERT INTO t VALUES (3)"))
    conn.close()  # neither commit nor rollback: the pool rolls it back
    try:
        with engine.begin() as failing:
            failing.execute(text("INSERT INTO t VALUES (4)"))
            raise RuntimeError("boom")
    except RuntimeError:
        pass

    writer = write_in_thread(engine, 5)
    writer.join(JOIN_SECONDS)
    assert not writer.is_alive() and rows(engine) == [2, 5]


def test_a_read_during_a_write_does_not_wait_for_the_writer(tmp_path: Path) -> None:
    engine = engine_at(tmp_path)
    done: list[int] = []

    def read_inside_write() -> None:
        with engine.begin() as conn, engine.connect().execution_options(ticketbot_read_only=True) as reader:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            done.append(reader.execute(text("SELECT count(*) FROM t")).scalar_one())  # WAL: sees the last commit

    thread = threading.Thread(target=read_inside_write)
    thread.start()
    thread.join(JOIN_SECONDS)
    assert done == [0] and rows(engine) == [1]

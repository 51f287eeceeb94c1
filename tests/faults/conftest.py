"""Fault-suite fixtures: a private PostgreSQL, the session's Dovecot, the fake Slack API and replica clusters.

Counts are small in ``make test`` and full with ``FAULTS_FULL=1`` (``make soak`` sets it); docs/faults.md lists both.
Every log a cluster writes stays under one session directory, so the secrets test can grep all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.dovecot import dovecot_server, running_dovecot
from tests.faults.harness import (
    FULL,
    PG_BIN,
    AuthSlackAPI,
    Cluster,
    PrivatePostgres,
    replica_config,
)

dovecot = dovecot_server  # the session's private Dovecot (tests/fakes/dovecot.py)
REQUIRE_PG = os.environ.get("TICKETBOT_REQUIRE_POSTGRES") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Replicas are real processes that take seconds to start and drain; the full counts take minutes.
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.timeout(3600 if FULL else 400))


@pytest.fixture(scope="session")
def faults_root() -> Iterator[Path]:
    """Every cluster's config, data dir and logs live under here until the session ends."""
    root = Path(tempfile.mkdtemp(prefix="ticketbot-faults-"))
    try:
        yield root
    finally:
        if os.environ.get("FAULTS_KEEP") != "1":  # FAULTS_KEEP=1 keeps logs and configs for a post-mortem
            shutil.rmtree(root, ignore_errors=True)


def _private_postgres() -> PrivatePostgres:
    if not (PG_BIN / "initdb").exists():
        reason = f"{PG_BIN}/initdb is missing: the fault suite runs its own PostgreSQL cluster"
        if REQUIRE_PG:
            pytest.fail(f"TICKETBOT_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = PrivatePostgres()
    server.start()
    return server


@pytest.fixture(scope="session")
def pg() -> Iterator[PrivatePostgres]:
    """The suite's own PostgreSQL cluster (never the machine's shared one); each cluster gets a database."""
    server = _private_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_pg() -> Iterator[PrivatePostgres]:
    """A cluster for one test alone: the test may stop and start it."""
    server = _private_postgres()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def slack_api() -> Iterator[AuthSlackAPI]:
    with AuthSlackAPI() as api:
        yield api


MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(faults_root: Path, pg: PrivatePostgres, request: pytest.FixtureRequest) -> Iterator[MakeCluster]:
    """``make_cluster(replicas, imap=..., slack_api=..., db=..., **replica_config)``: replicas added, not started."""
    made: list[Cluster] = []

    def make(
        replicas: int,
        *,
        imap: dict[str, Any] | None = None,
        slack_api: AuthSlackAPI | None = None,
        db: PrivatePostgres | None = None,
        extra_env: dict[str, str] | None = None,
        **config: Any,
    ) -> Cluster:
        name = f"{request.node.name}-{len(made) + 1}".replace("[", "-").replace("]", "")
        cluster = Cluster(
            root=faults_root / name,
            db_url=(db or pg).create_database(),
            config=replica_config(imap=imap, slack_api_url=slack_api.api_url if slack_api else None, **config),
            extra_env=extra_env or {},
            # Without the fake Slack API the replicas run without Slack rather than posting into the void.
            drop_env=() if slack_api else ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"),
        )
        cluster.add(replicas)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()


__all__ = ["dovecot", "running_dovecot"]

"""API tokens: stored hashed, shown once, revocable; the `ticketbot tokens` commands; the API mounted by the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from bot.cli import main
from bot.http import http_component
from bot.runtime import build_pipeline
from core.classify.offline import OfflineClassifier
from core.config import Config
from core.errors import InvalidInput, NotFound
from storage.store import SqlStore
from storage.tokens import TokenStore, digest

ROOT = Path(__file__).resolve().parents[2]


def test_tokens_are_stored_as_digests_and_revocable(store: SqlStore) -> None:
    tokens = TokenStore(store.engine)
    token, secret = tokens.create("ci", "write")
    assert secret.startswith("tbk_") and len(secret) > 40
    assert token.prefix == secret[:10]
    with store.engine.connect() as conn:
        stored = [tuple(r) for r in conn.exec_driver_sql("SELECT digest, prefix FROM api_tokens").all()]
    assert stored == [(digest(secret), token.prefix)]  # the secret itself is nowhere
    assert tokens.authenticate(secret) == token
    assert tokens.authenticate(secret + "x") is None
    assert tokens.authenticate("not even the prefix") is None

    tokens.create("ci", "read")
    with pytest.raises(InvalidInput, match="2 active tokens are named 'ci'"):
        tokens.revoke("ci")
    revoked = tokens.revoke(str(token.id))
    assert revoked.revoked_at is not None and not revoked.active
    assert tokens.authenticate(secret) is None
    assert [t.name for t in tokens.list(include_revoked=False)] == ["ci"]
    tokens.revoke("ci")
    with pytest.raises(NotFound):
        tokens.revoke("ci")
    with pytest.raises(InvalidInput, match="scope"):
        tokens.create("x", "admin")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="name"):
        tokens.create("  ")


def test_the_cache_answers_without_the_database_only_when_nothing_is_due(store: SqlStore) -> None:
    from bot.api.tokencache import TokenCache

    tokens = TokenStore(store.engine)
    token, secret = tokens.create("ci", "read")
    clock = [100.0]
    cache = TokenCache(tokens, ttl=5.0, clock=lambda: clock[0])
    assert cache.peek(secret) == (False, None)  # never looked up: the caller must ask the database
    assert cache.authenticate(secret) is not None  # looks it up and writes last_used_at
    assert cache.peek(secret) == (True, cache.authenticate(secret))  # cached, last_used_at fresh: no I/O due
    assert cache.peek("tbk_unknown") == (False, None)
    assert cache.authenticate("tbk_unknown") is None
    assert cache.peek("tbk_unknown") == (True, None)  # unknown secrets are cached too
    tokens.revoke(str(token.id))
    clock[0] += 5.0  # past the ttl: the revocation is seen
    assert cache.peek(secret) == (False, None)
    assert cache.authenticate(secret) is None


def test_tokens_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKETBOT_CONFIG", str(ROOT / "config.yaml"))
    monkeypatch.setenv("TICKETBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("TICKETBOT_DATABASE__URL", raising=False)
    runner = CliRunner()

    created = runner.invoke(main, ["tokens", "create", "--name", "reporting", "--scope", "write"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("tbk_")
    assert "not shown again" in created.stderr

    as_json = runner.invoke(main, ["tokens", "create", "--name", "dashboard", "--json"])
    details = json.loads(as_json.stdout)
    assert details["scope"] == "read" and details["token"].startswith("tbk_")

    listed = json.loads(runner.invoke(main, ["tokens", "list", "--json"]).stdout)
    assert [(t["name"], t["scope"]) for t in listed] == [("reporting", "write"), ("dashboard", "read")]
    assert secret not in runner.invoke(main, ["tokens", "list"]).output

    assert runner.invoke(main, ["tokens", "revoke", "reporting"]).exit_code == 0
    again = runner.invoke(main, ["tokens", "revoke", "reporting"])
    assert again.exit_code == 2 and "no active API token 'reporting'" in again.output
    assert [t["name"] for t in json.loads(runner.invoke(main, ["tokens", "list", "--active", "--json"]).stdout)] == [
        "dashboard"
    ]
    bad = runner.invoke(main, ["tokens", "create", "--name", "x", "--scope", "admin"])
    assert bad.exit_code == 2


def test_the_runtime_mounts_the_api_on_the_bot_http_server(
    sqlite_store: SqlStore, offline_classifier: OfflineClassifier
) -> None:
    config = Config(http={"port": 0}, classifier={"mode": "offline"})
    pipeline = build_pipeline(config, sqlite_store, offline_classifier)
    server = http_component(config, None, store=sqlite_store, pipeline=pipeline)
    assert server is not None
    _, secret = TokenStore(sqlite_store.engine).create("ops", "read")
    server.start()
    try:
        response = httpx.get(f"{server.url}/api/v1/departments", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200 and len(response.json()) == 5
    finally:
        server.stop()
    off = http_component(Config(http={"port": 0}, api={"enabled": False}), None, store=sqlite_store, pipeline=pipeline)
    assert off is not None and "/api/v1" not in {getattr(r, "path", "") for r in off.app.routes}

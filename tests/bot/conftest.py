"""Fixtures for the CLI and runtime: an isolated config and data directory per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Environment for a ticketbot process: the shipped config, a private data dir, free ports, no secrets."""
    env = {
        "TICKETBOT_CONFIG": str(ROOT / "config.yaml"),
        "TICKETBOT_DATA_DIR": str(tmp_path / "var"),
        "TICKETBOT_CLASSIFIER__MODE": "offline",
        "TICKETBOT_EMAIL__SMTP_INTAKE__PORT": "0",
        "TICKETBOT_HTTP__PORT": "0",
    }
    for name in (
        "ANTHROPIC_API_KEY",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "TICKETBOT_DATABASE__URL",
    ):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield {**os.environ, **env}

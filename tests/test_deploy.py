"""The deployment files load and say what the config expects (there is no container engine here to run them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.config import Config

ROOT = Path(__file__).resolve().parents[1]


def test_compose_runs_the_bot_on_a_healthy_postgres() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "ticketbot"}
    assert services["db"]["healthcheck"]["test"]
    assert services["ticketbot"]["depends_on"]["db"]["condition"] == "service_healthy"
    env = services["ticketbot"]["environment"]
    assert env["TICKETBOT_DATABASE__URL"].startswith("postgresql://")
    for name in env:
        if name.startswith("TICKETBOT_"):
            section, _, key = name.removeprefix("TICKETBOT_").lower().partition("__")
            assert section in Config.model_fields, name
            model = Config.model_fields[section].annotation
            assert key in model.model_fields, name  # type: ignore[union-attr]
    # No secret is baked in: each comes from the caller's environment.
    for name in ("ANTHROPIC_API_KEY", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        assert env[name].startswith("${"), name


def test_dockerfile_runs_as_non_root_and_starts_the_bot() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER ticketbot" in text
    assert 'CMD ["ticketbot", "run"]' in text
    assert "ANTHROPIC_API_KEY" not in text and "SLACK_BOT_TOKEN" not in text

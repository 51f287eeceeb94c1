"""Configuration: YAML file, environment overrides, every bad key named, secrets only from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_config, load_secrets
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid_and_uses_the_embedded_defaults() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.department_names == ["IT Support", "HR", "Facilities", "Finance", "General"]
    assert config.database_url == "sqlite:///var/ticketbot.db"
    assert config.classifier.mode == "auto"
    assert config.email.smtp_intake.host == "127.0.0.1" and config.email.smtp_intake.port == 2525
    assert config.email.relay is None
    assert config.outbox_dir == Path("var/outbox")


def test_every_key_in_the_shipped_config_has_a_comment() -> None:
    """Each key has a comment above it, or shares the comment of the keys right above it at the same depth."""
    lines = (ROOT / "config.yaml").read_text().splitlines()
    undocumented = []
    in_departments = False
    for number, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("departments:"):
            in_departments = True
        elif line and not line.startswith((" ", "#")):
            in_departments = False
        if in_departments and line.startswith(" "):
            continue  # department entries are documented once, above the list
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip())
        back = number - 1
        while back >= 0:
            previous = lines[back]
            if previous.strip().startswith("#"):
                break
            same_depth_key = previous.strip() and len(previous) - len(previous.lstrip()) == indent
            if not same_depth_key:
                undocumented.append(f"line {number + 1}: {stripped.split(':')[0]}")
                break
            back -= 1
    assert undocumented == []


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "data_dir: from-file\nclassifier:\n  mode: offline\n")
    monkeypatch.setenv("TICKETBOT_DATA_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("TICKETBOT_DATABASE__URL", "postgresql://postgres@127.0.0.1:5432/test")
    monkeypatch.setenv("TICKETBOT_CLASSIFIER__MODE", "claude")
    monkeypatch.setenv("TICKETBOT_EMAIL__SMTP_INTAKE__PORT", "2626")
    monkeypatch.setenv("TICKETBOT_EMAIL__ALLOWED_SENDER_DOMAINS", '["corp.example", "*"]')
    config = load_config(path)
    assert config.data_dir == tmp_path / "from-env"
    assert config.database_url.startswith("postgresql://")
    assert config.classifier.mode == "claude"
    assert config.email.smtp_intake.port == 2626
    assert config.email.allowed_sender_domains == ["corp.example", "*"]


def test_every_bad_key_is_named_with_the_reason(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "classifier:\n  mode: sometimes\nemail:\n  smtp_intake:\n    port: 99999\n  suport_addresses: []\n"
        "routing:\n  confidence_threshold: 2\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "classifier.mode:" in text and "auto" in text
    assert "email.smtp_intake.port:" in text
    assert "email.suport_addresses: unknown key" in text
    assert "routing.confidence_threshold:" in text


def test_triage_department_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "departments:\n  - name: IT\n  - name: HR\nrouting:\n  triage_department: General\n")
    with pytest.raises(ConfigError, match="triage_department"):
        load_config(path)


def test_slack_channel_must_be_an_id(tmp_path: Path) -> None:
    path = write(tmp_path, "departments:\n  - name: General\n    slack_channel: '#general'\n")
    with pytest.raises(ConfigError, match="channel id"):
        load_config(path)


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_broken_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(write(tmp_path, "database: [unclosed\n"))


def test_secrets_come_from_the_environment_and_refuse_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-real-looking-token")
    secrets = load_secrets()
    assert secrets.slack_bot_token is not None
    assert "xoxb" not in repr(secrets)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "changeme")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY holds a placeholder"):
        load_secrets()


def test_secrets_in_the_file_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write(tmp_path, "slack:\n  bot_token: xoxb-123\n"))

"""The deployment files say what the code expects (there is no container engine here to run them).

Checked: the Dockerfile's stages, user, ports, entrypoint and HEALTHCHECK (whose path the app really serves);
docker-compose.yml's services, healthchecks, start order, ports and replicas; that every TICKETBOT_* name in any of
the files is a key of the config model; and that no secret is baked into the image, the compose file or the example.
"""

from __future__ import annotations

import json
import re
import shlex
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import BaseModel

from bot.http import HttpServer
from bot.runtime import Runtime
from core.config import Config, ImapMailboxConfig, RelayConfig, Secrets, load_config, load_secrets

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = Config()
SECRET_NAMES = {name.upper() for name in Secrets.model_fields}
# Environment variables that hold passwords by default (``password_env``), read by name, not config keys.
PASSWORD_ENVS = {model.model_fields["password_env"].default for model in (ImapMailboxConfig, RelayConfig)}
# Read by core.config.config_path, not a key of the model.
NON_KEYS = {"TICKETBOT_CONFIG"}
SECRETISH = re.compile(r"(PASSWORD|TOKEN|SECRET|API_KEY)$")


# -- helpers ---------------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def env_example(*, commented: bool = False) -> dict[str, str]:
    """NAME=value lines of .env.example (with ``commented``, also the ``# NAME=value`` lines of optional blocks)."""
    pairs: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        text = line.strip()
        if text.startswith("#"):
            if not commented:
                continue
            text = text.lstrip("#").strip()
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", text)
        if match:
            pairs[match.group(1)] = match.group(2)
    return pairs


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation refers to (``RelayConfig | None``, ``list[ImapMailboxConfig]``, …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
    return []


def is_config_key(name: str) -> bool:
    """Whether TICKETBOT_SECTION__KEY names a key of the config model (as pydantic-settings would read it)."""
    path = name.removeprefix("TICKETBOT_").lower().split("__")
    model: type[BaseModel] = Config
    for depth, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if depth < len(path) - 1:
            nested = [m for m in models_in(field.annotation) if typing.get_origin(field.annotation) is not list]
            if not nested:
                return False
            model = nested[0]
    return True


def ticketbot_names(text: str) -> set[str]:
    return set(re.findall(r"\bTICKETBOT_[A-Z0-9_]+", text))


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def container_port(mapping: str) -> int:
    return int(mapping.rsplit(":", 1)[1].split("/")[0])


# -- Dockerfile ------------------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_and_the_runtime_stage_copies_only_the_build() -> None:
    stages = [args for keyword, args in dockerfile() if keyword == "FROM"]
    assert len(stages) >= 2
    assert re.search(r"\bAS build$", stages[0], re.IGNORECASE)
    copies = [args for keyword, args in final_stage() if keyword == "COPY"]
    assert any(args.startswith("--from=build ") for args in copies)
    assert not [keyword for keyword, _ in final_stage() if keyword == "RUN" and "pip install" in _]


def test_the_image_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # Anything after USER runs unprivileged: nothing may need root there.
    after = final_stage()[[k for k, _ in final_stage()].index("USER") :]
    assert not [args for keyword, args in after if keyword == "RUN"]


def test_the_entrypoint_migrates_then_execs_ticketbot_run() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["docker-entrypoint.sh"]
    assert json.loads(stage["CMD"]) == ["run"]
    script = (ROOT / "scripts" / "docker-entrypoint.sh").read_text()
    assert script.startswith("#!/bin/sh")
    assert (ROOT / "scripts" / "docker-entrypoint.sh").stat().st_mode & 0o111
    upgrade, run = script.index("ticketbot db upgrade"), script.index('exec ticketbot "$@"')
    assert upgrade < run  # migrations first; exec so ticketbot is PID 1 and receives SIGTERM


def test_exposed_ports_and_listen_addresses_match_the_config() -> None:
    stage = final_stage()
    exposed = {int(p) for keyword, args in stage if keyword == "EXPOSE" for p in args.split()}
    assert exposed == {DEFAULTS.email.smtp_intake.port, DEFAULTS.http.port}
    env = " ".join(args for keyword, args in stage if keyword == "ENV")
    assert "TICKETBOT_EMAIL__SMTP_INTAKE__HOST=0.0.0.0" in env and "TICKETBOT_HTTP__HOST=0.0.0.0" in env
    for name in ticketbot_names(env):
        assert name in NON_KEYS or is_config_key(name), name


def test_nothing_secret_is_baked_into_the_image() -> None:
    for keyword, args in dockerfile():
        if keyword in {"ENV", "ARG", "LABEL"}:
            for name in re.findall(r"\b([A-Z][A-Z0-9_]*)=", args) + args.split()[:1]:
                assert name not in SECRET_NAMES and not SECRETISH.search(name), f"{keyword} {args}"
        if keyword in {"COPY", "ADD"}:
            sources = [s for s in shlex.split(args) if not s.startswith("--")][:-1]
            assert not [s for s in sources if s.startswith(".env") or s in {".", "./"}], args
    # The build context itself leaves out .env, local state and the virtualenv (an allowlist).
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert [line for line in ignore if line and not line.startswith("#")][0] == "*"  # everything out, then some in
    included = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    assert not included & {".env", "var", ".venv", ".git", "tests"}
    copied = {
        source.rstrip("/")
        for keyword, args in dockerfile()
        if keyword == "COPY" and "--from=" not in args
        for source in [s for s in shlex.split(args) if not s.startswith("--")][:-1]
    }
    assert copied <= included, "a COPY source the .dockerignore leaves out"
    assert all((ROOT / source).exists() for source in copied)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The app exactly as `ticketbot run` composes it (built, not started), on a private SQLite database."""
    for name in ("TICKETBOT_DATABASE__URL", *SECRET_NAMES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TICKETBOT_CONFIG", str(ROOT / "config.yaml"))
    monkeypatch.setenv("TICKETBOT_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("TICKETBOT_CLASSIFIER__MODE", "offline")
    built = Runtime.build(load_config(), load_secrets())
    try:
        yield built
    finally:
        built.store.engine.dispose()


def test_the_healthcheck_asks_a_path_the_app_serves(runtime: Runtime) -> None:
    [healthcheck] = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    options, _, command = healthcheck.partition(" CMD ")
    assert "--start-period=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "HEALTHCHECK", "exec")  # the probe is valid Python
    assert "TICKETBOT_HTTP__PORT" in argv[2] and f"'{DEFAULTS.http.port}'" in argv[2]
    path = re.search(r"http://127\.0\.0\.1:%s(/\w+)", argv[2])
    assert path is not None and path.group(1) == "/readyz"
    http = next(c for c in runtime.components if isinstance(c, HttpServer))
    with TestClient(http.app) as client:
        response = client.get(path.group(1))
    # Not started, the SMTP listener is not accepting: 503 naming it. What matters is the path is served.
    assert response.status_code in {200, 503}
    assert {"database", "outbox", "smtp"} <= set(response.json()["parts"])


# -- docker-compose.yml ----------------------------------------------------------------------------------------


def test_compose_runs_migrations_then_the_bot_on_a_healthy_postgres() -> None:
    services = compose()["services"]
    assert set(services) == {"db", "migrate", "ticketbot", "mail"}
    db, migrate, bot = services["db"], services["migrate"], services["ticketbot"]
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["volumes"] == ["pgdata:/var/lib/postgresql/data"] and "pgdata" in compose()["volumes"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["command"] == ["run"]
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" not in bot  # the image's HEALTHCHECK on /readyz applies
    assert migrate["build"] == bot["build"] == "." and migrate["image"] == bot["image"]


def test_compose_ports_match_the_config_and_replicas_are_documented() -> None:
    bot = compose()["services"]["ticketbot"]
    assert {container_port(p) for p in bot["ports"]} == {DEFAULTS.email.smtp_intake.port, DEFAULTS.http.port}
    assert all(p.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:") for p in bot["ports"])  # loopback unless asked
    assert bot["deploy"]["replicas"] == "${REPLICAS:-1}"
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:")[0]
    assert "REPLICAS=3" in header and "SMTP_PUBLISH=2525-2527" in header  # how ports work with replicas


def test_compose_takes_config_and_secrets_from_the_environment_only() -> None:
    data = compose()
    bot = data["services"]["ticketbot"]
    assert bot["env_file"] == [{"path": ".env", "required": False}]
    env = service_env(bot)
    url = env["TICKETBOT_DATABASE__URL"]
    assert url.startswith("postgresql://ticketbot:${POSTGRES_PASSWORD:?") and url.endswith("@db:5432/ticketbot")
    for service in data["services"].values():
        for name, value in service_env(service).items():
            if name in SECRET_NAMES or SECRETISH.search(name):
                assert value.startswith("${") and ":-" not in value, f"{name} has a literal or default value"
    for name in ticketbot_names((ROOT / "docker-compose.yml").read_text()):
        assert name in PASSWORD_ENVS or is_config_key(name), name
    # Every variable compose reads is explained in the example env file.
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert variables <= set(env_example())


def test_the_mail_profile_is_optional_and_the_example_wires_the_bot_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    mail = services["mail"]
    assert mail["profiles"] == ["mail"]
    assert all("profiles" not in s for name, s in services.items() if name != "mail")
    ports = {container_port(p) for p in mail["ports"]}
    block = env_example(commented=True)
    for name in ("TICKETBOT_EMAIL__IMAP", "TICKETBOT_EMAIL__RELAY"):
        monkeypatch.setenv(name, block[name])
    config = load_config(ROOT / "config.yaml")  # the example's JSON is valid config
    [mailbox] = config.email.imap
    assert config.email.relay is not None
    assert (mailbox.host, config.email.relay.host) == ("mail", "mail")
    assert {mailbox.port, config.email.relay.port} == ports
    assert mailbox.security == "none" and mailbox.password_env in env_example()


# -- .env.example ----------------------------------------------------------------------------------------------


def test_env_example_names_every_secret_and_holds_none(monkeypatch: pytest.MonkeyPatch) -> None:
    example = env_example()
    assert SECRET_NAMES | PASSWORD_ENVS | {"POSTGRES_PASSWORD"} <= set(example)
    for name, value in example.items():
        if name in SECRET_NAMES | PASSWORD_ENVS or SECRETISH.search(name):
            assert value == "", f"{name} has a value in the example"
    for name in ticketbot_names((ROOT / ".env.example").read_text()):
        assert name in PASSWORD_ENVS or is_config_key(name), name
    # The example's settings load as they are.
    for name, value in example.items():
        if name.startswith("TICKETBOT_") and name not in PASSWORD_ENVS:
            monkeypatch.setenv(name, value)
    config = load_config(ROOT / "config.yaml")
    assert config.email.support_addresses == ["support@example.com"]
    assert config.database.pool_size == int(example["TICKETBOT_DATABASE__POOL_SIZE"])

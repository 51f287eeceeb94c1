"""Configuration for every stage of the pipeline: one typed model from config.yaml, overridden by environment.

Precedence: ``TICKETBOT_SECTION__KEY`` environment variables, then the YAML file, then defaults.
Secrets (Slack tokens, passwords, the Anthropic key) are never read from the file: see ``Secrets``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError

DEFAULT_CONFIG_FILE = "config.yaml"
PRIORITIES = ("low", "medium", "high", "urgent")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(Section):
    url: str = ""  # empty: SQLite at <data_dir>/ticketbot.db
    echo: bool = False
    pool_size: int = Field(default=5, ge=1, le=100)


class DepartmentConfig(Section):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    keywords: list[str] = Field(default_factory=list)
    slack_channel: str | None = None
    agents: list[str] = Field(default_factory=list)
    agent_usergroup: str | None = None
    email: str | None = None

    @field_validator("slack_channel")
    @classmethod
    def _channel_id(cls, value: str | None) -> str | None:
        if value is not None and value and not re.fullmatch(r"[CGD][A-Z0-9]{2,20}", value):
            raise ValueError("must be a Slack channel id such as C0123ABCD, not a #name")
        return value or None


class RoutingConfig(Section):
    triage_department: str = "General"
    confidence_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    default_priority: Literal["low", "medium", "high", "urgent"] = "medium"


class ClaudeConfig(Section):
    model: str = "claude-haiku-4-5"
    max_tokens: int = Field(default=400, ge=50, le=4096)
    timeout_seconds: float = Field(default=6.0, gt=0, le=120)
    max_retries: int = Field(default=2, ge=0, le=10)
    concurrency: int = Field(default=8, ge=1, le=128)
    daily_token_budget: int = Field(default=2_000_000, ge=0)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_reset_seconds: float = Field(default=60.0, gt=0)


class ClassifierConfig(Section):
    mode: Literal["auto", "claude", "offline"] = "auto"
    deadline_seconds: float = Field(default=20.0, gt=0, le=300)
    model_path: str = ""  # empty: <data_dir>/model/offline.joblib when trained, else the shipped model
    claude: ClaudeConfig = ClaudeConfig()


class SmtpIntakeConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    lmtp: bool = False
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)


class ImapMailboxConfig(Section):
    name: str
    host: str
    port: int = Field(default=993, ge=1, le=65535)
    security: Literal["ssl", "starttls", "none"] = "ssl"
    username: str
    auth: Literal["password", "xoauth2"] = "password"
    password_env: str = "TICKETBOT_IMAP_PASSWORD"  # name of the env var holding the password
    token_env: str | None = None  # XOAUTH2 access token from this env var ...
    token_command: str | None = None  # ... or from the stdout of this command
    folder: str = "INBOX"
    processed_folder: str = "Ticketbot/Processed"
    failed_folder: str = "Ticketbot/Failed"
    after_fetch: Literal["move", "flag"] = "move"
    idle: bool = True
    poll_seconds: float = Field(default=60.0, ge=1)
    import_backlog: bool = False
    batch_size: int = Field(default=100, ge=1, le=1000)


class RelayConfig(Section):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password_env: str = "TICKETBOT_SMTP_PASSWORD"
    timeout_seconds: float = Field(default=30.0, gt=0)


class EmailConfig(Section):
    support_addresses: list[str] = Field(default_factory=lambda: ["support@example.com"])
    allowed_sender_domains: list[str] = Field(default_factory=lambda: ["example.com"])
    from_name: str = "Support"
    smtp_intake: SmtpIntakeConfig = SmtpIntakeConfig()
    imap: list[ImapMailboxConfig] = Field(default_factory=list)
    relay: RelayConfig | None = None
    attachment_store_bytes: int = Field(default=5 * 1024 * 1024, ge=0)
    max_auto_replies_per_hour: int = Field(default=5, ge=0)
    max_auto_replies_per_day: int = Field(default=20, ge=0)
    bounce_suppression_days: int = Field(default=60, ge=0)
    max_similar_tickets_per_hour: int = Field(default=5, ge=0)
    reopen_window_days: int = Field(default=14, ge=0)

    @field_validator("support_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an email address")
        return [a.lower() for a in value]

    @field_validator("allowed_sender_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.lower().lstrip("@") for d in value]


class SlackConfig(Section):
    mode: Literal["socket", "http"] = "socket"
    api_url: str = "https://slack.com/api/"
    triage_channel: str | None = None
    admin_channel: str | None = None
    admins: list[str] = Field(default_factory=list)


class HttpConfig(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class ApiConfig(Section):
    """The REST API under /api/v1 on the HTTP server (issue 7)."""

    enabled: bool = True
    # Per-token token bucket, per replica: ``burst`` requests at once, refilled at ``rate_limit_per_second``.
    rate_limit_per_second: float = Field(default=20.0, ge=0)  # 0 turns rate limiting off
    rate_limit_burst: int = Field(default=40, ge=1)
    token_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    max_page_size: int = Field(default=200, ge=1, le=1000)


class DigestConfig(Section):
    enabled: bool = True
    timezone: str = "Europe/London"
    department_cron: str = "0 9 * * mon-fri"
    admin_cron: str = "0 9 * * *"
    misfire_grace_seconds: int = Field(default=3600, ge=0)
    stale_days: int = Field(default=3, ge=1)
    admin_emails: list[str] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA timezone such as Europe/London") from None
        return value

    @field_validator("department_cron", "admin_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        # The full check (APScheduler's parser) runs when the bot builds the schedule; catch the common slip here.
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} needs five fields: minute hour day month day-of-week")
        return value

    @field_validator("admin_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an email address")
        return value


class OutboxConfig(Section):
    max_attempts: int = Field(default=8, ge=1, le=100)
    base_delay_seconds: float = Field(default=5.0, gt=0)
    max_delay_seconds: float = Field(default=3600.0, gt=0)
    poll_seconds: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=50, ge=1)


class HealthConfig(Section):
    """Thresholds for ``/readyz`` and how fresh ``/metrics`` database figures are."""

    database_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    imap_stale_polls: float = Field(default=3.0, ge=1)
    outbox_max_pending: int = Field(default=1000, ge=0)
    outbox_max_age_seconds: float = Field(default=900.0, ge=0)
    metrics_cache_seconds: float = Field(default=5.0, ge=0, le=300)


class WorkerConfig(Section):
    threads: int = Field(default=4, ge=1, le=64)
    # Processes that decode and classify email for the threads (bot.prepare); unset: one when there is a second
    # core, none otherwise. 0 does everything in-process.
    processes: int | None = Field(default=None, ge=0, le=64)
    poll_seconds: float = Field(default=0.5, gt=0)
    max_attempts: int = Field(default=3, ge=1)


DEFAULT_DEPARTMENTS = [
    DepartmentConfig(name="IT Support", description="Computers, accounts, passwords, software, network, printers."),
    DepartmentConfig(name="HR", description="Leave, payroll questions, benefits, contracts, onboarding."),
    DepartmentConfig(name="Facilities", description="Buildings, desks, heating, cleaning, repairs, parking."),
    DepartmentConfig(name="Finance", description="Invoices, expenses, reimbursements, purchase orders, budgets."),
    DepartmentConfig(name="General", description="Anything else; triage for unclear requests."),
]


class Config(BaseSettings):
    """The whole configuration: ``config.yaml`` overridden by ``TICKETBOT_SECTION__KEY`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="TICKETBOT_", env_nested_delimiter="__", extra="forbid", frozen=True, env_ignore_empty=True
    )

    data_dir: Path = Path("var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    instance_id: str = "ticketbot"
    database: DatabaseConfig = DatabaseConfig()
    departments: list[DepartmentConfig] = Field(default_factory=lambda: list(DEFAULT_DEPARTMENTS))
    routing: RoutingConfig = RoutingConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    email: EmailConfig = EmailConfig()
    slack: SlackConfig = SlackConfig()
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()
    digests: DigestConfig = DigestConfig()
    outbox: OutboxConfig = OutboxConfig()
    worker: WorkerConfig = WorkerConfig()
    health: HealthConfig = HealthConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs (see load_config); env must beat it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _departments_consistent(self) -> Config:
        names = [d.name for d in self.departments]
        if not names:
            raise ValueError("departments: at least one department is required")
        lowered = [n.lower() for n in names]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"departments: names must be unique, got {names}")
        if self.routing.triage_department.lower() not in lowered:
            raise ValueError(
                f"routing.triage_department: {self.routing.triage_department!r} is not one of the departments {names}"
            )
        return self

    @property
    def department_names(self) -> list[str]:
        return [d.name for d in self.departments]

    def department(self, name: str) -> DepartmentConfig | None:
        """The department called ``name`` (case-insensitive), or None."""
        for dept in self.departments:
            if dept.name.lower() == name.strip().lower():
                return dept
        return None

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'ticketbot.db'}"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def model_path(self) -> Path:
        return (
            Path(self.classifier.model_path)
            if self.classifier.model_path
            else self.data_dir / "model" / "offline.joblib"
        )


class Secrets(BaseSettings):
    """Secrets, read from the environment only and never logged (SecretStr hides them in repr)."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    anthropic_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _no_placeholders(self) -> Secrets:
        for name, value in self:
            if isinstance(value, SecretStr) and re.fullmatch(
                r"(?i)(x+|changeme|todo|placeholder|<.*>|\.\.\.)", value.get_secret_value().strip()
            ):
                raise ValueError(f"{name.upper()} holds a placeholder, not a real secret")
        return self


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to read: ``--config``, else ``TICKETBOT_CONFIG``, else ./config.yaml."""
    return Path(explicit or os.environ.get("TICKETBOT_CONFIG") or DEFAULT_CONFIG_FILE)


def _read_yaml(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"{path}: no such config file")
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per bad key, ``section.key: why``, for ``ticketbot config check``."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (typo?)"
        lines.append(f"{key}: {message}")
    return lines


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Load and validate the config; raises ConfigError naming every bad key."""
    explicit = path is not None or "TICKETBOT_CONFIG" in os.environ
    file = config_path(path)
    data = _read_yaml(file, required=explicit)
    data.update(overrides)
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"{file}: invalid configuration\n" + "\n".join(describe_validation_error(exc))) from exc


def load_secrets() -> Secrets:
    """Read secrets from the environment; raises ConfigError on placeholders."""
    try:
        return Secrets()
    except ValidationError as exc:
        raise ConfigError("invalid secrets in the environment\n" + "\n".join(describe_validation_error(exc))) from exc

"""Fault-suite harness: real `ticketbot run` replicas as subprocesses, the clients that feed them, the invariant check.

Everything the fault tests (``tests/faults/``), the soak (``scripts/soak.py``) and the replica bench
(``bench/replicas.py``) share lives here, so the three measure the same system the same way:

- ``PrivatePostgres``: a PostgreSQL cluster of our own (``initdb`` + ``pg_ctl`` on a free port in a temp dir, run as
  the ``postgres`` user), password-protected, which tests may stop and start; never the machine's shared server.
- ``Cluster`` / ``Replica``: N ``ticketbot run`` processes on one database, one IMAP mailbox and one data dir (so the
  local outbox folder is shared), each with its own SMTP and HTTP listener on a free port read back from its log.
- ``SmtpSender`` (retries on 4xx and dropped connections, as an MTA does), ``SlackSender`` (signed ``/ticket``
  to any replica), ``MaildirDrop`` (delivers into the Dovecot maildir like an MDA, no IMAP session needed).
- ``check_invariants``: one ticket per request, one acknowledgement per ticket, nothing parked or left over.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, text

from storage.db import make_engine
from tests.fakes.slack_api import BOT_TOKEN as FAKE_BOT_TOKEN
from tests.fakes.slack_api import TEAM_ID, FakeSlackAPI, signed_headers

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
FULL = os.environ.get("FAULTS_FULL") == "1"

# Distinctive secrets: every replica gets them, and the secrets test greps every log for each of them.
SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-faultsuite-BOTTOKEN-7f3a9c",
    "SLACK_SIGNING_SECRET": "faultsuite-SIGNING-c41d8e2b",
    "ANTHROPIC_API_KEY": "sk-ant-faultsuite-APIKEY-5b72e0",
    "FAULTS_IMAP_PASSWORD": "faultsuite-IMAPPW-91ce44",
    "FAULTS_SMTP_PASSWORD": "faultsuite-SMTPPW-0a6f1d",
}
DB_PASSWORD = "faultsuite-DBPW-e83b27"
ALL_SECRETS = (*SECRETS.values(), DB_PASSWORD)

CHANNELS = {"IT Support": "C0IT", "HR": "C0HR", "Facilities": "C0FAC", "Finance": "C0FIN", "General": "C0GEN"}
TRIAGE = "C0TRIAGE"
# The acknowledgement to the requester, per channel: the one outbox row each ticket must have exactly once.
ACK_KIND = {"email": "email", "slack": "slack_respond"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``check()`` until it is truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of ``pid`` in KiB, from /proc (VmRSS, VmHWM); (0, 0) once it is gone."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


# -- PostgreSQL --------------------------------------------------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1:``port``, password-protected (scram), stoppable at will.

    initdb refuses to run as root, so the binaries run as ``postgres`` (``runuser``) in a temp dir it owns.
    fsync is off: the suite tests the bot's behaviour when the server goes away, not the disk's.
    """

    def __init__(self, password: str = DB_PASSWORD) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN}/initdb is missing (apt-get install postgresql-15)")
        self.password = password
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ticketbot-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(password)
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
            "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip()}\n{self.log_tail()}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the database host goes away."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "faults") -> str:
        """A new empty database; returns its URL (with the password: pass it by environment only)."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin = make_engine(self.url())
        try:
            with admin.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)


# -- mail -----------------------------------------------------------------------------------------------------------


def request_mail(key: str, index: int, *, subject: str | None = None, body: str | None = None) -> bytes:
    """A person's request with a Message-ID ``<key@faults.example.com>`` from its own sender (no reply limit)."""
    msg = EmailMessage()
    msg["From"] = f"Employee {index} <employee{index}@example.com>"
    msg["To"] = "support@example.com"
    msg["Subject"] = subject if subject is not None else f"Laptop will not connect to the VPN ({key})"
    msg["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC) + timedelta(seconds=index))
    msg["Message-ID"] = f"<{key}@faults.example.com>"
    text_ = f"Hello,\n\nsince this morning my laptop cannot connect to the VPN; request {key}.\n\nThanks,\n"
    msg.set_content(body or text_)
    return msg.as_bytes()


class MaildirDrop:
    """Delivers mail straight into a Dovecot user's maildir (tmp/ then rename into new/), as an MDA does.

    Thousands of messages land in a second, and no IMAP session of ours competes with the pollers; Dovecot
    notices them on the pollers' next SELECT or through IDLE (inotify).
    """

    def __init__(self, home: Path, owner: tuple[int, int] | None) -> None:
        self.maildir = home / "Maildir"
        self._owner = owner
        self._seq = 0
        self._lock = threading.Lock()
        for sub in ("", "tmp", "new", "cur"):
            path = self.maildir / sub
            path.mkdir(parents=True, exist_ok=True)
            self._chown(path)

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, *self._owner)

    def deliver(self, raw: bytes) -> None:
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns()}.M{self._seq}P{os.getpid()}.faults"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(raw.replace(b"\r\n", b"\n"))  # maildir files use the local line ending
        self._chown(tmp)
        tmp.rename(self.maildir / "new" / name)

    def inbox_count(self) -> int:
        """Messages still in INBOX (new/ and cur/)."""
        return sum(1 for sub in ("new", "cur") for _ in (self.maildir / sub).iterdir())


def imap_account(server: Any, *, poll_seconds: float = 2) -> tuple[Any, MaildirDrop, dict[str, Any]]:
    """A fresh mailbox on ``server`` (a tests.fakes.dovecot.Dovecot) with the suite's distinctive password: the
    account, its maildir, and the replicas' ``email.imap`` entry for it."""
    import grp
    import pwd

    user = server.add_user(f"faults{next(_accounts)}", SECRETS["FAULTS_IMAP_PASSWORD"])
    owner = None
    if os.geteuid() == 0:
        owner = (pwd.getpwnam(server.mail_user).pw_uid, grp.getgrnam(server.mail_group).gr_gid)
    drop = MaildirDrop(server.root / "home" / user.username, owner)
    config = {
        "name": "support",
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": user.username,
        "password_env": "FAULTS_IMAP_PASSWORD",
        "poll_seconds": poll_seconds,
        "idle": True,
        "import_backlog": True,
        "batch_size": 100,
    }
    return user, drop, config


_accounts = itertools.count(1)


# -- replicas ----------------------------------------------------------------------------------------------------


def departments() -> list[dict[str, Any]]:
    from core.config import DEFAULT_DEPARTMENTS

    return [
        {"name": d.name, "description": d.description, "slack_channel": CHANNELS[d.name]} for d in DEFAULT_DEPARTMENTS
    ]


def replica_config(
    *,
    imap: Mapping[str, Any] | None,
    slack_api_url: str | None,
    relay: Mapping[str, Any] | None = None,
    classifier: Mapping[str, Any] | None = None,
    worker_threads: int = 4,
    max_message_bytes: int = 25 * 1024 * 1024,
) -> dict[str, Any]:
    """The YAML every replica of a cluster reads; per-replica ports, the data dir and secrets come by environment."""
    return {
        "log_level": "INFO",
        "instance_id": "ticketbot",
        "departments": departments(),
        "classifier": {"mode": "offline", "deadline_seconds": 10, **(classifier or {})},
        "email": {
            "support_addresses": ["support@example.com"],
            "allowed_sender_domains": ["example.com"],
            "smtp_intake": {"enabled": True, "host": "127.0.0.1", "port": 0, "max_message_bytes": max_message_bytes},
            "imap": [imap] if imap else [],
            "relay": dict(relay) if relay else None,
            # Every request comes from its own sender, but keep the loop brake out of the way regardless.
            "max_auto_replies_per_hour": 1_000_000,
            "max_auto_replies_per_day": 1_000_000,
        },
        "slack": {"mode": "http", "api_url": slack_api_url or "http://127.0.0.1:9/api/", "triage_channel": TRIAGE},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "digests": {"enabled": False},
        # Short backoff so outages end in seconds; many attempts so a minute-long outage parks nothing.
        "outbox": {"max_attempts": 50, "base_delay_seconds": 0.5, "max_delay_seconds": 4, "poll_seconds": 0.2},
        "worker": {"threads": worker_threads, "poll_seconds": 0.2, "max_attempts": 3},
    }


_SMTP_PORT = re.compile(r"SMTP intake listening on [\d.]+:(\d+)")
_HTTP_PORT = re.compile(r"http: listening on http://[\d.]+:(\d+)")


class Replica:
    """One ``ticketbot run`` process; restarts append to the same log file."""

    def __init__(self, name: str, env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.smtp_port = 0
        self.http_port = 0
        self.started_at = 0.0
        self.kills: list[float] = []  # time.time() of each kill -9
        self._offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self._offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                # Not "-m bot.cli": that imports bot.cli twice (as __main__), which modules registering
                # commands on it do not survive; this is what the `ticketbot` console script runs.
                [sys.executable, "-c", "from bot.cli import main; main()", "run"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started_at = time.time()
        self.smtp_port = self.http_port = 0

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            new = self.log.read_bytes()[self._offset :].decode(errors="replace")
            if "ticketbot is running" not in new:
                return False
            self.smtp_port = int(_SMTP_PORT.findall(new)[-1])
            self.http_port = int(_HTTP_PORT.findall(new)[-1])
            return True

        wait_until(ready, timeout, f"{self.name} to start")

    def kill9(self) -> None:
        if self.alive:
            self.kills.append(time.time())
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait; kill -9 when it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def rss(self) -> tuple[int, int]:
        return rss_kib(self.pid) if self.alive else (0, 0)

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class Cluster:
    """N replicas sharing a database, a data dir (and so the local outbox folder) and a config file."""

    root: Path
    db_url: str
    config: dict[str, Any]
    replicas: list[Replica] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    drop_env: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "var"
        self.config_file = self.root / "config.yaml"
        self.config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._engine: Engine | None = None

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TICKETBOT_") and k not in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
        }
        return {
            **base,
            **{k: v for k, v in SECRETS.items() if k not in self.drop_env},
            "PYTHONPATH": str(ROOT),
            "TICKETBOT_CONFIG": str(self.config_file),
            "TICKETBOT_DATA_DIR": str(self.data_dir),
            "TICKETBOT_DATABASE__URL": self.db_url,  # the password travels by environment, never in the file
            **self.extra_env,
        }

    def add(self, count: int = 1) -> list[Replica]:
        added = []
        for _ in range(count):
            name = f"replica{len(self.replicas) + 1}"
            replica = Replica(name, self.env(), self.root / f"{name}.log")
            self.replicas.append(replica)
            added.append(replica)
        return added

    def start(self, replicas: Sequence[Replica] | None = None) -> None:
        """Start (all at once, as an orchestrator would) and wait until each says it is running."""
        chosen = list(replicas if replicas is not None else self.replicas)
        for replica in chosen:
            replica.start()
        for replica in chosen:
            replica.wait_ready()

    def stop(self) -> dict[str, int | None]:
        codes = {r.name: r.stop() for r in self.replicas}
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        return codes

    def stop_engine(self) -> None:
        """Drop the harness's own connections (before the database is stopped under them)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def running(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive and r.smtp_port]

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.db_url, pool_size=2)
        return self._engine

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def expire_claims(self) -> tuple[int, int]:
        """Stand in for the 5-minute claim lease running out: release rows a killed replica had claimed.

        Returns how many (inbound rows, outbox items) were still claimed.

        Only call this with no replica running: a live worker's claim must never be released under it.
        """
        assert not any(r.alive for r in self.replicas), "expire claims only while every replica is stopped"
        with self.engine.begin() as conn:
            inbound = conn.execute(
                text(
                    "UPDATE inbound_messages SET locked_until = NULL WHERE status = 'received' AND locked_until > now()"
                )
            ).rowcount
            outbox = conn.execute(
                text("UPDATE outbox SET locked_until = NULL WHERE status = 'pending' AND locked_until > now()")
            ).rowcount
        return int(inbound), int(outbox)

    def backlog(self) -> tuple[int, int]:
        """(inbound rows still received, outbox rows still pending)."""
        inbound = self.scalar("SELECT count(*) FROM inbound_messages WHERE status = 'received'") or 0
        outbox = self.scalar("SELECT count(*) FROM outbox WHERE status = 'pending'") or 0
        return int(inbound), int(outbox)

    def wait_drained(self, expected_inbound: int, timeout: float) -> None:
        """Wait until ``expected_inbound`` rows exist, none is waiting and no outbox item is pending."""

        def drained() -> bool:
            total = self.scalar("SELECT count(*) FROM inbound_messages") or 0
            return total >= expected_inbound and self.backlog() == (0, 0)

        try:
            wait_until(drained, timeout, f"{expected_inbound} inbound messages processed and the outbox empty", 0.5)
        except AssertionError as exc:
            total = self.scalar("SELECT count(*) FROM inbound_messages")
            stuck = self.query(
                "SELECT kind, status, attempts, last_error, locked_until, next_attempt_at FROM outbox "
                "WHERE status = 'pending' LIMIT 5"
            )
            raise AssertionError(
                f"{exc}: {total} stored, backlog (inbound, outbox) = {self.backlog()}; pending outbox e.g. {stuck}"
            ) from None

    def logs(self) -> list[Path]:
        return sorted(self.root.glob("*.log"))


# -- clients ---------------------------------------------------------------------------------------------------


@dataclass
class SendResult:
    key: str
    accepted_at: float = 0.0  # time.time() of the 250 (0: never accepted)
    codes: list[int] = field(default_factory=list)  # every answer and failure (0: connection failed)
    final: int = 0


class SmtpSender:
    """Sends like an MTA: tries a replica, and on a 4xx, a refused or a dropped connection tries again later
    (on any replica); a 5xx is final. ``send_all`` uses a few threads, as an MTA uses a few connections."""

    def __init__(self, cluster: Cluster, *, retry_delay: float = 0.3, give_up_after: float = 600) -> None:
        self.cluster = cluster
        self.retry_delay = retry_delay
        self.give_up_after = give_up_after
        self.results: dict[str, SendResult] = {}
        self._lock = threading.Lock()

    def send(self, key: str, raw: bytes) -> SendResult:
        result = SendResult(key)
        with self._lock:
            self.results[key] = result
        # On the wire every line ends in CRLF; smtplib sends bytes as given, and bare LFs make one huge "line".
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        deadline = time.monotonic() + self.give_up_after
        while time.monotonic() < deadline:
            targets = self.cluster.running()
            if not targets:
                time.sleep(self.retry_delay)
                continue
            replica = random.choice(targets)
            try:
                with smtplib.SMTP("127.0.0.1", replica.smtp_port, timeout=30) as client:
                    code, _ = client.ehlo()
                    client.mail("sender@example.com")
                    client.rcpt("support@example.com")
                    code, _ = client.data(raw)
            except smtplib.SMTPResponseException as exc:
                code = exc.smtp_code
            except (OSError, smtplib.SMTPException):
                code = 0  # refused, reset or cut mid-transaction: unknown outcome, so send again
            result.codes.append(code)
            if 200 <= code < 300:
                result.accepted_at, result.final = time.time(), code
                return result
            if code >= 500:
                result.final = code
                return result
            time.sleep(self.retry_delay)
        return result

    def send_all(self, mails: Iterable[tuple[str, bytes]], *, threads: int = 6, rate: float | None = None) -> None:
        """Send every mail; ``rate`` (mails per second) spreads them out instead of sending as fast as possible."""
        queue = list(mails)
        lock = threading.Lock()
        start, sent = time.monotonic(), 0

        def work() -> None:
            nonlocal sent
            while True:
                with lock:
                    if not queue:
                        return
                    key, raw = queue.pop(0)
                    due = start + sent / rate if rate else 0.0
                    sent += 1
                if due:
                    time.sleep(max(0.0, due - time.monotonic()))
                self.send(key, raw)

        pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()


class AuthSlackAPI(FakeSlackAPI):
    """The fake Slack Web API, accepting the suite's distinctive bot token, with timed outages.

    ``outage(seconds, status=500)`` answers every Web API call and response_url post with that status until the
    time is up (429 carries Retry-After: 1), then behaves again.
    """

    def __init__(self) -> None:
        super().__init__()
        self._outage_until = 0.0
        self._outage_status = 500
        self.outage_answers = 0
        for name, channel in CHANNELS.items():
            self.add_channel(channel, name.lower().replace(" ", "-"))
        self.add_channel(TRIAGE, "triage")

    def __enter__(self) -> AuthSlackAPI:
        self.start()
        return self

    def outage(self, seconds: float, status: int = 500) -> None:
        self._outage_status, self._outage_until = status, time.monotonic() + seconds

    def handle(self, method: str, params: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if time.monotonic() < self._outage_until:
            self.outage_answers += 1
            if self._outage_status == 429:
                return 429, {"Retry-After": "1"}, {"ok": False, "error": "ratelimited"}
            return self._outage_status, {}, "upstream unavailable"
        if headers.get("authorization") == f"Bearer {SECRETS['SLACK_BOT_TOKEN']}":
            headers = {**headers, "authorization": f"Bearer {FAKE_BOT_TOKEN}"}
        return super().handle(method, params, headers)


def slack_cards(api: FakeSlackAPI) -> int:
    """Department-channel cards the fake Slack holds (thread replies excluded)."""
    return sum(len(api.posts(channel)) for channel in [*CHANNELS.values(), TRIAGE])


class SlackSender:
    """Posts signed ``/ticket`` commands to any running replica's ``/slack/events``; retries (same trigger_id)
    until one answers 200 with "Got it", the acknowledgement Slack shows the user (an ack saying the request could
    not be saved counts as a refusal: the person would run the command again)."""

    def __init__(self, cluster: Cluster, api: FakeSlackAPI) -> None:
        self.cluster = cluster
        self.api = api
        self.results: dict[str, SendResult] = {}
        self.acked_by: dict[str, str] = {}  # trigger id -> replica name that answered 200
        self._lock = threading.Lock()

    def body(self, trigger_id: str, text_: str, user: str) -> str:
        return urllib.parse.urlencode(
            {
                "token": "legacy",
                "team_id": TEAM_ID,
                "team_domain": "test",
                "channel_id": "C0ASK",
                "channel_name": "ask",
                "user_id": user,
                "user_name": user.lower(),
                "command": "/ticket",
                "text": text_,
                "api_app_id": "A0APP",
                "response_url": self.api.response_url(trigger_id),
                "trigger_id": trigger_id,
            }
        )

    def send(self, trigger_id: str, text_: str, user: str = "U0ANA", give_up_after: float = 300) -> SendResult:
        result = SendResult(trigger_id)
        with self._lock:
            self.results[trigger_id] = result
        body = self.body(trigger_id, text_, user)
        deadline = time.monotonic() + give_up_after
        while time.monotonic() < deadline:
            targets = self.cluster.running()
            if not targets:
                time.sleep(0.3)
                continue
            replica = random.choice(targets)
            headers = signed_headers(body, secret=SECRETS["SLACK_SIGNING_SECRET"])
            request = urllib.request.Request(
                f"http://127.0.0.1:{replica.http_port}/slack/events", data=body.encode(), headers=headers
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    code = response.status
                    # "could not save your request": acknowledged but refused, so the person runs it again.
                    if b"could not save" in response.read():
                        code = 503
            except urllib.error.HTTPError as exc:
                code = exc.code
            except OSError:
                code = 0
            result.codes.append(code)
            if code == 200:
                result.accepted_at, result.final = time.time(), 200
                with self._lock:
                    self.acked_by[trigger_id] = replica.name
                return result
            time.sleep(0.3)
        return result


# -- IMAP observation --------------------------------------------------------------------------------------------


class SessionSampler:
    """Samples, every ``interval`` seconds, the IMAP sessions Dovecot has open for one user and the lease row.

    Proves "one poller per mailbox at a time" from the server's side: ``max_sessions`` must stay 1 (the harness
    delivers mail through the maildir, so every session it sees is a poller's).
    """

    def __init__(self, dovecot: Any, username: str, cluster: Cluster, interval: float = 0.5) -> None:
        self.dovecot = dovecot
        self.username = username
        self.cluster = cluster
        self.interval = interval
        self.samples: list[tuple[float, int, str | None]] = []  # (time, sessions, lease owner)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="imap-sampler")

    def sessions(self) -> int:
        try:
            out = self.dovecot.doveadm("who", "-1", self.username)
        except Exception:  # noqa: BLE001 - Dovecot restarting: no sample
            return -1
        return sum(1 for line in out.splitlines()[1:] if line.split() and line.split()[0] == self.username)

    def owner(self) -> str | None:
        try:
            rows = self.cluster.query("SELECT owner, expires_at FROM leases WHERE name LIKE 'imap:%'")
        except Exception:  # noqa: BLE001 - the database may be the thing under test
            return None
        now = datetime.now(UTC)
        live = [r.owner for r in rows if r.expires_at and r.expires_at.replace(tzinfo=UTC) > now]
        return live[0] if live else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.time(), self.sessions(), self.owner()))

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def max_sessions(self) -> int:
        return max((s for _, s, _ in self.samples), default=0)


def holder_pid(owner: str | None) -> int | None:
    """The pid in a lease owner ``<instance>:<host>:<pid>``."""
    if not owner:
        return None
    tail = owner.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# -- invariants -----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What ``check_invariants`` found; ``violations`` must be empty."""

    requests: int = 0
    tickets: int = 0
    violations: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail_message(self) -> str:
        shown = self.violations[:20]
        more = f"\n... and {len(self.violations) - 20} more" if len(self.violations) > 20 else ""
        return "invariant violations:\n" + "\n".join(shown) + more


def check_invariants(
    cluster: Cluster,
    *,
    email_keys: Iterable[str] = (),
    slack_triggers: Iterable[str] = (),
    expect_parked: Iterable[str] = (),
    outbox_files: bool = True,
) -> Report:
    """Nothing lost, nothing twice, for the requests the harness sent (and acknowledged) and nothing else.

    - every request has exactly one inbound row, processed, with exactly one ticket (``expect_parked``: Message-IDs
      that must be parked instead); no ticket exists that no request asked for;
    - every ticket has exactly one acknowledgement row (email reply or Slack respond), sent; nothing pending or
      parked in the outbox; with no relay, exactly one ``.eml`` file per email ticket in the shared outbox folder;
    - no inbound row is left received, and none is parked unless expected.
    """
    report = Report()
    email_ids = {f"<{k}@faults.example.com>": k for k in email_keys}
    triggers = {f"slack:trigger:{t}": t for t in slack_triggers}
    parked_ids = {f"<{k}@faults.example.com>" for k in expect_parked}
    report.requests = len(email_ids) + len(triggers)
    rows = cluster.query(
        "SELECT id, channel, dedupe_key, message_id, status, ticket_id, last_error FROM inbound_messages"
    )
    by_request: dict[str, list[Any]] = {}
    for row in rows:
        key = row.message_id if row.channel == "email" else row.dedupe_key
        by_request.setdefault(key, []).append(row)
    for key in [*email_ids, *triggers]:
        found = by_request.get(key, [])
        if len(found) != 1:
            report.violations.append(f"request {key}: {len(found)} inbound rows (want 1)")
            continue
        row = found[0]
        want = "parked" if key in parked_ids else "processed"
        if row.status != want:
            report.violations.append(f"request {key}: inbound {row.id} is {row.status} (want {want}): {row.last_error}")
    unknown = [k for k in by_request if k not in email_ids and k not in triggers]
    if unknown:
        report.violations.append(f"{len(unknown)} inbound rows nobody sent, e.g. {unknown[:3]}")
    for status, count in cluster.query("SELECT status, count(*) FROM inbound_messages GROUP BY status"):
        report.figures[f"inbound_{status}"] = int(count)
    if report.figures.get("inbound_received"):
        report.violations.append(f"{report.figures['inbound_received']} inbound rows never processed")
    parked = [r for r in rows if r.status == "parked" and (r.message_id not in parked_ids)]
    for row in parked[:10]:
        report.violations.append(f"inbound {row.id} ({row.message_id or row.dedupe_key}) parked: {row.last_error}")

    tickets = cluster.query("SELECT id, inbound_id, channel FROM tickets")
    report.tickets = len(tickets)
    per_inbound = Counter(t.inbound_id for t in tickets)
    twice = [i for i, n in per_inbound.items() if n > 1]
    if twice:
        report.violations.append(f"inbound rows with several tickets: {twice[:10]}")
    want_tickets = report.requests - len(parked_ids)
    if report.tickets != want_tickets:
        report.violations.append(f"{report.tickets} tickets for {want_tickets} requests")

    acks = cluster.query("SELECT ticket_id, kind, status, count(*) AS n FROM outbox GROUP BY ticket_id, kind, status")
    ack_count: Counter[int] = Counter()
    for row in acks:
        if row.status == "pending":
            report.violations.append(f"ticket {row.ticket_id}: {row.n} {row.kind} item(s) still pending")
        elif row.status == "parked":
            report.violations.append(f"ticket {row.ticket_id}: {row.n} {row.kind} item(s) parked")
    ack_rows = cluster.query(
        "SELECT t.id, count(o.id) AS n FROM tickets t LEFT JOIN outbox o ON o.ticket_id = t.id AND o.status = 'sent' "
        "AND o.kind = CASE WHEN t.channel = 'email' THEN 'email' ELSE 'slack_respond' END GROUP BY t.id"
    )
    for row in ack_rows:
        ack_count[row.id] = int(row.n)
        if row.n != 1:
            report.violations.append(f"ticket {row.id}: {row.n} acknowledgements sent (want 1)")
    for status, count in cluster.query("SELECT status, count(*) FROM outbox GROUP BY status"):
        report.figures[f"outbox_{status}"] = int(count)
    if outbox_files:
        email_tickets = {t.id for t in tickets if t.channel == "email"}
        files = list(cluster.outbox_dir.glob("*.eml")) if cluster.outbox_dir.exists() else []
        per_ticket = Counter(int(f.name.split("-")[1]) for f in files if f.name.split("-")[1].isdigit())
        report.figures["outbox_files"] = len(files)
        missing = [t for t in email_tickets if per_ticket[t] != 1]
        if missing:
            report.violations.append(f"{len(missing)} email tickets without exactly one .eml file, e.g. {missing[:5]}")
    return report


def latencies(cluster: Cluster) -> list[float]:
    """Seconds from receipt (the inbound row's received_at) to the requester's acknowledgement being sent."""
    rows = cluster.query(
        "SELECT EXTRACT(EPOCH FROM (o.sent_at - i.received_at)) AS s FROM inbound_messages i "
        "JOIN tickets t ON t.inbound_id = i.id JOIN outbox o ON o.ticket_id = t.id AND o.status = 'sent' "
        "AND o.kind = CASE WHEN t.channel = 'email' THEN 'email' ELSE 'slack_respond' END"
    )
    return sorted(float(r.s) for r in rows)


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def grep_secrets(paths: Iterable[Path], secrets: Sequence[str] = ALL_SECRETS) -> list[str]:
    """``file: secret`` for every secret found in any of ``paths`` (files, or directories searched recursively)."""
    found = []
    for path in paths:
        files: Iterator[Path] = (p for p in path.rglob("*") if p.is_file()) if path.is_dir() else iter([path])
        for file in files:
            with contextlib.suppress(OSError):
                data = file.read_bytes()
                for secret in secrets:
                    if secret.encode() in data:
                        found.append(f"{file}: {secret[:12]}…")
    return found


def dump(report: Report) -> str:
    return json.dumps({"requests": report.requests, "tickets": report.tickets, **report.figures}, sort_keys=True)

"""Test server for the IMAP intake stage: a private Debian Dovecot on loopback, with users, folders and helpers.

Each ``Dovecot`` is its own instance (own config, runtime dir, log and mail under a temp dir), never the system
service. Mail lives in maildirs owned by ``nobody`` when the tests run as root, because Dovecot refuses to give
mail access as uid 0; as a normal user everything runs as that user. Fixtures: ``dovecot`` (one server per test
session) and ``mailbox`` (a fresh user per test, so tests never see each other's mail).
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from imapclient import IMAPClient

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
ENSURE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-dovecot.sh"
REQUIRE_DOVECOT = os.environ.get("TICKETBOT_REQUIRE_DOVECOT") == "1"
START_TIMEOUT = 10.0
POOL_SIZE = 64
POOL_PASSWORD = "secret"


class DovecotError(RuntimeError):
    """The private Dovecot could not be started, stopped or driven; the message carries its log tail."""


@dataclass(frozen=True, slots=True)
class MailUser:
    """One IMAP account on the private server."""

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class StoredMail:
    """One message as the server holds it."""

    uid: int
    flags: frozenset[bytes]
    raw: bytes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the usual, slightly racy, bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie (kill(pid, 0) succeeds for zombies, /proc/<pid>/stat says Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def dovecot_unavailable() -> str | None:
    """Why no Dovecot can be run here (None when it can)."""
    if DOVECOT.exists():
        return None
    return f"{DOVECOT} is missing; run {ENSURE_SCRIPT} (as root it installs dovecot-imapd)"


def _account(names: tuple[str, ...], lookup: str) -> str:
    for name in names:
        with contextlib.suppress(KeyError):
            (pwd.getpwnam if lookup == "user" else grp.getgrnam)(name)
            return name
    raise DovecotError(f"none of the {lookup}s {names} exists")


class Dovecot:
    """A private Dovecot 2.3 listening on 127.0.0.1:``port`` (a free port unless given)."""

    host = "127.0.0.1"

    def __init__(self, *, port: int | None = None, extra_config: str = "") -> None:
        self.port = port or free_port()
        self.extra_config = extra_config
        # Not under pytest's tmp_path: that tree is mode 0700 for root, and Dovecot's mail processes run as nobody.
        self.root = Path(tempfile.mkdtemp(prefix=f"ticketbot-dovecot-{self.port}-"))
        self.root.chmod(0o755)
        self.passwd = self.root / "passwd"
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.base_dir = self.root / "run"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self.mail_user = _account(("nobody",), "user")
            self.mail_group = _account(("nogroup", "nobody"), "group")
        else:
            self.mail_user = pwd.getpwuid(os.geteuid()).pw_name
            self.mail_group = grp.getgrgid(os.getegid()).gr_name
        self.passwd.write_text("")
        self.passwd.chmod(0o644)
        self.config.write_text(self._config_text())
        # Dovecot re-reads passwd-file at most once a second, so accounts added while it runs may stay unknown
        # for up to a second: the accounts tests ask for are written before the first login instead.
        self._pool = [self._write_user(f"user{n}", POOL_PASSWORD) for n in range(1, POOL_SIZE + 1)]
        self._pool.reverse()
        self._users = itertools.count(POOL_SIZE + 1)

    # -- lifecycle --------------------------------------------------------------------------------

    def _config_text(self) -> str:
        uid = pwd.getpwnam(self.mail_user).pw_uid
        gid = grp.getgrnam(self.mail_group).gr_gid
        if self._as_root:
            internal = _account(("dovecot", "nobody"), "user")
            login = _account(("dovenull", "nobody"), "user")
            users = f"default_internal_user = {internal}\ndefault_login_user = {login}\n"
            chroot = ""
        else:
            users = (
                f"default_internal_user = {self.mail_user}\ndefault_internal_group = {self.mail_group}\n"
                f"default_login_user = {self.mail_user}\n"
            )
            # An unprivileged master cannot chroot its login and anvil processes.
            chroot = "  chroot =\n"
        return f"""\
instance_name = ticketbot-test-{self.port}
base_dir = {self.base_dir}
state_dir = {self.root / "state"}
log_path = {self.log}
info_log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
# XOAUTH2 checks the bearer token like a password (mech-oauth2 calls verify_plain), so with a passwd-file
# the account's password doubles as its access token: a real SASL XOAUTH2 exchange without an identity provider.
auth_mechanisms = plain login xoauth2
# A wrong password is answered at once; the default 2 s delay would only slow the tests down.
auth_failure_delay = 0
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
{users}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd}
}}
service imap-login {{
{chroot}  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
# No anvil penalty socket for auth: a test's wrong password must not slow every later login from 127.0.0.1
# (Dovecot delays logins from an IP by 2^n seconds after failures, and loopback is no exception).
service anvil {{
{chroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
mail_fsync = never
imap_idle_notify_interval = 1 secs
mail_max_userip_connections = 200
{self.extra_config}
"""

    def start(self) -> None:
        """Start the server and wait for its ``* OK`` greeting."""
        # The master daemonises and keeps the inherited descriptors: pipes here would never see EOF.
        errors = self.root / "start.err"
        with errors.open("w") as stderr:
            code = subprocess.call(
                [str(DOVECOT), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                timeout=START_TIMEOUT,
            )
        if code != 0:
            raise DovecotError(f"dovecot did not start: {errors.read_text().strip()}\n{self.log_tail()}")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(1024).startswith(b"* OK"):
                    return
            time.sleep(0.02)
        self.stop()
        raise DovecotError(f"dovecot on port {self.port} sent no greeting\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server by its master.pid; wait until the port is closed and the master has exited.

        Sessions are kicked first: Dovecot's imap processes outlive a SIGTERM to the master and would keep
        serving their connections, so a "restart" would not be one for a client that is idling. The master
        closes its listeners before it exits, and may then linger as a zombie for a few seconds: a zombie
        counts as gone, and its master.pid is removed so the next start does not take it for a live master.
        """
        pid_file = self.base_dir / "master.pid"
        try:
            pid: int | None = int(pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pid = None
        if pid is not None:
            with contextlib.suppress(DovecotError, subprocess.TimeoutExpired):
                self.doveadm("kick", "*")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while port_open(self.host, self.port) or (pid is not None and _running(pid)):
            if time.monotonic() > deadline:
                raise DovecotError(f"dovecot on port {self.port} did not stop\n{self.log_tail()}")
            time.sleep(0.02)
        pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # -- users and mail ---------------------------------------------------------------------------

    def add_user(self, username: str | None = None, password: str = POOL_PASSWORD) -> MailUser:
        """An account with an empty INBOX: a prepared one, or a new one (which costs up to a second to appear)."""
        if username is None and password == POOL_PASSWORD and self._pool:
            return self._pool.pop()
        user = self._write_user(username or f"user{next(self._users)}", password)
        # Wait for the next second: Dovecot's next lookup then sees the changed passwd-file.
        time.sleep(1.02 - time.time() % 1)
        return user

    def _write_user(self, username: str, password: str) -> MailUser:
        home = self.root / "home" / username
        home.mkdir(parents=True)
        home.parent.chmod(0o755)
        if self._as_root:
            shutil.chown(home, self.mail_user, self.mail_group)
        uid = pwd.getpwnam(self.mail_user).pw_uid
        gid = grp.getgrnam(self.mail_group).gr_gid
        with self.passwd.open("a") as passwd:
            passwd.write(f"{username}:{{PLAIN}}{password}:{uid}:{gid}::{home}::\n")
        return MailUser(username, password)

    @contextlib.contextmanager
    def client(self, user: MailUser) -> Iterator[IMAPClient]:
        """A logged-in imapclient connection, logged out afterwards."""
        imap = IMAPClient(self.host, self.port, ssl=False, timeout=10)
        try:
            imap.login(user.username, user.password)
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()
            with contextlib.suppress(Exception):
                imap.shutdown()

    def append(self, user: MailUser, folder: str, raw: bytes, flags: tuple[bytes, ...] = ()) -> int:
        """APPEND ``raw`` to ``folder`` (created when missing); returns the new UID (UIDPLUS APPENDUID)."""
        with self.client(user) as imap:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            response = imap.append(folder, raw, flags=flags)
        # b"[APPENDUID <uidvalidity> <uid>] Append completed."
        return int(response.split(b"]")[0].split()[-1])

    def messages(self, user: MailUser, folder: str = "INBOX") -> list[StoredMail]:
        """Every message in ``folder`` (empty when it does not exist), read with BODY.PEEK so flags stay as they are."""
        with self.client(user) as imap:
            if not imap.folder_exists(folder):
                return []
            imap.select_folder(folder, readonly=True)
            uids = imap.search(["ALL"])
            if not uids:
                return []
            fetched = imap.fetch(uids, ["FLAGS", "BODY.PEEK[]"])
        return [StoredMail(u, frozenset(fetched[u][b"FLAGS"]), bytes(fetched[u][b"BODY[]"])) for u in sorted(fetched)]

    def folders(self, user: MailUser) -> list[str]:
        with self.client(user) as imap:
            return sorted(name for _flags, _sep, name in imap.list_folders())

    def uidvalidity(self, user: MailUser, folder: str = "INBOX") -> int:
        with self.client(user) as imap:
            return int(imap.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def change_uidvalidity(self, user: MailUser, folder: str = "INBOX") -> int:
        """Give ``folder`` a new, higher UIDVALIDITY and return it; the messages and their UIDs stay.

        ``doveadm mailbox update --uid-validity`` rewrites the value in Dovecot's index and uidlist
        in one step, works for INBOX (which cannot be deleted and recreated) and is what a restored
        or rebuilt mailbox looks like to a client. Open sessions on the folder are disconnected by
        Dovecot, which a poller must survive too.
        """
        new = self.uidvalidity(user, folder) + 1000
        self.doveadm("mailbox", "update", "-u", user.username, "--uid-validity", str(new), folder)
        got = self.uidvalidity(user, folder)
        if got != new:
            raise DovecotError(f"UIDVALIDITY of {folder} is {got}, not {new}")
        return new

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(
            [str(DOVEADM), "-c", str(self.config), *args], capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise DovecotError(f"doveadm {' '.join(args)} failed: {result.stderr.strip()}\n{self.log_tail()}")
        return result.stdout


def _skip_or_fail(reason: str) -> None:
    if REQUIRE_DOVECOT:
        pytest.fail(f"TICKETBOT_REQUIRE_DOVECOT=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def running_dovecot(*, port: int | None = None, extra_config: str = "") -> Iterator[Dovecot]:
    """A started private Dovecot, stopped and deleted on exit; skips (or fails when required) without Dovecot."""
    reason = dovecot_unavailable()
    if reason:
        _skip_or_fail(reason)
    server = Dovecot(port=port, extra_config=extra_config)
    try:
        server.start()
    except DovecotError as exc:
        server.remove()
        _skip_or_fail(str(exc))
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session", name="dovecot")
def dovecot_server() -> Iterator[Dovecot]:
    """One private Dovecot for the whole test session (per xdist worker)."""
    with running_dovecot() as server:
        yield server


@pytest.fixture(name="mailbox")
def fresh_mailbox(dovecot: Dovecot) -> MailUser:
    """A fresh account on the session's Dovecot, so every test starts with an empty INBOX."""
    return dovecot.add_user()

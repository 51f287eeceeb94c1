"""Receive stage for IMAP: ImapPoller commits each new message raw to the inbound store, then acknowledges it.

Exactly-once *effect*: a message is fetched at least once and stored idempotently (its dedupe key, and its
(mailbox, uidvalidity, uid), are unique), and the server is only touched (MOVE to the processed folder, or
``\\Seen`` in keep-in-place mode) after the row is committed. A crash in between re-fetches the message on the
next poll and the store answers "already have it". docs/imap.md explains the choices.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from imapclient import SEEN, IMAPClient
from imapclient import exceptions as imap_errors

from core.config import ImapMailboxConfig
from core.errors import ConfigError, StorageError, TicketbotError
from core.inbound import InboundRecord, InboundStatus, Received
from core.message import Channel
from intake.identity import email_identity

log = logging.getLogger(__name__)

# A dead poller's mailbox is taken over within this time; a live one renews it every poll, every batch and
# every LEASE_TTL/3 while idling.
LEASE_TTL = timedelta(seconds=60)
# After this many failed downloads of one UID the message is moved to the failed folder (Mailman's
# MAX_BAK_COUNT, Zammad's unprocessable_mail): one poison message must not be retried forever.
MAX_DOWNLOAD_ATTEMPTS = 3
# IDLE is only a latency optimisation (pushes get lost: mjs/imapclient#150, tpitale/mail_room#10), so it is
# re-issued at least this often and every poll_seconds, whichever comes first.
IDLE_MAX_SECONDS = 300.0
# How long one idle_check may block: bounds how late a stop request is noticed.
IDLE_CHECK_SECONDS = 1.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
TOKEN_COMMAND_TIMEOUT = 30.0


class MailboxError(TicketbotError):
    """Raised when the IMAP server refuses a command (NO/BAD) or answers nonsense; the poll is retried later."""


class MailboxUnavailable(MailboxError):
    """Raised when the IMAP server cannot be reached, or the connection drops or times out; the poller reconnects
    with backoff."""


class MailboxLoginError(MailboxError):
    """Raised when the server rejects the credentials (wrong password, expired or revoked token) or no XOAUTH2
    token could be obtained; recorded as the mailbox's ``last_error`` so a person is told at once."""


@contextmanager
def _imap_errors(action: str) -> Iterator[None]:
    """Translate imapclient and socket errors into the core error tree (httpx's map_httpcore_exceptions)."""
    try:
        yield
    except imap_errors.LoginError as exc:
        raise MailboxLoginError(f"{action}: {exc}") from exc
    except (imap_errors.IMAPClientAbortError, OSError, EOFError) as exc:
        # OSError covers refused connections, resets, TLS failures and socket timeouts.
        raise MailboxUnavailable(f"{action}: {type(exc).__name__}: {exc}") from exc
    except imap_errors.IMAPClientError as exc:
        raise MailboxError(f"{action}: {exc}") from exc


# -- the client seam ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """What SELECT says about the intake folder."""

    uidvalidity: int
    uidnext: int
    exists: int


class MailboxClient(Protocol):
    """The few IMAP operations the poller needs, on one logged-in connection. Every method raises MailboxError
    (MailboxUnavailable when the connection is gone); UIDs are always UIDs, never sequence numbers."""

    def has_capability(self, name: str) -> bool:
        """Whether the server advertised ``name`` (``IDLE``, ``MOVE``, ``UIDPLUS``) after login."""
        ...

    def select(self, folder: str) -> FolderInfo:
        """SELECT ``folder`` read-write."""
        ...

    def search_from(self, first_uid: int) -> list[int]:
        """Ascending UIDs >= ``first_uid`` of the messages not flagged ``\\Deleted`` in the selected folder."""
        ...

    def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE per UID; UIDs that no longer exist are absent."""
        ...

    def fetch_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The raw header block per UID, without setting ``\\Seen``."""
        ...

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The whole raw message per UID (``BODY.PEEK[]``, so ``\\Seen`` is not set); missing UIDs are absent."""
        ...

    def ensure_folder(self, folder: str) -> None:
        """Create ``folder`` unless it exists."""
        ...

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move the messages out of the selected folder into ``folder``."""
        ...

    def mark_seen(self, uids: Sequence[int]) -> None:
        """Add ``\\Seen`` to the messages."""
        ...

    def idle_start(self) -> None:
        """Enter IDLE on the selected folder; only idle_check and idle_done may follow."""
        ...

    def idle_check(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for server pushes; True when new mail arrived."""
        ...

    def idle_done(self) -> None:
        """Leave IDLE."""
        ...

    def close(self) -> None:
        """Log out and close the connection; never raises."""
        ...


class ImapMailboxClient:
    """MailboxClient over imapclient; build it with ``connect_mailbox``."""

    def __init__(self, imap: IMAPClient) -> None:
        self._imap = imap
        self._folders: set[str] = set()
        self._idling = False
        self._broken = False
        with self._errors("CAPABILITY"):
            self._capabilities = frozenset(c.decode().upper() for c in imap.capabilities())

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            with _imap_errors(action):
                yield
        except MailboxUnavailable:
            self._broken = True
            raise

    def has_capability(self, name: str) -> bool:
        return name.upper() in self._capabilities

    def select(self, folder: str) -> FolderInfo:
        with self._errors(f"SELECT {folder}"):
            info = self._imap.select_folder(folder)
            uidnext = info.get(b"UIDNEXT")
            if uidnext is None:  # optional before IMAP4rev2; STATUS always has it
                uidnext = self._imap.folder_status(folder, [b"UIDNEXT"])[b"UIDNEXT"]
        if b"UIDVALIDITY" not in info:
            raise MailboxError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        return FolderInfo(int(info[b"UIDVALIDITY"]), int(uidnext), int(info.get(b"EXISTS", 0)))

    def search_from(self, first_uid: int) -> list[int]:
        with self._errors("UID SEARCH"):
            uids = self._imap.search(["UID", f"{first_uid}:*", "UNDELETED"])
        # "n:*" always matches the newest message, even when its UID is below n (RFC 3501 6.4.8).
        return sorted(int(u) for u in uids if u >= first_uid)

    def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        data = self._fetch(uids, "RFC822.SIZE")
        return {uid: int(item[b"RFC822.SIZE"]) for uid, item in data.items() if b"RFC822.SIZE" in item}

    def fetch_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        data = self._fetch(uids, "BODY.PEEK[HEADER]")
        return {uid: bytes(item[b"BODY[HEADER]"]) for uid, item in data.items() if item.get(b"BODY[HEADER]")}

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        # Never "RFC822" or "BODY[]": both set \Seen at fetch time, before the message is stored.
        data = self._fetch(uids, "BODY.PEEK[]")
        return {uid: bytes(item[b"BODY[]"]) for uid, item in data.items() if item.get(b"BODY[]") is not None}

    def _fetch(self, uids: Sequence[int], item: str) -> dict[int, dict[bytes, Any]]:
        if not uids:
            return {}
        wanted = set(uids)
        with self._errors(f"UID FETCH {item}"):
            data = self._imap.fetch(list(uids), [item])
        # Unsolicited FETCH responses (another client changing flags) may ride along: keep only what was asked.
        return {int(uid): values for uid, values in data.items() if uid in wanted}

    def ensure_folder(self, folder: str) -> None:
        if folder in self._folders:
            return
        with self._errors(f"CREATE {folder}"):
            if not self._imap.folder_exists(folder):
                try:
                    self._imap.create_folder(folder)
                except imap_errors.IMAPClientError:
                    # Another poller or a person may have created it a moment ago.
                    if not self._imap.folder_exists(folder):
                        raise
                with suppress(imap_errors.IMAPClientError):
                    self._imap.subscribe_folder(folder)  # so people see it in their mail client
        self._folders.add(folder)

    def move(self, uids: Sequence[int], folder: str) -> None:
        if not uids:
            return
        with self._errors(f"UID MOVE to {folder}"):
            if self.has_capability("MOVE"):
                self._imap.move(list(uids), folder)
                return
            # RFC 6851's fallback. The copy comes first: a crash after it leaves a duplicate in the processed
            # folder, never a lost message.
            self._imap.copy(list(uids), folder)
            self._imap.delete_messages(list(uids), silent=True)
            if self.has_capability("UIDPLUS"):
                self._imap.uid_expunge(list(uids))
            else:
                self._imap.expunge()

    def mark_seen(self, uids: Sequence[int]) -> None:
        if uids:
            with self._errors("UID STORE +FLAGS \\Seen"):
                self._imap.add_flags(list(uids), [SEEN], silent=True)

    def idle_start(self) -> None:
        with self._errors("IDLE"):
            self._imap.idle()
        self._idling = True

    def idle_check(self, timeout: float) -> bool:
        with self._errors("IDLE"):
            responses = self._imap.idle_check(timeout=timeout)
        for response in responses:
            if response and response[0] == b"BYE":
                self._broken = True
                text = b" ".join(part for part in response[1:] if isinstance(part, bytes))
                raise MailboxUnavailable(f"IDLE: the server closed the connection: {text.decode(errors='replace')}")
        return any(len(r) >= 2 and r[1] == b"EXISTS" for r in responses)

    def idle_done(self) -> None:
        self._idling = False
        with self._errors("DONE"):
            self._imap.idle_done()

    def close(self) -> None:
        # A broken or idling connection cannot LOGOUT cleanly, and waiting for its timeout helps nobody.
        if not self._broken and not self._idling:
            with suppress(imap_errors.IMAPClientError, OSError, EOFError):
                self._imap.logout()
        with suppress(imap_errors.IMAPClientError, OSError, EOFError):
            self._imap.shutdown()


def mailbox_secret(config: ImapMailboxConfig, environ: Mapping[str, str] | None = None) -> str:
    """The password, or the XOAUTH2 access token, for ``config``.

    The password comes from the environment variable named by ``password_env``; a token from ``token_env``
    or else from the stdout of ``token_command`` (split like a shell command line, run without a shell). The
    command runs on every connection, so it should cache and refresh tokens itself.

    Raises:
        ConfigError: the variable is unset or empty, or XOAUTH2 has neither token source.
        MailboxLoginError: the token command failed or printed nothing.
    """
    env = os.environ if environ is None else environ
    if config.auth == "password":
        password = env.get(config.password_env, "")
        if not password:
            raise ConfigError(
                f"email.imap[{config.name}].password_env: environment variable {config.password_env} is not set"
            )
        return password
    if config.token_env:
        token = env.get(config.token_env, "").strip()
        if not token:
            raise ConfigError(
                f"email.imap[{config.name}].token_env: environment variable {config.token_env} is not set"
            )
        return token
    if not config.token_command:
        raise ConfigError(f"email.imap[{config.name}]: auth xoauth2 needs token_env or token_command")
    try:
        result = subprocess.run(
            shlex.split(config.token_command),
            capture_output=True,
            text=True,
            timeout=TOKEN_COMMAND_TIMEOUT,
            check=False,
            env=dict(env),
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise MailboxLoginError(f"email.imap[{config.name}].token_command failed: {exc}") from exc
    token = result.stdout.strip()
    if result.returncode != 0 or not token:
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}, no token"])[-1]
        raise MailboxLoginError(f"email.imap[{config.name}].token_command failed: {detail}")
    return token


def connect_mailbox(
    config: ImapMailboxConfig, *, environ: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> ImapMailboxClient:
    """Connect (``ssl``, ``starttls`` or plain ``none``) and log in by password or XOAUTH2.

    ``timeout`` bounds connecting and every read. Raises ConfigError, MailboxLoginError or MailboxUnavailable.
    """
    secret = mailbox_secret(config, environ)
    context = ssl.create_default_context() if config.security != "none" else None
    where = f"{config.host}:{config.port}"
    with _imap_errors(f"{where}: connect"):
        imap = IMAPClient(config.host, config.port, ssl=config.security == "ssl", ssl_context=context, timeout=timeout)
    try:
        if config.security == "starttls":
            with _imap_errors(f"{where}: STARTTLS"):
                imap.starttls(context)
        with _imap_errors(f"{where}: login as {config.username}"):
            if config.auth == "xoauth2":
                imap.oauth2_login(config.username, secret)
            else:
                imap.login(config.username, secret)
        return ImapMailboxClient(imap)
    except BaseException:
        with suppress(imap_errors.IMAPClientError, OSError, EOFError):
            imap.shutdown()
        raise


# -- the poller -----------------------------------------------------------------------------------


class MailboxStore(Protocol):
    """The part of the store the poller uses (``storage.store.SqlStore`` has it)."""

    def receive_many(self, records: Sequence[InboundRecord]) -> list[Received]:
        """Commit raw inbound messages in one transaction; ``created=False`` for those already stored."""
        ...

    def acquire_lease(self, name: str, owner: str, *, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take or renew the lease ``name``; False while another owner holds an unexpired one."""
        ...

    def release_lease(self, name: str, owner: str) -> None: ...

    def mailbox_state(self, mailbox: str) -> dict[str, Any] | None:
        """folder, uidvalidity, last_uid, last_poll_at, last_success_at, last_error; None before the first poll."""
        ...

    def save_mailbox_state(self, mailbox: str, **values: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll did. ``leased`` is False when another poller holds the mailbox (nothing else happened).

    fetched: bodies downloaded; stored: new rows; duplicates: rows that already existed (re-fetch after a crash,
    same mail via SMTP); moved: moved to the processed folder; flagged: ``\\Seen`` added (keep-in-place mode);
    failed: moved to the failed folder (oversized, or MAX_DOWNLOAD_ATTEMPTS failed downloads).
    """

    leased: bool = True
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    moved: int = 0
    flagged: int = 0
    failed: int = 0


@dataclass
class _Tally:
    fetched: int = 0
    stored: int = 0
    duplicates: int = 0
    moved: int = 0
    flagged: int = 0
    failed: int = 0

    def result(self, *, leased: bool = True) -> PollResult:
        return PollResult(leased, self.fetched, self.stored, self.duplicates, self.moved, self.flagged, self.failed)


@dataclass
class _Download:
    bodies: dict[int, bytes] = field(default_factory=dict)
    poison: list[int] = field(default_factory=list)  # gave up on these: move them to the failed folder
    lost: MailboxUnavailable | None = None  # the connection died part-way; the bodies got so far are good


class _LeaseLost(Exception):
    """Another poller took the mailbox while this one was working (it stalled for longer than the lease)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ImapPoller:
    """Drains one mailbox's folder into the inbound store; run one per configured mailbox, each in its own thread.

    Args:
        config: the mailbox.
        store: where raw messages, the cursor and the lease live.
        owner: this process's identity in the lease (for example ``<instance_id>:<pid>``).
        on_received: called after new messages are committed, to wake the processor; must not block.
        clock: the time used for leases and timestamps (tests pass a fake one).
        client_factory: opens a logged-in MailboxClient; ``connect_mailbox`` by default.
        lease_ttl: how long the mailbox stays ours without a renewal.
        max_message_bytes: larger messages are parked (headers only) and moved to the failed folder unread.
        backoff_initial, backoff_max: seconds to wait after the first failure, and at most, in ``run``.
    """

    def __init__(
        self,
        *,
        config: ImapMailboxConfig,
        store: MailboxStore,
        owner: str,
        on_received: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        client_factory: Callable[[ImapMailboxConfig], MailboxClient] | None = None,
        lease_ttl: timedelta = LEASE_TTL,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.config = config
        self._store = store
        self._owner = owner
        self._on_received = on_received
        self._clock = clock
        self._client_factory = client_factory or connect_mailbox
        self._lease_ttl = lease_ttl
        self._max_bytes = max_message_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._lease = f"imap:{config.name}"
        self._client: MailboxClient | None = None
        # Failed downloads per (uidvalidity, uid), kept in memory: a restart forgives them (see docs/imap.md).
        self._attempts: dict[tuple[int, int], int] = {}
        # UIDs whose batch fetch lost the connection: fetched one by one until each succeeds, so a message that
        # kills the connection is charged alone instead of blocking its whole batch forever.
        self._suspects: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._seen: tuple[int, int] | None = None  # (UIDVALIDITY, UIDNEXT) as of the last poll

    # -- one cycle --------------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """Take or renew the lease, then store and acknowledge every new message in the folder.

        Raises MailboxError, StorageError or ConfigError after recording it as the mailbox's ``last_error``;
        the connection is dropped and the next call starts afresh.
        """
        started = self._clock()
        tally = _Tally()
        try:
            if not self._store.acquire_lease(self._lease, self._owner, ttl=self._lease_ttl, now=started):
                self._disconnect()  # another poller owns the mailbox: do not hold a connection for nothing
                return tally.result(leased=False)
            self._drain(tally)
            self._store.save_mailbox_state(
                self.config.name,
                folder=self.config.folder,
                last_poll_at=started,
                last_success_at=self._clock(),
                last_error=None,
            )
        except _LeaseLost:
            log.warning("imap %s: lost the lease to another poller mid-poll; stopping", self.config.name)
            self._disconnect()
            return tally.result(leased=False)
        except TicketbotError as exc:
            self._disconnect()
            self._record_failure(started, exc)
            raise
        except BaseException:
            self._disconnect()
            raise
        return tally.result()

    def _drain(self, tally: _Tally) -> None:
        client, folder = self._select()
        cursor = self._cursor(folder)
        candidates = [uid for uid in client.search_from(cursor + 1) if uid > cursor]
        # What this poll has seen; mail beyond it that the server announced while we were busy is caught before IDLE.
        self._seen = (folder.uidvalidity, max([folder.uidnext, *(uid + 1 for uid in candidates)]))
        done: set[int] = set()
        for start in range(0, len(candidates), self.config.batch_size):
            if self._stop.is_set():
                break
            if start:  # the first batch runs right after acquire_lease
                self._renew_lease()
            batch = candidates[start : start + self.config.batch_size]
            self._process_batch(client, folder.uidvalidity, batch, done, tally)
            advanced = _done_prefix(candidates, done, cursor)
            if advanced > cursor:
                self._store.save_mailbox_state(self.config.name, folder=self.config.folder, last_uid=advanced)
                cursor = advanced

    def _select(self) -> tuple[MailboxClient, FolderInfo]:
        reused = self._client is not None
        client = self._connect()
        try:
            return client, client.select(self.config.folder)
        except MailboxUnavailable:
            if not reused:
                raise
        # A kept-open connection may have been closed by the server (autologout, restart): reconnect once.
        self._disconnect()
        client = self._connect()
        return client, client.select(self.config.folder)

    def _cursor(self, folder: FolderInfo) -> int:
        """The highest UID already dealt with; sets it up on first contact and after a UIDVALIDITY change."""
        name = self.config.name
        state = self._store.mailbox_state(name)
        if state is None or state.get("uidvalidity") is None or state.get("folder") != self.config.folder:
            # First contact: the backlog is everything below UIDNEXT, and it is left alone unless asked for
            # (Zammad's first run imported and answered a whole inbox: zammad/zammad#539).
            cursor = 0 if self.config.import_backlog else folder.uidnext - 1
            log.info(
                "imap %s: first poll of %s (UIDVALIDITY %d); %s",
                name,
                self.config.folder,
                folder.uidvalidity,
                "importing the backlog"
                if self.config.import_backlog
                else f"ignoring the {folder.exists} messages below UID {folder.uidnext}",
            )
        elif state["uidvalidity"] != folder.uidvalidity:
            # The UIDs we knew mean nothing now: rescan the whole folder; dedupe keys make re-fetches harmless.
            log.warning(
                "imap %s: UIDVALIDITY of %s changed from %s to %d; rescanning the folder",
                name,
                self.config.folder,
                state["uidvalidity"],
                folder.uidvalidity,
            )
            cursor = 0
        else:
            return int(state.get("last_uid") or 0)
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] == folder.uidvalidity}
        self._suspects = {k for k in self._suspects if k[0] == folder.uidvalidity}
        self._store.save_mailbox_state(name, folder=self.config.folder, uidvalidity=folder.uidvalidity, last_uid=cursor)
        return cursor

    def _process_batch(
        self, client: MailboxClient, uidvalidity: int, batch: list[int], done: set[int], tally: _Tally
    ) -> None:
        # Sizes first: an oversized message is never downloaded (Zammad's MessageValidator).
        sizes = client.fetch_sizes(batch)
        oversized = [uid for uid in batch if sizes.get(uid, 0) > self._max_bytes]
        wanted = [uid for uid in batch if uid in sizes and uid not in oversized]
        download = self._download(client, uidvalidity, wanted)
        tally.fetched += len(download.bodies)

        committed: list[int] = []
        created = 0
        failure: StorageError | None = None
        stored = [uid for uid in wanted if uid in download.bodies]
        try:
            # One transaction for the batch: a fraction of the cost of one per message, and all-or-nothing,
            # so a failure leaves every message of the batch in the folder for the next poll.
            results = self._store.receive_many([self._record(download.bodies[uid], uidvalidity, uid) for uid in stored])
        except StorageError as exc:
            failure = exc
        else:
            committed = stored
            created = sum(r.created for r in results)
        tally.stored += created
        tally.duplicates += len(committed) - created
        if created:
            self._notify()
        if download.lost is not None:
            # What was downloaded is committed; it is acknowledged on the next poll, which finds it stored.
            raise download.lost

        # Only now, with the rows committed, touch the server; a crash before this line re-fetches and dedupes.
        self._acknowledge(client, committed, tally)
        done.update(committed)
        if failure is not None:
            raise failure
        parked = self._park_oversized(client, uidvalidity, oversized, sizes)
        rejected = download.poison + parked
        if rejected:
            client.ensure_folder(self.config.failed_folder)
            client.move(rejected, self.config.failed_folder)
            tally.failed += len(rejected)
            done.update(rejected)
            for uid in download.poison:
                self._attempts.pop((uidvalidity, uid), None)
                self._suspects.discard((uidvalidity, uid))

    def _download(self, client: MailboxClient, uidvalidity: int, uids: list[int]) -> _Download:
        """Bodies of ``uids``; UIDs that have failed MAX_DOWNLOAD_ATTEMPTS times are given up instead."""
        result = _Download()
        result.poison = [u for u in uids if self._attempts.get((uidvalidity, u), 0) >= MAX_DOWNLOAD_ATTEMPTS]
        together = [u for u in uids if u not in result.poison and (uidvalidity, u) not in self._suspects]
        alone = [u for u in uids if u not in result.poison and (uidvalidity, u) in self._suspects]
        if together:
            try:
                result.bodies = client.fetch_bodies(together)
            except MailboxUnavailable:
                self._suspects.update((uidvalidity, u) for u in together)
                raise
            except MailboxError as exc:
                log.info("imap %s: batch fetch failed (%s); fetching one by one", self.config.name, exc)
            alone += [u for u in together if u not in result.bodies]
        # Messages that failed before go last, so a message that kills the connection cannot starve the others.
        for uid in sorted(alone, key=lambda u: (self._attempts.get((uidvalidity, u), 0), u)):
            key = (uidvalidity, uid)
            try:
                raw = client.fetch_bodies([uid]).get(uid)
                if raw is None:
                    raise MailboxError(f"UID FETCH BODY.PEEK[]: no body for UID {uid}")
            except MailboxError as exc:
                attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
                log.warning(
                    "imap %s: download of UID %d failed (attempt %d of %d): %s",
                    self.config.name, uid, attempts, MAX_DOWNLOAD_ATTEMPTS, exc,
                )  # fmt: skip
                if isinstance(exc, MailboxUnavailable):
                    result.lost = exc
                    break
                if attempts >= MAX_DOWNLOAD_ATTEMPTS:
                    result.poison.append(uid)
                continue
            result.bodies[uid] = raw
            self._attempts.pop(key, None)
            self._suspects.discard(key)
        for uid in result.poison:
            log.error(
                "imap %s: UID %d failed %d downloads; moving it to %s",
                self.config.name, uid, MAX_DOWNLOAD_ATTEMPTS, self.config.failed_folder,
            )  # fmt: skip
        result.poison.sort()
        return result

    def _park_oversized(
        self, client: MailboxClient, uidvalidity: int, uids: list[int], sizes: Mapping[int, int]
    ) -> list[int]:
        """Store the headers of each oversized message as a parked row (so a person sees it); returns the UIDs."""
        if not uids:
            return []
        headers = client.fetch_headers(uids)
        for uid in uids:
            reason = (
                f"message is {sizes[uid]} bytes, over the {self._max_bytes}-byte limit; only its header "
                f"is stored, the message is in the IMAP folder {self.config.failed_folder}"
            )
            log.warning("imap %s: UID %d: %s", self.config.name, uid, reason)
            if uid in headers:
                self._store.receive_many(
                    [self._record(headers[uid], uidvalidity, uid, status=InboundStatus.PARKED, reason=reason)]
                )
        return uids

    def _record(
        self,
        raw: bytes,
        uidvalidity: int,
        uid: int,
        *,
        status: InboundStatus = InboundStatus.RECEIVED,
        reason: str | None = None,
    ) -> InboundRecord:
        dedupe_key, message_id = email_identity(raw)
        return InboundRecord(
            channel=Channel.EMAIL,
            dedupe_key=dedupe_key,
            payload=raw,
            received_at=self._clock(),
            message_id=message_id,
            mailbox=self.config.name,
            uidvalidity=uidvalidity,
            uid=uid,
            status=status,
            last_error=reason,
        )

    def _acknowledge(self, client: MailboxClient, uids: list[int], tally: _Tally) -> None:
        if not uids:
            return
        if self.config.after_fetch == "move":
            client.ensure_folder(self.config.processed_folder)
            client.move(uids, self.config.processed_folder)
            tally.moved += len(uids)
        else:
            client.mark_seen(uids)
            tally.flagged += len(uids)

    def _notify(self) -> None:
        if self._on_received is None:
            return
        try:
            self._on_received()
        except Exception:  # noqa: BLE001 - the rows are committed and acknowledged; a bad hook must not undo that
            log.exception("imap %s: on_received failed", self.config.name)

    # -- connection and lease ---------------------------------------------------------------------

    def _connect(self) -> MailboxClient:
        if self._client is None:
            self._client = self._client_factory(self.config)
        return self._client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _renew_lease(self) -> None:
        if not self._store.acquire_lease(self._lease, self._owner, ttl=self._lease_ttl, now=self._clock()):
            raise _LeaseLost

    def _record_failure(self, at: datetime, exc: TicketbotError) -> None:
        try:
            self._store.save_mailbox_state(
                self.config.name, folder=self.config.folder, last_poll_at=at, last_error=f"{exc}"[:2000]
            )
        except StorageError as store_exc:
            log.debug("imap %s: could not record the error: %s", self.config.name, store_exc)

    def close(self) -> None:
        """Log out and give the lease back, so another poller can take over at once."""
        self._disconnect()
        try:
            self._store.release_lease(self._lease, self._owner)
        except StorageError as exc:
            log.warning("imap %s: could not release the lease: %s", self.config.name, exc)

    # -- the thread -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll, then wait (IDLE when possible) until new mail or ``poll_seconds``; repeat until ``stop`` is set.

        Failures back off exponentially with jitter up to ``backoff_max`` and are logged once per change of
        state; nothing escapes, so one broken mailbox never stops the others. Returns within about a second
        of ``stop`` being set.
        """
        self._stop = stop
        failures = 0
        problem: str | None = None
        try:
            while not stop.is_set():
                try:
                    result = self.poll_once()
                    if result.leased:
                        self._wait_for_mail(stop)
                    else:
                        stop.wait(self.config.poll_seconds)
                except Exception as exc:  # noqa: BLE001 - the thread's edge: log, back off, carry on
                    failures += 1
                    now_problem = f"{type(exc).__name__}: {exc}"
                    if now_problem != problem:
                        if isinstance(exc, MailboxUnavailable):
                            log.warning("imap %s: %s (retrying with backoff)", self.config.name, exc)
                        elif isinstance(exc, TicketbotError):
                            log.error("imap %s: %s (retrying with backoff)", self.config.name, exc)
                        else:
                            log.exception("imap %s: unexpected error (retrying with backoff)", self.config.name)
                        problem = now_problem
                    stop.wait(self._backoff(failures))
                    continue
                if problem is not None:
                    log.info("imap %s: working again after %d failed attempts", self.config.name, failures)
                    problem = None
                failures = 0
        finally:
            self.close()

    def _backoff(self, failures: int) -> float:
        # Exponential with "equal jitter": pollers that failed together (server restart) do not return together.
        delay = min(self._backoff_max, self._backoff_initial * 2.0 ** min(failures - 1, 30))
        return delay * random.uniform(0.5, 1.0)

    def _wait_for_mail(self, stop: threading.Event) -> None:
        """Wait ``poll_seconds`` (IDLE: at most IDLE_MAX_SECONDS, or until new mail), renewing the lease meanwhile."""
        idler = (
            self._client
            if self.config.idle and self._client is not None and self._client.has_capability("IDLE")
            else None
        )
        now = time.monotonic()
        deadline = now + (min(self.config.poll_seconds, IDLE_MAX_SECONDS) if idler else self.config.poll_seconds)
        # The lease must outlive a wait longer than its ttl (poll_seconds defaults to the same 60 s).
        renew_every = self._lease_ttl.total_seconds() / 3
        renew_at = now + renew_every
        try:
            if idler is not None:
                # A new-mail EXISTS that arrived in the response to one of the poll's own commands (say, during
                # SEARCH) was consumed there and will not be repeated in IDLE: re-SELECT and compare first.
                fresh = idler.select(self.config.folder)
                if (fresh.uidvalidity, fresh.uidnext) != self._seen:
                    return
                idler.idle_start()
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if idler is not None:
                    if idler.idle_check(min(IDLE_CHECK_SECONDS, left)):
                        break  # new mail: poll now
                else:
                    stop.wait(min(left, max(renew_at - time.monotonic(), 0.01)))
                if time.monotonic() >= renew_at:
                    self._renew_lease()
                    renew_at = time.monotonic() + renew_every
            if idler is not None:
                idler.idle_done()
        except _LeaseLost:
            log.warning("imap %s: lost the lease to another poller while waiting", self.config.name)
            self._disconnect()
        except BaseException:
            self._disconnect()
            raise


def _done_prefix(candidates: Sequence[int], done: set[int], cursor: int) -> int:
    """The highest candidate UID below which every candidate is done: the cursor never passes an unstored one."""
    for uid in candidates:
        if uid not in done:
            break
        cursor = uid
    return cursor

"""IMAP intake against a real private Dovecot and the real SqlStore: store once, then acknowledge on the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from itertools import count

import pytest

from core.config import ImapMailboxConfig
from core.errors import ConfigError
from core.inbound import InboundRecord, InboundStatus, StoredInbound
from core.message import Channel
from intake.identity import email_identity
from intake.imap import (
    MAX_DOWNLOAD_ATTEMPTS,
    FolderInfo,
    ImapPoller,
    MailboxClient,
    MailboxError,
    MailboxLoginError,
    MailboxUnavailable,
    PollResult,
    connect_mailbox,
    mailbox_secret,
)
from storage.store import SqlStore
from tests.fakes.dovecot import (
    Dovecot,
    MailUser,
    dovecot_server,  # noqa: F401 - the `dovecot` fixture
    free_port,
    fresh_mailbox,  # noqa: F401 - the `mailbox` fixture
    running_dovecot,
)

pytestmark = pytest.mark.imap

PASSWORD_ENV = "TEST_IMAP_PASSWORD"
PROCESSED = "Ticketbot/Processed"
FAILED = "Ticketbot/Failed"
SEEN = b"\\Seen"
_numbers = count(1)


def mail(subject: str | None = None, *, body: str = "It smokes.") -> bytes:
    n = next(_numbers)
    lines = [
        "From: Ana <ana@example.com>",
        "To: support@example.com",
        f"Subject: {subject or f'Request {n}'}",
        "Date: Mon, 02 Nov 2026 09:30:00 +0000",
        f"Message-ID: {make_msgid(idstring=str(n), domain='example.com')}",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode()


def settings(server: Dovecot, user: MailUser, **overrides: object) -> ImapMailboxConfig:
    values: dict[str, object] = {
        "name": user.username,
        "host": server.host,
        "port": server.port,
        "security": "none",
        "username": user.username,
        "password_env": PASSWORD_ENV,
        "idle": False,
        "poll_seconds": 1,
    }
    values.update(overrides)
    return ImapMailboxConfig.model_validate(values)


Wrap = Callable[[MailboxClient], MailboxClient]


def connector(user: MailUser, wrap: Wrap | None = None) -> Callable[[ImapMailboxConfig], MailboxClient]:
    """A client_factory logging in as ``user`` (the password comes from a private environ, not os.environ)."""
    environ = {PASSWORD_ENV: user.password}

    def connect(config: ImapMailboxConfig) -> MailboxClient:
        client = connect_mailbox(config, environ=environ, timeout=10)
        return wrap(client) if wrap else client

    return connect


def make_poller(
    server: Dovecot,
    user: MailUser,
    store: SqlStore,
    *,
    wrap: Wrap | None = None,
    owner: str = "test",
    on_received: Callable[[], None] | None = None,
    **overrides: object,
) -> ImapPoller:
    return ImapPoller(
        config=settings(server, user, **overrides),
        store=store,
        owner=owner,
        on_received=on_received,
        client_factory=connector(user, wrap),
        backoff_initial=0.05,
        backoff_max=0.5,
    )


def rows(store: SqlStore) -> list[StoredInbound]:
    return sorted(store.list_inbound(status=None, limit=1000), key=lambda r: r.id)


def bodies(server: Dovecot, user: MailUser, folder: str = "INBOX") -> list[bytes]:
    return [m.raw for m in server.messages(user, folder)]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


class Relay:
    """A MailboxClient that forwards to a real one; tests override single methods to inject failures."""

    def __init__(self, inner: MailboxClient) -> None:
        self.inner = inner

    def has_capability(self, name: str) -> bool:
        return self.inner.has_capability(name)

    def select(self, folder: str) -> FolderInfo:
        return self.inner.select(folder)

    def search_from(self, first_uid: int) -> list[int]:
        return self.inner.search_from(first_uid)

    def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        return self.inner.fetch_sizes(uids)

    def fetch_headers(self, uids: Sequence[int]) -> dict[int, bytes]:
        return self.inner.fetch_headers(uids)

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        return self.inner.fetch_bodies(uids)

    def ensure_folder(self, folder: str) -> None:
        self.inner.ensure_folder(folder)

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.inner.move(uids, folder)

    def mark_seen(self, uids: Sequence[int]) -> None:
        self.inner.mark_seen(uids)

    def idle_start(self) -> None:
        self.inner.idle_start()

    def idle_check(self, timeout: float) -> bool:
        return self.inner.idle_check(timeout)

    def idle_done(self) -> None:
        self.inner.idle_done()

    def close(self) -> None:
        self.inner.close()


class CrashBeforeMove(Relay):
    """The process "dies" after the commit and before the MOVE: the move never reaches the server."""

    def move(self, uids: Sequence[int], folder: str) -> None:
        self.inner.close()
        raise MailboxUnavailable("simulated crash between commit and MOVE")


class FailingFetch(Relay):
    """The server cannot deliver the bodies of some messages: a NO for any FETCH that includes them."""

    def __init__(self, inner: MailboxClient, poison: set[bytes], kill_connection: bool = False) -> None:
        super().__init__(inner)
        self.poison = poison
        self.kill_connection = kill_connection

    def fetch_bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        got = self.inner.fetch_bodies(uids)
        if any(any(marker in raw for marker in self.poison) for raw in got.values()):
            if self.kill_connection:
                self.inner.close()
                raise MailboxUnavailable("connection reset while fetching")
            raise MailboxError("UID FETCH: NO [SERVERBUG] Internal error occurred")
        return got


@pytest.fixture
def threads() -> Iterator[Callable[[ImapPoller], threading.Event]]:
    """Runs pollers in threads; stops and joins them after the test (run() must return within about a second)."""
    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(poller: ImapPoller) -> threading.Event:
        stop = threading.Event()
        thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
        thread.start()
        running.append((thread, stop))
        return stop

    yield start
    for _thread, stop in running:
        stop.set()
    for thread, _stop in running:
        thread.join(timeout=5)
        assert not thread.is_alive(), "ImapPoller.run did not honour stop"


# -- draining ---------------------------------------------------------------------------------------


def test_new_mail_is_stored_once_and_moved_to_a_created_processed_folder(
    dovecot: Dovecot, mailbox: MailUser, store: SqlStore
) -> None:
    woken: list[int] = []
    # The hook records how many rows it can see: they are committed before it is called.
    poller = make_poller(dovecot, mailbox, store, on_received=lambda: woken.append(len(rows(store))))
    assert poller.poll_once() == PollResult()  # first contact: the cursor is set at UIDNEXT
    first, second = mail("Printer on fire"), mail("VPN down")
    dovecot.append(mailbox, "INBOX", first)
    dovecot.append(mailbox, "INBOX", second)

    result = poller.poll_once()
    again = poller.poll_once()
    poller.close()

    assert result == PollResult(fetched=2, stored=2, moved=2)
    assert again == PollResult()
    assert woken == [2]
    stored = rows(store)
    assert [r.payload for r in stored] == [first, second]
    assert {r.mailbox for r in stored} == {mailbox.username}
    assert all(r.status is InboundStatus.RECEIVED and r.channel is Channel.EMAIL for r in stored)
    assert stored[0].message_id == email_identity(first)[1]
    assert bodies(dovecot, mailbox) == []
    moved = dovecot.messages(mailbox, PROCESSED)
    assert [m.raw for m in moved] == [first, second]
    assert all(SEEN not in m.flags for m in moved)  # BODY.PEEK: people still see the mail as unread
    state = store.mailbox_state(mailbox.username)
    assert state is not None
    assert state["last_error"] is None and state["last_success_at"] is not None
    assert state["uidvalidity"] == dovecot.uidvalidity(mailbox)


def test_flag_mode_keeps_mail_in_place_marks_it_seen_and_advances_the_cursor(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    poller = make_poller(dovecot, mailbox, sqlite_store, after_fetch="flag")
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", mail())
    last = dovecot.append(mailbox, "INBOX", mail())

    assert poller.poll_once() == PollResult(fetched=2, stored=2, flagged=2)
    dovecot.append(mailbox, "INBOX", mail())
    assert poller.poll_once() == PollResult(fetched=1, stored=1, flagged=1)  # only the new one is fetched
    poller.close()

    left = dovecot.messages(mailbox)
    assert len(left) == 3 and all(SEEN in m.flags for m in left)
    assert dovecot.folders(mailbox) == ["INBOX"]
    state = sqlite_store.mailbox_state(mailbox.username)
    assert state is not None and state["last_uid"] == last + 1
    assert len(rows(sqlite_store)) == 3


@pytest.mark.parametrize("import_backlog", [False, True])
def test_backlog_is_left_alone_on_first_contact_unless_imported(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore, import_backlog: bool
) -> None:
    backlog = [mail("old 1"), mail("old 2")]
    for raw in backlog:
        dovecot.append(mailbox, "INBOX", raw)
    poller = make_poller(dovecot, mailbox, sqlite_store, import_backlog=import_backlog)

    first = poller.poll_once()
    dovecot.append(mailbox, "INBOX", new := mail("new"))
    second = poller.poll_once()
    poller.close()

    if import_backlog:
        assert first == PollResult(fetched=2, stored=2, moved=2)
        assert [r.payload for r in rows(sqlite_store)] == [*backlog, new]
        assert bodies(dovecot, mailbox) == []
    else:
        assert first == PollResult()
        assert [r.payload for r in rows(sqlite_store)] == [new]
        left = dovecot.messages(mailbox)
        assert [m.raw for m in left] == backlog and all(SEEN not in m.flags for m in left)
    assert second == PollResult(fetched=1, stored=1, moved=1)


def test_batches_are_processed_in_uid_order(dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore) -> None:
    sent = [mail() for _ in range(7)]
    for raw in sent:
        dovecot.append(mailbox, "INBOX", raw)
    poller = make_poller(dovecot, mailbox, sqlite_store, import_backlog=True, batch_size=3)

    assert poller.poll_once() == PollResult(fetched=7, stored=7, moved=7)
    poller.close()

    assert [r.payload for r in rows(sqlite_store)] == sent
    assert [r.uid for r in rows(sqlite_store)] == list(range(1, 8))  # fresh mailbox: UIDs 1..7, taken in order


def test_a_server_without_move_gets_copy_delete_and_uid_expunge(sqlite_store: SqlStore) -> None:
    no_move = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE CHILDREN UIDPLUS LITERAL+\n"
    with running_dovecot(extra_config=no_move) as server:
        user = server.add_user()
        poller = make_poller(server, user, sqlite_store, import_backlog=True)
        server.append(user, "INBOX", raw := mail())
        server.append(user, "INBOX", human_deleted := mail(), flags=(b"\\Deleted",))

        assert poller.poll_once() == PollResult(fetched=1, stored=1, moved=1)
        poller.close()

        assert bodies(server, user, PROCESSED) == [raw]
        assert bodies(server, user) == [human_deleted]  # UID EXPUNGE removed only what we moved


# -- crashes, redelivery, UIDVALIDITY -------------------------------------------------------------


def test_a_crash_between_commit_and_move_leaves_no_duplicate(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    crashing = make_poller(dovecot, mailbox, sqlite_store, wrap=CrashBeforeMove)
    crashing.poll_once()
    dovecot.append(mailbox, "INBOX", raw := mail())

    with pytest.raises(MailboxUnavailable):
        crashing.poll_once()
    # The row is committed, the message is still in INBOX, and still unread: it was fetched with BODY.PEEK[].
    assert [r.payload for r in rows(sqlite_store)] == [raw]
    [left] = dovecot.messages(mailbox)
    assert left.raw == raw and SEEN not in left.flags
    state = sqlite_store.mailbox_state(mailbox.username)
    assert state is not None and "simulated crash" in state["last_error"]

    restarted = make_poller(dovecot, mailbox, sqlite_store, owner="test")
    assert restarted.poll_once() == PollResult(fetched=1, duplicates=1, moved=1)
    restarted.close()

    assert [r.payload for r in rows(sqlite_store)] == [raw]
    assert bodies(dovecot, mailbox) == [] and bodies(dovecot, mailbox, PROCESSED) == [raw]
    state = sqlite_store.mailbox_state(mailbox.username)
    assert state is not None and state["last_error"] is None


def test_mail_already_stored_by_another_channel_is_not_stored_again(
    dovecot: Dovecot, mailbox: MailUser, store: SqlStore
) -> None:
    raw = mail()
    key, message_id = email_identity(raw)
    # The same message reached us over SMTP first (trace headers differ, the identity does not).
    store.receive(
        InboundRecord(Channel.EMAIL, key, b"Received: by mx\r\n" + raw, datetime.now(UTC), message_id=message_id)
    )
    poller = make_poller(dovecot, mailbox, store)
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", raw)

    assert poller.poll_once() == PollResult(fetched=1, duplicates=1, moved=1)
    poller.close()

    assert len(rows(store)) == 1
    assert bodies(dovecot, mailbox, PROCESSED) == [raw]


def test_a_uidvalidity_change_rescans_the_folder_without_duplicates(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    poller = make_poller(dovecot, mailbox, sqlite_store, after_fetch="flag")
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", mail())
    dovecot.append(mailbox, "INBOX", mail())
    assert poller.poll_once().stored == 2

    new_validity = dovecot.change_uidvalidity(mailbox)  # the poller's open connection is dropped by Dovecot
    dovecot.append(mailbox, "INBOX", mail())
    result = poller.poll_once()
    poller.close()

    assert result == PollResult(fetched=3, stored=1, duplicates=2, flagged=3)
    assert len(rows(sqlite_store)) == 3
    state = sqlite_store.mailbox_state(mailbox.username)
    assert state is not None and state["uidvalidity"] == new_validity


# -- leases -----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_one_poller_holds_the_mailbox_and_another_takes_over_when_it_dies(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    clock = FakeClock()
    config = settings(dovecot, mailbox)
    first, second = (
        ImapPoller(
            config=config,
            store=sqlite_store,
            owner=owner,
            clock=clock,
            client_factory=connector(mailbox),
            lease_ttl=timedelta(seconds=5),
        )
        for owner in ("host-a:1", "host-b:2")
    )
    first.poll_once()
    dovecot.append(mailbox, "INBOX", mail())

    assert second.poll_once() == PollResult(leased=False)
    assert first.poll_once() == PollResult(fetched=1, stored=1, moved=1)

    # host-a dies without releasing; within the ttl the mailbox stays its own.
    dovecot.append(mailbox, "INBOX", mail())
    clock.now += timedelta(seconds=4)
    assert second.poll_once() == PollResult(leased=False)
    clock.now += timedelta(seconds=2)
    assert second.poll_once() == PollResult(fetched=1, stored=1, moved=1)
    assert first.poll_once() == PollResult(leased=False)  # had it come back, it finds the mailbox taken
    second.close()
    first.close()

    assert len(rows(sqlite_store)) == 2
    assert len(bodies(dovecot, mailbox, PROCESSED)) == 2


def test_a_running_poller_keeps_its_lease_while_waiting_and_hands_it_over_on_stop(
    dovecot: Dovecot,
    mailbox: MailUser,
    sqlite_store: SqlStore,
    threads: Callable[[ImapPoller], threading.Event],
) -> None:
    def poller(owner: str) -> ImapPoller:
        return ImapPoller(
            config=settings(dovecot, mailbox, poll_seconds=5),
            store=sqlite_store,
            owner=owner,
            client_factory=connector(mailbox),
            lease_ttl=timedelta(seconds=0.6),
        )

    standby = poller("host-b:2")
    stop = threads(poller("host-a:1"))
    wait_for(lambda: (sqlite_store.mailbox_state(mailbox.username) or {}).get("last_success_at") is not None)

    deadline = time.monotonic() + 1.5  # more than twice the ttl, all inside host-a's 5 s wait
    while time.monotonic() < deadline:
        assert standby.poll_once() == PollResult(leased=False)
        time.sleep(0.1)

    stop.set()  # run() releases the lease on its way out: no need to wait for the ttl
    wait_for(lambda: standby.poll_once().leased, timeout=5)
    standby.close()


# -- bad messages -----------------------------------------------------------------------------------


def test_a_poison_message_does_not_block_others_and_goes_to_failed_after_three_attempts(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    poller = make_poller(dovecot, mailbox, sqlite_store, wrap=lambda c: FailingFetch(c, {b"POISON"}))
    poller.poll_once()
    good = [mail(), mail()]
    dovecot.append(mailbox, "INBOX", good[0])
    dovecot.append(mailbox, "INBOX", poison := mail(body="POISON"))
    dovecot.append(mailbox, "INBOX", good[1])

    results = [poller.poll_once() for _ in range(MAX_DOWNLOAD_ATTEMPTS)]
    after = poller.poll_once()
    poller.close()

    assert results[0] == PollResult(fetched=2, stored=2, moved=2)  # the good ones went through at once
    assert results[1] == PollResult()
    assert results[2] == PollResult(failed=1)
    assert after == PollResult()
    assert [r.payload for r in rows(sqlite_store)] == good
    assert bodies(dovecot, mailbox, FAILED) == [poison]
    assert bodies(dovecot, mailbox) == []


def test_a_message_that_kills_the_connection_is_isolated(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    poller = make_poller(
        dovecot, mailbox, sqlite_store, wrap=lambda c: FailingFetch(c, {b"KILLER"}, kill_connection=True)
    )
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", killer := mail(body="KILLER"))
    good = [mail(), mail()]
    for raw in good:
        dovecot.append(mailbox, "INBOX", raw)

    outcomes: list[PollResult | str] = []
    for _ in range(8):
        try:
            outcomes.append(poller.poll_once())
        except MailboxUnavailable:
            outcomes.append("lost connection")
        if bodies(dovecot, mailbox) == []:
            break
    poller.close()

    assert [r.payload for r in rows(sqlite_store)] == good
    assert bodies(dovecot, mailbox, PROCESSED) == good
    assert bodies(dovecot, mailbox, FAILED) == [killer]
    assert outcomes.count("lost connection") == MAX_DOWNLOAD_ATTEMPTS + 1  # the batch, then the killer alone


def test_an_oversized_message_is_parked_without_downloading_it(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    poller = ImapPoller(
        config=settings(dovecot, mailbox),
        store=sqlite_store,
        owner="test",
        client_factory=connector(mailbox),
        max_message_bytes=2000,
    )
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", big := mail(body="x" * 5000))
    dovecot.append(mailbox, "INBOX", small := mail())

    assert poller.poll_once() == PollResult(fetched=1, stored=1, moved=1, failed=1)
    poller.close()

    parked, received = sorted(rows(sqlite_store), key=lambda r: r.uid or 0)
    assert parked.status is InboundStatus.PARKED and "over the 2000-byte limit" in (parked.last_error or "")
    assert big.startswith(parked.payload) and len(parked.payload) < 500  # the header only
    assert parked.message_id == email_identity(big)[1]
    assert received.payload == small
    assert bodies(dovecot, mailbox, FAILED) == [big]


# -- the thread: IDLE, outages, credentials ---------------------------------------------------------


def test_idle_wakes_the_poller_when_mail_arrives(
    dovecot: Dovecot,
    mailbox: MailUser,
    sqlite_store: SqlStore,
    threads: Callable[[ImapPoller], threading.Event],
) -> None:
    woken = threading.Event()
    # poll_seconds is far longer than the wait below: only IDLE can bring the message in time.
    poller = make_poller(dovecot, mailbox, sqlite_store, on_received=woken.set, idle=True, poll_seconds=120)
    threads(poller)
    wait_for(lambda: (sqlite_store.mailbox_state(mailbox.username) or {}).get("last_success_at") is not None)
    time.sleep(0.3)  # let it enter IDLE

    dovecot.append(mailbox, "INBOX", raw := mail())

    assert woken.wait(timeout=20)
    assert [r.payload for r in rows(sqlite_store)] == [raw]
    wait_for(lambda: bodies(dovecot, mailbox, PROCESSED) == [raw])


class MailDuringSearch(Relay):
    """Mail arrives while the poll is busy, and the server's EXISTS for it rides on a reply the poll ignores."""

    def __init__(self, inner: MailboxClient, deliver: Callable[[], None]) -> None:
        super().__init__(inner)
        self.deliver: Callable[[], None] | None = deliver

    def search_from(self, first_uid: int) -> list[int]:
        found = self.inner.search_from(first_uid)
        if self.deliver is not None and found == []:
            self.deliver()
            self.deliver = None
            self.inner.search_from(first_uid + 10_000)  # the "* 1 EXISTS" arrives here and is consumed
        return found


def test_mail_announced_during_a_poll_is_not_missed_by_idle(
    dovecot: Dovecot,
    mailbox: MailUser,
    sqlite_store: SqlStore,
    threads: Callable[[ImapPoller], threading.Event],
) -> None:
    raw = mail()

    def deliver() -> None:
        dovecot.append(mailbox, "INBOX", raw)

    # poll_seconds is far longer than wait_for's timeout: only a poll right after the busy one finds the mail.
    poller = make_poller(
        dovecot, mailbox, sqlite_store, wrap=lambda c: MailDuringSearch(c, deliver), idle=True, poll_seconds=120
    )
    threads(poller)

    wait_for(lambda: [r.payload for r in rows(sqlite_store)] == [raw])


def test_a_server_restart_during_idle_is_survived(
    sqlite_store: SqlStore, threads: Callable[[ImapPoller], threading.Event]
) -> None:
    with running_dovecot() as server:
        user = server.add_user()
        poller = make_poller(server, user, sqlite_store, idle=True, poll_seconds=120)
        threads(poller)
        wait_for(lambda: (sqlite_store.mailbox_state(user.username) or {}).get("last_success_at") is not None)
        time.sleep(0.3)  # let it enter IDLE

        server.restart()  # idling clients get "* BYE Server shutting down"
        server.append(user, "INBOX", raw := mail())

        wait_for(lambda: [r.payload for r in rows(sqlite_store)] == [raw])
        wait_for(lambda: bodies(server, user, PROCESSED) == [raw])


def test_a_refused_connection_backs_off_and_recovers_when_the_server_is_back(
    sqlite_store: SqlStore, threads: Callable[[ImapPoller], threading.Event]
) -> None:
    port = free_port()
    user = MailUser("late", "secret")
    config = ImapMailboxConfig(
        name="late", host="127.0.0.1", port=port, security="none", username="late", password_env=PASSWORD_ENV,
        idle=False, poll_seconds=1, import_backlog=True,
    )  # fmt: skip
    poller = ImapPoller(
        config=config,
        store=sqlite_store,
        owner="test",
        client_factory=connector(user),
        backoff_initial=0.05,
        backoff_max=0.3,
    )
    threads(poller)
    wait_for(lambda: "refused" in str((sqlite_store.mailbox_state("late") or {}).get("last_error")).lower())

    with running_dovecot(port=port) as server:
        server.add_user(user.username, user.password)
        server.append(user, "INBOX", raw := mail())
        wait_for(lambda: [r.payload for r in rows(sqlite_store)] == [raw])
        wait_for(lambda: bodies(server, user, PROCESSED) == [raw])
        state = sqlite_store.mailbox_state("late")
        assert state is not None and state["last_error"] is None


def test_a_wrong_password_is_recorded_and_other_mailboxes_keep_working(
    dovecot: Dovecot,
    sqlite_store: SqlStore,
    threads: Callable[[ImapPoller], threading.Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    good_user, bad_user = dovecot.add_user(), dovecot.add_user()
    wrong = MailUser(bad_user.username, "wrong")
    good = make_poller(dovecot, good_user, sqlite_store, import_backlog=True)
    bad = make_poller(dovecot, wrong, sqlite_store, import_backlog=True)
    dovecot.append(good_user, "INBOX", raw := mail())
    dovecot.append(bad_user, "INBOX", mail())
    threads(bad)
    threads(good)

    def bad_state() -> dict[str, object]:
        return sqlite_store.mailbox_state(bad_user.username) or {}

    wait_for(lambda: [r.payload for r in rows(sqlite_store)] == [raw])
    wait_for(lambda: bad_state().get("last_error") is not None)
    first_failure = bad_state()["last_poll_at"]
    wait_for(lambda: bad_state()["last_poll_at"] != first_failure)  # it keeps trying, with backoff

    state = bad_state()
    assert "login" in str(state["last_error"]) and "AUTHENTICATIONFAILED" in str(state["last_error"])
    assert state["last_success_at"] is None
    assert len(bodies(dovecot, bad_user)) == 1
    # Logged once per change of state, not once per retry.
    errors = [r for r in caplog.records if r.levelname == "ERROR" and bad_user.username in r.getMessage()]
    assert len(errors) == 1
    with pytest.raises(MailboxLoginError):
        make_poller(dovecot, wrong, sqlite_store).poll_once()


# -- credentials --------------------------------------------------------------------------------------


def test_xoauth2_logs_in_with_a_token_from_a_command(
    dovecot: Dovecot, mailbox: MailUser, sqlite_store: SqlStore
) -> None:
    config = settings(dovecot, mailbox, auth="xoauth2", token_command=f"printf '%s\\n' {mailbox.password}")
    poller = ImapPoller(config=config, store=sqlite_store, owner="test", client_factory=connect_mailbox)
    poller.poll_once()
    dovecot.append(mailbox, "INBOX", raw := mail())

    assert poller.poll_once() == PollResult(fetched=1, stored=1, moved=1)
    poller.close()

    assert [r.payload for r in rows(sqlite_store)] == [raw]


def test_a_rejected_xoauth2_token_is_a_login_error(dovecot: Dovecot, mailbox: MailUser) -> None:
    config = settings(dovecot, mailbox, auth="xoauth2", token_env="TOKEN")
    with pytest.raises(MailboxLoginError, match="AUTHENTICATIONFAILED"):
        connect_mailbox(config, environ={"TOKEN": "expired-token"})


def oauth_settings(**values: object) -> ImapMailboxConfig:
    return ImapMailboxConfig.model_validate(
        {"name": "o365", "host": "imap.example.com", "username": "help@example.com", "auth": "xoauth2", **values}
    )


def test_mailbox_secret_reads_the_password_and_tokens_from_their_sources() -> None:
    password = ImapMailboxConfig(name="m", host="h", username="u", password_env="PW")
    assert mailbox_secret(password, {"PW": "s3cret"}) == "s3cret"
    assert mailbox_secret(oauth_settings(token_env="TOKEN"), {"TOKEN": " tok \n"}) == "tok"
    assert mailbox_secret(oauth_settings(token_command="printf 'tok-from-command\\n'"), {"PATH": "/usr/bin:/bin"}) == (
        "tok-from-command"
    )


def test_mailbox_secret_explains_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="PW is not set"):
        mailbox_secret(ImapMailboxConfig(name="m", host="h", username="u", password_env="PW"), {})
    with pytest.raises(ConfigError, match="token_env or token_command"):
        mailbox_secret(oauth_settings(), {})
    with pytest.raises(MailboxLoginError, match="refresh token revoked"):
        mailbox_secret(oauth_settings(token_command="sh -c 'echo refresh token revoked >&2; exit 3'"), {"PATH": "/bin"})

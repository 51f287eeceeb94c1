"""Scheduled digests end to end: schedules and DST, the misfire window, exactly once across three schedulers on
PostgreSQL, delivery to the fake Slack API (429s included) and by email with the chart inline, and the CLI."""

from __future__ import annotations

import email
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from click.testing import CliRunner
from slack_sdk import WebClient
from sqlalchemy import Engine, func, insert, select, text

from bot.digest import DigestSchedule, DigestService, chart_png, cron_days
from bot.slack_delivery import SlackDelivery
from core.config import Config
from core.digest import ADMIN_SCOPE, department_scope
from core.errors import ConfigError
from core.outbox import OutboxDispatcher, OutboxKind, OutboxStatus, RetryPolicy, Sender
from intake.reply import FileReplySender
from storage.db import make_engine
from storage.digests import SqlDigestStore
from storage.store import SqlStore
from storage.tables import DigestRunRow, OutboxRow, TicketEventRow, TicketRow
from tests.conftest import PG_URL
from tests.fakes import slack_api as fake
from tests.fakes.slack_api import ADMIN, BOT_TOKEN, CHANNELS, FakeSlackAPI

slack_env = fake.slack_env
slack_api = fake.slack_api

TZ = "Europe/London"
FRIDAY_9 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # 09:00 GMT: both schedules fire
GRACE = 3600


def add_channels(api: FakeSlackAPI) -> None:
    api.ts_base = int(FRIDAY_9.timestamp())  # message times near the fixed clock's, as in a real channel
    for name, channel in CHANNELS.items():
        api.add_channel(channel, name.lower())
    api.add_channel(ADMIN, "ticketbot-admins")


def make_config(api_url: str = "http://127.0.0.1:9/api/", **digests: Any) -> Config:
    return Config(
        departments=[{"name": name, "slack_channel": channel} for name, channel in CHANNELS.items()],
        slack={"api_url": api_url, "admin_channel": ADMIN},
        email={"support_addresses": ["support@example.com"]},
        digests={"admin_emails": ["boss@example.com"], "misfire_grace_seconds": GRACE, **digests},
    )


def add_ticket(engine: Engine, department: str, created_at: datetime, **values: Any) -> None:
    with engine.begin() as conn:
        ticket_id = conn.execute(
            insert(TicketRow)
            .values(
                subject="s",
                body="b",
                requester="ana@example.com",
                channel="email",
                department=department,
                priority=values.pop("priority", "medium"),
                status=values.pop("status", "new"),
                confidence=0.8,
                summary=values.pop("summary", "Printer jam"),
                classifier="offline",
                created_at=created_at,
                updated_at=created_at,
                **values,
            )
            .returning(TicketRow.id)
        ).scalar_one()
        conn.execute(
            insert(TicketEventRow).values(
                ticket_id=ticket_id, kind="routed", actor="router", data={"to": department}, at=created_at
            )
        )


def outbox(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(OutboxRow.kind, OutboxRow.dedupe_key, OutboxRow.status).order_by(OutboxRow.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


def runs(engine: Engine) -> dict[tuple[str, date], str]:
    with engine.connect() as conn:
        rows = conn.execute(select(DigestRunRow.scope, DigestRunRow.period, DigestRunRow.status))
        return {(r.scope, r.period): r.status for r in rows}


# -- schedules, periods and DST ----------------------------------------------------------------------------------------


def test_schedules_look_back_across_weekends_and_dst_changes() -> None:
    admin = DigestSchedule("0 9 * * *", TZ)
    departments = DigestSchedule("0 9 * * mon-fri", TZ)
    # Spring: 09:00 GMT on Saturday 28 March is 09:00 UTC; 09:00 BST on Sunday the 29th is 08:00 UTC.
    assert admin.fire_on(date(2026, 3, 29)) == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
    assert admin.previous(datetime(2026, 3, 29, 8, 0, tzinfo=UTC)) == datetime(2026, 3, 28, 9, 0, tzinfo=UTC)
    # Autumn: 09:00 BST on Saturday 24 October is 08:00 UTC; 09:00 GMT on Sunday the 25th is 09:00 UTC.
    assert admin.fire_on(date(2026, 10, 25)) == datetime(2026, 10, 25, 9, 0, tzinfo=UTC)
    assert admin.previous(datetime(2026, 10, 25, 9, 0, tzinfo=UTC)) == datetime(2026, 10, 24, 8, 0, tzinfo=UTC)
    # Department digests skip weekends: Monday's covers since Friday.
    monday = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert departments.latest(monday) == monday
    assert departments.previous(monday) == FRIDAY_9
    assert departments.latest(datetime(2026, 11, 22, 12, 0, tzinfo=UTC)) == FRIDAY_9
    assert departments.fire_on(date(2026, 11, 22)) is None


def test_cron_day_numbers_mean_what_cron_means() -> None:
    # APScheduler alone would read 1-5 as Tuesday to Saturday.
    assert cron_days("1-5") == "mon,tue,wed,thu,fri" and cron_days("0") == "sun" and cron_days("7") == "sun"
    assert cron_days("*") == "*" and cron_days("0-6") == "*" and cron_days("mon-fri") == "mon-fri"
    assert cron_days("1-5/2") == "mon,wed,fri" and cron_days("6,0") == "sat,sun"
    weekdays = DigestSchedule("0 9 * * 1-5", TZ)
    assert weekdays.latest(datetime(2026, 11, 23, 9, 0, tzinfo=UTC)) == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert weekdays.fire_on(date(2026, 11, 21)) is None  # a Saturday
    with pytest.raises(ConfigError, match="bad cron expression"):
        DigestSchedule("0 9 * *", TZ)
    with pytest.raises(ConfigError, match="bad cron expression"):
        DigestSchedule("0 9 * * 9", TZ)


@pytest.mark.parametrize(
    ("fire_at", "hours"),
    [
        (datetime(2026, 3, 29, 8, 0, tzinfo=UTC), 23),  # the clocks went forward overnight
        (datetime(2026, 3, 30, 8, 0, tzinfo=UTC), 24),
        (datetime(2026, 10, 25, 9, 0, tzinfo=UTC), 25),  # the clocks went back overnight
        (datetime(2026, 10, 26, 9, 0, tzinfo=UTC), 24),
    ],
)
def test_an_admin_digest_covers_the_day_as_the_clock_on_the_wall_saw_it(
    sqlite_engine: Engine, fire_at: datetime, hours: int
) -> None:
    service = DigestService(make_config(), SqlDigestStore(SqlStore(sqlite_engine)))
    period = service.period_at(ADMIN_SCOPE, fire_at)
    assert period.ends_at - period.starts_at == timedelta(hours=hours)
    assert period.day == fire_at.date()


def test_tickets_on_a_dst_day_land_in_the_right_digest(sqlite_engine: Engine) -> None:
    # 08:30 UTC on Sunday 29 March is 09:30 BST: after that day's 09:00 digest, so it is Monday's news.
    add_ticket(sqlite_engine, "HR", datetime(2026, 3, 29, 7, 30, tzinfo=UTC))
    add_ticket(sqlite_engine, "HR", datetime(2026, 3, 29, 8, 30, tzinfo=UTC))
    service = DigestService(make_config(), SqlDigestStore(SqlStore(sqlite_engine)))
    sunday = service.compose(service.period_at(ADMIN_SCOPE, datetime(2026, 3, 29, 8, 0, tzinfo=UTC)))
    monday = service.compose(service.period_at(ADMIN_SCOPE, datetime(2026, 3, 30, 8, 0, tzinfo=UTC)))
    assert [d.new for d in sunday.departments if d.department == "HR"] == [1]
    assert [d.new for d in monday.departments if d.department == "HR"] == [1]


# -- the misfire window ------------------------------------------------------------------------------------------------


def test_a_digest_within_the_misfire_window_goes_out_late(sqlite_engine: Engine) -> None:
    service = DigestService(make_config(), SqlDigestStore(SqlStore(sqlite_engine)), slack=True)
    late = FRIDAY_9 + timedelta(seconds=GRACE - 1)
    assert service.run_due("admin", late) == {ADMIN_SCOPE: "sent"}
    assert [k for _, k, _ in outbox(sqlite_engine)] == [
        "digest:admin:2026-11-20:slack:C0ADMIN",
        "digest:admin:2026-11-20:email:boss@example.com",
    ]
    assert service.run_due("admin", late + timedelta(minutes=1)) == {ADMIN_SCOPE: "done"}
    assert len(outbox(sqlite_engine)) == 2


def test_a_digest_older_than_the_window_is_skipped_and_logged(
    sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    service = DigestService(make_config(), SqlDigestStore(SqlStore(sqlite_engine)), slack=True)
    too_late = FRIDAY_9 + timedelta(seconds=GRACE + 1)
    with caplog.at_level(logging.WARNING, logger="bot.digest"):
        outcomes = service.run_due("department", too_late)
    assert set(outcomes.values()) == {"skipped"} and len(outcomes) == len(CHANNELS)
    assert outbox(sqlite_engine) == []
    assert runs(sqlite_engine)[(department_scope("HR"), date(2026, 11, 20))] == "skipped"
    assert "digest department:HR:2026-11-20 (due 2026-11-20T09:00:00+00:00) skipped: missed by 3601s" in caplog.text
    # Logged once: another replica (or a restart) finds it recorded.
    caplog.clear()
    assert set(service.run_due("department", too_late).values()) == {"done"}
    assert "skipped" not in caplog.text
    # Monday's digest then reports since the last one delivered, so Friday's news is not lost.
    add_ticket(sqlite_engine, "HR", datetime(2026, 11, 19, 12, 0, tzinfo=UTC))
    service.run_due("department", datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC))
    monday = service.period_at(department_scope("HR"), datetime(2026, 11, 23, 9, 0, tzinfo=UTC))
    assert monday.starts_at == FRIDAY_9  # no digest delivered before: the previous scheduled time


def test_jobs_are_registered_with_coalescing_and_the_misfire_window(sqlite_engine: Engine) -> None:
    service = DigestService(make_config(), SqlDigestStore(SqlStore(sqlite_engine)))
    scheduler = BackgroundScheduler(timezone=TZ)
    service.register(scheduler)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"digest-department", "digest-admin", "digest-catch-up"}
    for kind in ("department", "admin"):
        job = jobs[f"digest-{kind}"]
        assert job.coalesce is True and job.misfire_grace_time == GRACE and job.max_instances == 1
    cron = "cron[month='*', day='*', day_of_week='mon-fri', hour='9', minute='0']"
    assert str(jobs["digest-department"].trigger) == cron
    disabled = DigestService(make_config(enabled=False), SqlDigestStore(SqlStore(sqlite_engine)))
    scheduler = BackgroundScheduler(timezone=TZ)
    disabled.register(scheduler)
    assert scheduler.get_jobs() == []


# -- exactly once: three schedulers, one PostgreSQL --------------------------------------------------------------------


@pytest.fixture
def three_engines(pg_engine: Engine) -> Iterator[list[Engine]]:
    """Three engines (three connection pools, as three processes have) on the test's private schema."""
    with pg_engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    others = [make_engine(PG_URL, schema=schema) for _ in range(2)]
    try:
        yield [pg_engine, *others]
    finally:
        for engine in others:
            engine.dispose()


def test_three_schedulers_on_one_postgresql_deliver_each_digest_once(
    three_engines: list[Engine], slack_api: FakeSlackAPI, tmp_path: Path
) -> None:
    add_channels(slack_api)
    config = make_config(slack_api.api_url)
    add_ticket(three_engines[0], "IT Support", FRIDAY_9 - timedelta(hours=3), priority="urgent")
    fired = threading.Semaphore(0)
    schedulers = []
    for engine in three_engines:
        service = DigestService(config, SqlDigestStore(SqlStore(engine)), slack=True, clock=lambda: FRIDAY_9)
        scheduler = BackgroundScheduler(timezone=TZ)
        service.register(scheduler)
        failures: list[BaseException] = []

        def done(event: JobExecutionEvent, failures: list[BaseException] = failures) -> None:
            if event.job_id == "digest-catch-up":
                if event.exception is not None:
                    failures.append(event.exception)
                fired.release()

        scheduler.add_listener(done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        schedulers.append((scheduler, failures))
    try:
        for scheduler, _ in schedulers:
            scheduler.start()  # each runs its start-up check at once: three processes firing together
        for _ in schedulers:
            assert fired.acquire(timeout=60)
    finally:
        for scheduler, _ in schedulers:
            scheduler.shutdown(wait=True)
    assert all(not failures for _, failures in schedulers)
    items = outbox(three_engines[0])
    assert len(items) == len(CHANNELS) + 2  # five department posts, the admin post and the admin email
    assert len({key for _, key, _ in items}) == len(items)
    assert set(runs(three_engines[0]).values()) == {"enqueued"} and len(runs(three_engines[0])) == len(CHANNELS) + 1

    store = SqlStore(three_engines[1])
    dispatcher = OutboxDispatcher(store=store, senders=senders(config, store, tmp_path))
    dispatcher.run_once(FRIDAY_9)
    for channel in [*CHANNELS.values(), ADMIN]:
        assert len(slack_api.posts(channel)) == 1, channel
    assert len(list(tmp_path.glob("*.eml"))) == 1


# -- delivery ----------------------------------------------------------------------------------------------------------


def senders(config: Config, store: SqlStore, mail_dir: Path) -> dict[OutboxKind, Sender]:
    client = WebClient(token=BOT_TOKEN, base_url=config.slack.api_url)
    slack = SlackDelivery(client=client, store=store, config=config).senders()
    return {
        OutboxKind.SLACK_DIGEST: slack[OutboxKind.SLACK_DIGEST],
        OutboxKind.DIGEST_EMAIL: FileReplySender(directory=mail_dir, instance_id="test"),
    }


@pytest.fixture
def delivery(sqlite_engine: Engine, slack_api: FakeSlackAPI, tmp_path: Path) -> dict[str, Any]:
    add_channels(slack_api)
    config = make_config(slack_api.api_url)
    store = SqlStore(sqlite_engine)
    add_ticket(sqlite_engine, "IT Support", FRIDAY_9 - timedelta(hours=5), summary="<!here> VPN & <@U1>")
    add_ticket(sqlite_engine, "Finance", FRIDAY_9 - timedelta(days=3), priority="urgent")
    service = DigestService(config, SqlDigestStore(store), slack=True)
    dispatcher = OutboxDispatcher(
        store=store, senders=senders(config, store, tmp_path), policy=RetryPolicy(base_delay=0.05, max_delay=1.0)
    )
    return {"service": service, "dispatcher": dispatcher, "engine": sqlite_engine, "mail": tmp_path}


def test_the_admin_digest_reaches_slack_with_its_chart_and_email_with_the_chart_inline(
    delivery: dict[str, Any], slack_api: FakeSlackAPI
) -> None:
    service: DigestService = delivery["service"]
    assert service.run_due("admin", FRIDAY_9) == {ADMIN_SCOPE: "sent"}
    delivery["dispatcher"].run_once(FRIDAY_9)
    assert {s for *_, s in outbox(delivery["engine"])} == {OutboxStatus.SENT.value}
    [post] = slack_api.posts(ADMIN)
    assert post["files"][0]["title"] == "Tickets per day per department, last 14 days"
    assert slack_api.files[post["files"][0]["id"]]["data"][:8] == b"\x89PNG\r\n\x1a\n"
    assert post["blocks"][0]["text"]["text"] == "Admin digest for Fri 20 Nov 2026"
    table = json.dumps(post["blocks"])
    assert "IT Support" in table and "Finance" in table
    [upload] = slack_api.calls("files.getUploadURLExternal")
    assert int(upload.params["length"]) == len(slack_api.files[post["files"][0]["id"]]["data"])

    [path] = delivery["mail"].glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=default_policy)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "boss@example.com" and message["Auto-Submitted"] == "auto-generated"
    assert message["Subject"] == "Admin digest for Fri 20 Nov 2026"
    html = message.get_body(("html",))
    plain = message.get_body(("plain",))
    assert html is not None and plain is not None
    images = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1
    cid = str(images[0]["Content-ID"]).strip("<>")
    assert f'src="cid:{cid}"' in html.get_content()
    assert images[0].get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IT Support" in plain.get_content()


def test_a_department_digest_is_posted_in_its_channel_with_untrusted_text_escaped(
    delivery: dict[str, Any], slack_api: FakeSlackAPI
) -> None:
    delivery["service"].run_due("department", FRIDAY_9)
    delivery["dispatcher"].run_once(FRIDAY_9)
    [post] = slack_api.posts(CHANNELS["IT Support"])
    blocks = json.dumps(post["blocks"])
    assert "IT Support digest for Fri 20 Nov 2026" in blocks
    assert "&lt;!here&gt; VPN &amp; &lt;@U1&gt;" in blocks and "<!here>" not in blocks
    [finance] = slack_api.posts(CHANNELS["Finance"])
    assert "Urgent and unassigned (1)" in json.dumps(finance["blocks"])
    [hr] = slack_api.posts(CHANNELS["HR"])
    assert "Quiet day" in json.dumps(hr["blocks"])
    [call] = slack_api.calls("chat.postMessage", channel=CHANNELS["IT Support"])
    assert call.params["metadata"]["event_type"] == "ticketbot_digest"


def test_slack_429_during_delivery_is_retried_and_the_digest_arrives_once(
    delivery: dict[str, Any], slack_api: FakeSlackAPI
) -> None:
    slack_api.fail("files.completeUploadExternal", status=429, retry_after=2)
    slack_api.fail("chat.postMessage", status=429, retry_after=2, channel=CHANNELS["HR"])
    service: DigestService = delivery["service"]
    service.run_due("admin", FRIDAY_9)
    service.run_due("department", FRIDAY_9)
    dispatcher: OutboxDispatcher = delivery["dispatcher"]
    dispatcher.run_once(FRIDAY_9)
    assert slack_api.posts(ADMIN) == [] and slack_api.posts(CHANNELS["HR"]) == []
    with delivery["engine"].connect() as conn:
        waiting = conn.execute(
            select(OutboxRow.dedupe_key, OutboxRow.next_attempt_at).where(OutboxRow.status == "pending")
        ).all()
    assert {k for k, _ in waiting} == {
        "digest:admin:2026-11-20:slack:C0ADMIN",
        "digest:department:HR:2026-11-20:slack:C0HR",
    }
    assert all(at >= FRIDAY_9 + timedelta(seconds=2) for _, at in waiting)  # Retry-After honoured
    dispatcher.run_once(FRIDAY_9 + timedelta(seconds=5))
    assert len(slack_api.posts(ADMIN)) == 1 and len(slack_api.posts(CHANNELS["HR"])) == 1
    # The upload of the failed attempt was never completed, so it was never shared.
    assert [f["shared"] for f in slack_api.files.values()] == [False, True]
    assert {s for *_, s in outbox(delivery["engine"])} == {"sent"}


def test_a_crash_mid_delivery_neither_loses_nor_repeats_a_digest(
    delivery: dict[str, Any], slack_api: FakeSlackAPI, tmp_path: Path
) -> None:
    service: DigestService = delivery["service"]
    service.run_due("admin", FRIDAY_9)
    store = SqlStore(delivery["engine"])
    # The first process dies after Slack but before the email: only the Slack sender ran.
    slack_only = {OutboxKind.SLACK_DIGEST: delivery["dispatcher"].senders[OutboxKind.SLACK_DIGEST]}
    OutboxDispatcher(store=store, senders=slack_only).run_once(FRIDAY_9)
    assert len(slack_api.posts(ADMIN)) == 1 and not list(delivery["mail"].glob("*.eml"))
    # A restarted process: the start-up check finds the digest recorded; the outbox sends only what is left.
    restarted = DigestService(service.config, SqlDigestStore(store), slack=True, clock=lambda: FRIDAY_9)
    restarted.catch_up()
    OutboxDispatcher(store=store, senders=delivery["dispatcher"].senders).run_once(FRIDAY_9 + timedelta(minutes=2))
    assert len(slack_api.posts(ADMIN)) == 1 and len(list(delivery["mail"].glob("*.eml"))) == 1
    assert len(outbox(delivery["engine"])) == 2 + len(CHANNELS)  # + the department digests the check sent


def test_a_post_slack_accepted_before_a_crash_is_not_posted_again(
    delivery: dict[str, Any], slack_api: FakeSlackAPI
) -> None:
    service: DigestService = delivery["service"]
    service.run_due("admin", FRIDAY_9)
    service.run_due("department", FRIDAY_9)
    store = SqlStore(delivery["engine"])
    sender = delivery["dispatcher"].senders[OutboxKind.SLACK_DIGEST]
    # The process posts both, then dies before the outbox records either as sent.
    claimed = store.claim_due_outbox(now=FRIDAY_9, limit=50, lease=timedelta(minutes=5))
    posted = {i.dedupe_key: sender.send(i) for i in claimed if i.kind is OutboxKind.SLACK_DIGEST}
    assert len(slack_api.posts(ADMIN)) == 1 and len(slack_api.posts(CHANNELS["HR"])) == 1
    # After the lease runs out another process takes the items: it finds the posts and records them.
    delivery["dispatcher"].run_once(FRIDAY_9 + timedelta(minutes=6))
    assert len(slack_api.posts(ADMIN)) == 1 and len(slack_api.posts(CHANNELS["HR"])) == 1
    assert len(slack_api.calls("files.completeUploadExternal")) == 1
    with delivery["engine"].connect() as conn:
        query = select(OutboxRow.dedupe_key, OutboxRow.sent_ref).where(OutboxRow.kind == "slack_digest")
        refs = dict(conn.execute(query).all())
    hr_key = "digest:department:HR:2026-11-20:slack:C0HR"
    assert refs[hr_key] == posted[hr_key]
    assert refs["digest:admin:2026-11-20:slack:C0ADMIN"] == f"{ADMIN}:{slack_api.posts(ADMIN)[0]['ts']}"


def test_a_429_on_the_history_check_is_retried_too(delivery: dict[str, Any], slack_api: FakeSlackAPI) -> None:
    slack_api.fail("conversations.history", status=429, retry_after=3, channel=CHANNELS["HR"])
    delivery["service"].run_due("department", FRIDAY_9)
    delivery["dispatcher"].run_once(FRIDAY_9)
    assert slack_api.posts(CHANNELS["HR"]) == [] and len(slack_api.posts(CHANNELS["IT Support"])) == 1
    delivery["dispatcher"].run_once(FRIDAY_9 + timedelta(seconds=4))
    assert len(slack_api.posts(CHANNELS["HR"])) == 1


def test_the_runtime_registers_the_digest_jobs_and_the_email_sender(bot_env: dict[str, str]) -> None:
    from bot.runtime import Runtime, SchedulerComponent
    from core.config import load_config, load_secrets

    runtime = Runtime.build(load_config(None), load_secrets())
    try:
        [component] = [c for c in runtime.components if isinstance(c, SchedulerComponent)]
        scheduler = BackgroundScheduler(timezone=TZ)
        for register in component.jobs:
            register(scheduler)
        digests = {"digest-department", "digest-admin", "digest-catch-up"}
        stats = {"stats-days-start", "stats-days-nightly"}  # the API is on by default: its day cache is kept warm
        assert {job.id for job in scheduler.get_jobs()} == digests | stats
        assert runtime.senders[OutboxKind.DIGEST_EMAIL] is runtime.senders[OutboxKind.EMAIL]
        assert OutboxKind.SLACK_DIGEST not in runtime.senders  # no Slack token in this environment
    finally:
        runtime.store.engine.dispose()


def test_the_chart_is_a_png() -> None:
    from core.digest import DailyCounts, Digest, DigestPeriod

    days = tuple(date(2026, 11, 6) + timedelta(days=n) for n in range(14))
    digest = Digest(
        DigestPeriod(ADMIN_SCOPE, date(2026, 11, 20), FRIDAY_9 - timedelta(days=1), FRIDAY_9, TZ),
        FRIDAY_9,
        3,
        (),
        daily=DailyCounts(days, {"IT Support": tuple(range(14)), "HR": (1,) * 14}),
    )
    assert chart_png(digest)[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command line --------------------------------------------------------------------------------------------------


def test_cli_dry_run_renders_and_delivery_is_recorded_once(bot_env: dict[str, str]) -> None:
    from bot.cli import main

    cli = CliRunner(env=bot_env)
    dry = cli.invoke(main, ["digest", "--scope", "it support", "--date", "2026-11-20", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("IT Support digest for Fri 20 Nov 2026\nPeriod: Thu 19 Nov 09:00 – Fri 20 Nov 09:00")
    as_json = cli.invoke(main, ["digest", "--date", "2026-11-20", "--dry-run", "--json"])
    data = json.loads(as_json.output)
    assert data["period"]["scope"] == "admin" and len(data["departments"]) == 5 and len(data["daily"]["days"]) == 14

    sent = cli.invoke(main, ["digest", "--date", "2026-11-20", "--json"])
    assert sent.exit_code == 0, sent.output
    assert json.loads(sent.output)["delivered"] is True  # no Slack token and no admin_emails: nothing to queue
    again = cli.invoke(main, ["digest", "--date", "2026-11-20"])
    assert again.exit_code == 2 and "already delivered" in again.output
    bad = cli.invoke(main, ["digest", "--scope", "Legal"])
    assert bad.exit_code == 2 and "no department 'Legal'" in bad.output
    bad_date = cli.invoke(main, ["digest", "--date", "20/11/2026", "--dry-run"])
    assert bad_date.exit_code == 2 and "not a date" in bad_date.output


def test_cli_delivers_a_digest_the_scheduler_skipped(bot_env: dict[str, str], sqlite_engine: Engine) -> None:
    from bot.cli import main

    cli = CliRunner(env={**bot_env, "TICKETBOT_DIGESTS__ADMIN_EMAILS": '["boss@example.com"]'})
    assert cli.invoke(main, ["digest", "--dry-run"]).exit_code == 0  # creates the database
    db = Path(bot_env["TICKETBOT_DATA_DIR"]) / "ticketbot.db"
    engine = make_engine(f"sqlite:///{db}")
    try:
        service = DigestService(make_config(), SqlDigestStore(SqlStore(engine)))
        service.run_due("admin", FRIDAY_9 + timedelta(hours=5))
        assert runs(engine) == {(ADMIN_SCOPE, date(2026, 11, 20)): "skipped"}
        sent = cli.invoke(main, ["digest", "--date", "2026-11-20"])
        assert sent.exit_code == 0, sent.output
        assert "admin:2026-11-20: queued 1 deliveries (email boss@example.com)" in sent.output
        assert runs(engine) == {(ADMIN_SCOPE, date(2026, 11, 20)): "enqueued"}
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(OutboxRow)).scalar_one() == 1
    finally:
        engine.dispose()

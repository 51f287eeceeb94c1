"""Command line: `ticketbot` submits, inspects and changes tickets, runs the bot, trains and evaluates."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from core.config import Config, Secrets, config_path, load_config, load_secrets
from core.errors import InvalidInput, NotFound, TicketbotError
from core.inbound import InboundRecord, InboundStatus, StoredInbound
from core.message import Channel
from core.outbox import OutboxStatus
from core.pipeline import Pipeline
from core.ports import TicketFilter
from core.ticket import Priority, Status, Ticket, TicketEvent

F = TypeVar("F", bound=Callable[..., Any])
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class Context:
    """Lazily built services for one CLI invocation: a command that needs no database opens none."""

    def __init__(self, config_file: str | None) -> None:
        self.config_file = config_file

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_file)

    @cached_property
    def secrets(self) -> Secrets:
        return load_secrets()

    @cached_property
    def store(self) -> Any:
        from bot.runtime import open_store

        return open_store(self.config)

    @cached_property
    def pipeline(self) -> Pipeline:
        from bot.runtime import build_classifier, build_pipeline, email_decoders

        classifier = build_classifier(self.config, self.secrets)
        return build_pipeline(self.config, self.store, classifier, decoders=email_decoders(self.config))


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(2)


@contextmanager
def errors() -> Iterator[None]:
    """Every expected failure is one line naming the problem, exit code 2, nothing changed."""
    try:
        yield
    except TicketbotError as exc:
        fail(str(exc))


def dump_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def ticket_json(ticket: Ticket) -> dict[str, Any]:
    data = asdict(ticket)
    data["ref"] = ticket.ref
    return data


def event_json(event: TicketEvent) -> dict[str, Any]:
    return asdict(event)


def parse_status(value: str) -> Status:
    try:
        return Status(value.strip().lower().replace(" ", "_").replace("-", "_"))
    except ValueError:
        raise InvalidInput(f"unknown status {value!r}; choose one of: {', '.join(s.value for s in Status)}") from None


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="TICKETBOT_CONFIG",
    help="Config file (default: ./config.yaml; env TICKETBOT_CONFIG).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """ticketbot: turns support emails and Slack requests into classified, routed tickets."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = Context(config_file)


# -- run / db / config ------------------------------------------------------------------------------


@main.command()
@pass_ctx
def run(ctx: Context) -> None:
    """Run the bot: intake channels, the processor, the outbox and the scheduler, until Ctrl-C."""
    from bot.runtime import Runtime, configure_logging

    with errors():
        config = ctx.config
        configure_logging(config.log_level)
        runtime = Runtime.build(config, ctx.secrets)
    with errors():
        runtime.run_forever()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Apply database migrations (idempotent)."""
    from storage.db import ensure_schema, make_engine

    with errors():
        engine = make_engine(ctx.config.database_url)
        ensure_schema(engine)  # under PostgreSQL's advisory lock: replicas starting together take turns
        click.echo(f"database at the latest schema: {engine.url.render_as_string(hide_password=True)}")


@main.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("check")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Config file to check.")
@pass_ctx
def config_check(ctx: Context, config_file: str | None) -> None:
    """Validate the config file and environment; name every bad key and why (exit 2)."""
    path = config_file or ctx.config_file
    with errors():
        config = load_config(path)
        load_secrets()
    if config.digests.enabled:
        # The digest schedules go through APScheduler's own cron parser, as `run` does when it starts.
        from bot.digest import DigestSchedule

        bad = []
        for key in ("department_cron", "admin_cron"):
            try:
                DigestSchedule(getattr(config.digests, key), config.digests.timezone)
            except TicketbotError as exc:
                bad.append(f"digests.{key}: {str(exc).removeprefix('digests: ')}")
        if bad:
            fail(f"{config_path(path)}: " + "; ".join(bad))
    click.echo(f"{config_path(path)}: OK ({len(config.departments)} departments: {', '.join(config.department_names)})")


# -- submit and tickets ---------------------------------------------------------------------------


@main.command()
@click.option("--from", "sender", required=True, help="Requester's email address or Slack user id.")
@click.option("--subject", default="", help="Subject line.")
@click.option("--name", "sender_name", default="", help="Requester's display name.")
@click.option("--json", "as_json", is_flag=True, help="Print the ticket as JSON.")
@click.argument("text", nargs=-1)
@pass_ctx
def submit(ctx: Context, sender: str, subject: str, sender_name: str, as_json: bool, text: tuple[str, ...]) -> None:
    """Create a ticket from TEXT through the same pipeline as every channel."""
    body = " ".join(text).strip()
    if not body and not subject.strip():
        fail("empty request: give the request text (and optionally --subject)")
    if not sender.strip():
        fail("--from must name the requester")
    with errors():
        store = ctx.store
        payload = json.dumps({"sender": sender.strip(), "sender_name": sender_name, "subject": subject, "body": body})
        received = store.receive(
            InboundRecord(
                channel=Channel.CLI,
                dedupe_key=f"cli:{uuid.uuid4()}",
                payload=payload.encode(),
                received_at=datetime.now(UTC),
            )
        )
        row = store.claim_inbound_by_id(received.id, now=datetime.now(UTC), lease=timedelta(minutes=5))
        if row is None:
            raise TicketbotError(f"inbound message {received.id} was taken by a running worker; see `tickets list`")
        outcome = ctx.pipeline.process(row)
        if outcome.ticket is None:
            raise InvalidInput(f"request not ticketed: {outcome.reason}")
        ticket = outcome.ticket
    if as_json:
        dump_json(ticket_json(ticket))
        return
    out.print(f"#{ticket.id} → {ticket.department} ({ticket.priority.value}, {ticket.confidence:.0%})", highlight=False)
    if ticket.triaged:
        out.print(f"  sent to triage: confidence below {ctx.config.routing.confidence_threshold:.0%}", highlight=False)
    out.print(f"  {ticket.summary}", highlight=False, markup=False)


@main.group()
def tickets() -> None:
    """List, show and change tickets."""


@tickets.command("list")
@click.option("--department", help="Only this department.")
@click.option("--status", help="Only this status.")
@click.option("--requester", help="Only this requester.")
@click.option("--open", "open_only", is_flag=True, help="Only open tickets.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tickets_list(
    ctx: Context,
    department: str | None,
    status: str | None,
    requester: str | None,
    open_only: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List tickets, newest first."""
    with errors():
        dept = None
        if department:
            found = ctx.config.department(department)
            if found is None:
                raise InvalidInput(
                    f"unknown department {department!r}; choose one of: {', '.join(ctx.config.department_names)}"
                )
            dept = found.name
        flt = TicketFilter(
            department=dept,
            status=parse_status(status) if status else None,
            requester=requester,
            open_only=open_only,
            limit=limit,
        )
        rows = ctx.store.list_tickets(flt)
    if as_json:
        dump_json([ticket_json(t) for t in rows])
        return
    table = Table(
        "ID", "Created", "Department", "Priority", "Status", "Requester", "Summary", title=f"{len(rows)} tickets"
    )
    for t in rows:
        table.add_row(
            t.ref,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            t.department,
            t.priority.value,
            t.status.value,
            t.requester,
            t.summary[:60],
        )
    out.print(table)


@tickets.command("show")
@click.argument("ticket_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def tickets_show(ctx: Context, ticket_id: int, as_json: bool) -> None:
    """Show one ticket with its events."""
    with errors():
        ticket = ctx.store.get_ticket(ticket_id)
        if ticket is None:
            raise NotFound(f"no ticket #{ticket_id}")
        events = ctx.store.ticket_events(ticket_id)
    if as_json:
        dump_json({**ticket_json(ticket), "events": [event_json(e) for e in events]})
        return
    out.print(f"[bold]{ticket.ref}[/] {ticket.subject}", highlight=False)
    for label, value in [
        ("requester", f"{ticket.requester_name} <{ticket.requester}>" if ticket.requester_name else ticket.requester),
        ("channel", ticket.channel.value),
        ("department", ticket.department + (" (triage)" if ticket.triaged else "")),
        ("priority", ticket.priority.value),
        ("status", ticket.status.value),
        ("assignee", ticket.assignee or "-"),
        ("classifier", f"{ticket.classifier} ({ticket.confidence:.0%})"),
        ("summary", ticket.summary),
        ("created", f"{ticket.created_at:%Y-%m-%d %H:%M:%S} UTC"),
    ]:
        out.print(f"  {label:<11} {value}", highlight=False, markup=False)
    out.print()
    out.print(ticket.body, highlight=False, markup=False)
    table = Table("When", "Event", "Actor", "Details", title="Events")
    for e in events:
        details = ", ".join(f"{k}={v}" for k, v in e.data.items() if v not in (None, ""))
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.kind.value, e.actor, details[:100])
    out.print(table)


@tickets.command("set-status")
@click.argument("ticket_id", type=int)
@click.argument("status")
@click.option("--note", help="Why; recorded with the event and sent to the requester.")
@click.option("--actor", default="cli", show_default=True, help="Who made the change.")
@pass_ctx
def tickets_set_status(ctx: Context, ticket_id: int, status: str, note: str | None, actor: str) -> None:
    """Change a ticket's status (new, in_progress, waiting, resolved, closed)."""
    with errors():
        new_status = parse_status(status)
        if ctx.store.get_ticket(ticket_id) is None:
            raise NotFound(f"no ticket #{ticket_id}")
        ticket = ctx.pipeline.change_status(ticket_id, new_status, actor=actor, note=note)
    out.print(f"{ticket.ref} is now {ticket.status.value}", highlight=False)


@tickets.command("set-priority")
@click.argument("ticket_id", type=int)
@click.argument("priority")
@click.option("--note", help="Why; recorded with the event.")
@click.option("--actor", default="cli", show_default=True, help="Who made the change.")
@pass_ctx
def tickets_set_priority(ctx: Context, ticket_id: int, priority: str, note: str | None, actor: str) -> None:
    """Change a ticket's priority (low, medium, high, urgent); recorded as a correction."""
    with errors():
        new_priority = parse_priority(priority)
        if ctx.store.get_ticket(ticket_id) is None:
            raise NotFound(f"no ticket #{ticket_id}")
        ticket = ctx.pipeline.set_priority(ticket_id, new_priority, actor=actor, note=note)
    out.print(f"{ticket.ref} is now {ticket.priority.value} priority", highlight=False)


@tickets.command("reroute")
@click.argument("ticket_id", type=int)
@click.argument("department")
@click.option("--note", help="Why; recorded with the event.")
@click.option("--actor", default="cli", show_default=True, help="Who made the change.")
@pass_ctx
def tickets_reroute(ctx: Context, ticket_id: int, department: str, note: str | None, actor: str) -> None:
    """Move a ticket to another department (recorded; retraining learns from it)."""
    with errors():
        if ctx.config.department(department) is None:
            raise InvalidInput(
                f"unknown department {department!r}; choose one of: {', '.join(ctx.config.department_names)}"
            )
        if ctx.store.get_ticket(ticket_id) is None:
            raise NotFound(f"no ticket #{ticket_id}")
        ticket = ctx.pipeline.reroute(ticket_id, department, actor=actor, note=note)
    out.print(f"{ticket.ref} → {ticket.department}", highlight=False)


# -- training and evaluation ----------------------------------------------------------------------


def read_mapping(path: str | None) -> dict[str, str | None] | None:
    from core.classify.train import load_mapping

    return load_mapping(Path(path)) if path else None


@main.command()
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False), help="Ticket history CSV.")
@click.option("--text-col", help="Column with the ticket text (body).")
@click.option("--subject-col", help="Column with the subject, if separate.")
@click.option("--label-col", help="Column with the department (or a label --map turns into one).")
@click.option("--map", "map_file", type=click.Path(dir_okay=False), help="JSON mapping of CSV labels to departments.")
@click.option("--from-history", is_flag=True, help="Also learn from this bot's tickets: corrections and resolved ones.")
@click.option("--no-shipped", is_flag=True, help="Leave out the knowledge shipped with ticketbot.")
@click.option("--output", type=click.Path(dir_okay=False), help="Where to save (default: the configured model path).")
@pass_ctx
def train(
    ctx: Context,
    csv_file: str | None,
    text_col: str | None,
    subject_col: str | None,
    label_col: str | None,
    map_file: str | None,
    from_history: bool,
    no_shipped: bool,
    output: str | None,
) -> None:
    """Train the offline classifier on your ticket history; `run` and `submit` use it from then on."""
    from core.classify.train import save_model, ticket_text, train_from_csv, train_from_examples

    if not csv_file and not from_history:
        fail("give --csv FILE (with --text-col and --label-col), --from-history, or both")
    if csv_file and not (text_col and label_col):
        fail("--csv needs --text-col and --label-col")
    with errors():
        config = ctx.config
        history: list[tuple[str, str]] = []
        if from_history:
            history = [(ticket_text(subj, body), dept) for subj, body, dept in ctx.store.labelled_history()]
            click.echo(f"history: {len(history)} confirmed tickets (corrections and resolved)")
        with err.status("training…"):
            if csv_file:
                report = train_from_csv(
                    Path(csv_file),
                    text_col or "",
                    label_col or "",
                    subject_col=subject_col,
                    mapping=read_mapping(map_file),
                    include_shipped=not no_shipped,
                    extra_examples=history,
                    departments=config.department_names,
                )
                model = report.model
                for warning in report.warnings:
                    err.print(f"warning: {warning}", highlight=False, markup=False)
                click.echo(
                    f"trained on {report.csv_examples} CSV rows + {report.shipped_examples} shipped examples"
                    f" + {report.extra_examples} history examples in {report.seconds:.1f}s"
                )
            else:
                if not history:
                    raise InvalidInput("no confirmed tickets in the history yet: nothing to learn from")
                model = train_from_examples(
                    history, departments=config.department_names, include_shipped=not no_shipped
                )
        path = Path(output) if output else config.model_path
        save_model(model, path)
    click.echo(f"saved model {model.version} ({model.examples} examples) to {path}")


@main.command("eval")
@click.option("--csv", "csv_file", required=True, type=click.Path(dir_okay=False), help="Labelled CSV.")
@click.option("--text-col", required=True, help="Column with the ticket text.")
@click.option("--subject-col", help="Column with the subject, if separate.")
@click.option("--label-col", required=True, help="Column with the expected department.")
@click.option("--map", "map_file", type=click.Path(dir_okay=False), help="JSON mapping of CSV labels to departments.")
@click.option(
    "--classifier",
    "which",
    type=click.Choice(["configured", "offline", "claude"]),
    default="configured",
    show_default=True,
    help="Which classifier to evaluate.",
)
@click.option("--limit", type=click.IntRange(1), help="Only the first N rows.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def eval_command(
    ctx: Context,
    csv_file: str,
    text_col: str,
    subject_col: str | None,
    label_col: str,
    map_file: str | None,
    which: str,
    limit: int | None,
    as_json: bool,
) -> None:
    """Score a classifier on a labelled CSV: accuracy, macro-F1, per-department precision/recall, latency."""
    import itertools

    from rich.progress import track

    from bot.runtime import build_classifier
    from core.classify.train import evaluate, read_labeled_csv

    with errors():
        config = ctx.config
        secrets = ctx.secrets
        if which == "offline":
            config = config.model_copy(update={"classifier": config.classifier.model_copy(update={"mode": "offline"})})
        elif which == "claude":
            if secrets.anthropic_api_key is None:
                raise InvalidInput("--classifier claude needs ANTHROPIC_API_KEY in the environment")
            config = config.model_copy(update={"classifier": config.classifier.model_copy(update={"mode": "claude"})})
        classifier = build_classifier(config, secrets)
        rows = read_labeled_csv(
            Path(csv_file), text_col, label_col, subject_col=subject_col, mapping=read_mapping(map_file)
        )
        if limit:
            rows = itertools.islice(rows, limit)
        progress = track(rows, description="classifying", console=err, transient=True, disable=as_json)
        report = evaluate(classifier, progress)
    usage = claude_usage(classifier)
    if as_json:
        data = asdict(report)
        data["classifier"] = classifier.name
        if usage:
            data["claude"] = usage
        dump_json(data)
        return
    out.print(f"classifier: {classifier.name}", highlight=False)
    out.print(report.format(), highlight=False, markup=False)
    if usage:
        out.print(
            f"claude: {usage['requests']} requests, {usage['tokens_in']} input + {usage['tokens_out']} output tokens "
            f"({usage['cache_read_tokens']} read from cache); estimated cost ${usage['estimated_usd']:.4f}",
            highlight=False,
        )


# Per million tokens, for the cost estimate `eval` prints; list prices change, so this is a guide only.
CLAUDE_PRICE_PER_MTOK = {"input": 1.00, "output": 5.00, "cache_read": 0.10}


def claude_usage(classifier: object) -> dict[str, Any] | None:
    primary = getattr(classifier, "primary", None)
    stats_of = getattr(primary, "stats", None)
    if not callable(stats_of):
        return None
    stats = stats_of()
    fresh_in = stats.tokens_in - stats.cache_read_tokens
    cost = (
        fresh_in * CLAUDE_PRICE_PER_MTOK["input"]
        + stats.cache_read_tokens * CLAUDE_PRICE_PER_MTOK["cache_read"]
        + stats.tokens_out * CLAUDE_PRICE_PER_MTOK["output"]
    ) / 1_000_000
    return {
        "requests": stats.requests,
        "tokens_in": stats.tokens_in,
        "tokens_out": stats.tokens_out,
        "cache_read_tokens": stats.cache_read_tokens,
        "estimated_usd": round(cost, 6),
    }


# -- inbound and outbox -----------------------------------------------------------------------------


def inbound_json(row: StoredInbound) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel.value,
        "status": row.status.value,
        "received_at": row.received_at,
        "attempts": row.attempts,
        "message_id": row.message_id,
        "reason": row.last_error,
        "ticket_id": row.ticket_id,
        "size": len(row.payload),
    }


@main.group()
def inbound() -> None:
    """Stored inbound messages (parked ones wait for a person)."""


@inbound.command("list")
@click.option("--status", type=click.Choice([s.value for s in InboundStatus]), help="Only this status.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def inbound_list(ctx: Context, status: str | None, limit: int, as_json: bool) -> None:
    """List inbound messages, newest first."""
    with errors():
        rows = ctx.store.list_inbound(status=InboundStatus(status) if status else None, limit=limit)
    if as_json:
        dump_json([inbound_json(r) for r in rows])
        return
    table = Table(
        "ID", "Received", "Channel", "Status", "Tries", "Ticket", "Reason / Message-ID", title=f"{len(rows)} inbound"
    )
    for r in rows:
        table.add_row(
            str(r.id),
            f"{r.received_at:%Y-%m-%d %H:%M}",
            r.channel.value,
            r.status.value,
            str(r.attempts),
            f"#{r.ticket_id}" if r.ticket_id else "-",
            (r.last_error or r.message_id or "")[:70],
        )
    out.print(table)


@inbound.command("retry")
@click.argument("inbound_id", type=int)
@pass_ctx
def inbound_retry(ctx: Context, inbound_id: int) -> None:
    """Process a parked or ignored message again (now, in this process)."""
    with errors():
        ctx.store.retry_inbound(inbound_id)
        row = ctx.store.claim_inbound_by_id(inbound_id, now=datetime.now(UTC), lease=timedelta(minutes=5))
        if row is None:
            click.echo(f"inbound {inbound_id} queued; the running bot will process it")
            return
        outcome = ctx.pipeline.process(row)
    where = f" → ticket #{outcome.ticket.id}" if outcome.ticket else f" ({outcome.reason})" if outcome.reason else ""
    click.echo(f"inbound {inbound_id}: {outcome.status.value}{where}")


@main.group()
def outbox() -> None:
    """Outbound replies and posts waiting, sent or parked."""


@outbox.command("list")
@click.option("--status", type=click.Choice([s.value for s in OutboxStatus]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def outbox_list(ctx: Context, status: str | None, limit: int, as_json: bool) -> None:
    """List outbox items, newest first."""
    with errors():
        rows = ctx.store.list_outbox(status=OutboxStatus(status) if status else None, limit=limit)
    if as_json:
        dump_json([asdict(r) for r in rows])
        return
    table = Table("ID", "Kind", "Ticket", "Status", "Tries", "Next attempt", "Error", title=f"{len(rows)} outbox items")
    for r in rows:
        table.add_row(
            str(r.id),
            r.kind.value,
            f"#{r.ticket_id}" if r.ticket_id else "-",
            r.status.value,
            str(r.attempts),
            f"{r.next_attempt_at:%H:%M:%S}",
            (r.last_error or "")[:60],
        )
    out.print(table)


@outbox.command("retry")
@click.argument("item_id", type=int)
@pass_ctx
def outbox_retry(ctx: Context, item_id: int) -> None:
    """Send a parked item again."""
    with errors():
        ctx.store.retry_outbox(item_id)
    click.echo(f"outbox {item_id} queued for delivery")


@main.command()
@click.option("--days", type=click.IntRange(1, 3650), help="Only tickets created in the last N days.")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def stats(ctx: Context, days: int | None, as_json: bool) -> None:
    """Classification and delivery figures: per-classifier counts, fallbacks, latency, tokens, queues."""
    since = datetime.now(UTC) - timedelta(days=days) if days else None
    with errors():
        store = ctx.store
        classifiers = store.classifier_stats(since=since)
        inbound_counts = store.inbound_counts()
        outbox_counts = store.outbox_counts()
    total = sum(c["tickets"] for c in classifiers)
    fallbacks = sum(c["fallbacks"] for c in classifiers)
    summary = {
        "tickets": total,
        "fallback_rate": fallbacks / total if total else 0.0,
        "classifiers": classifiers,
        "inbound": inbound_counts,
        "outbox": outbox_counts,
    }
    if as_json:
        dump_json(summary)
        return
    table = Table(
        "Classifier",
        "Tickets",
        "Fallbacks",
        "Triaged",
        "Mean conf.",
        "Mean ms",
        "Max ms",
        "Tokens in",
        "Tokens out",
        title=f"Classification ({'last ' + str(days) + ' days' if days else 'all time'})",
    )
    for c in classifiers:
        table.add_row(
            c["classifier"],
            str(c["tickets"]),
            str(c["fallbacks"]),
            str(c["triaged"]),
            f"{c['mean_confidence']:.0%}",
            f"{c['mean_latency_ms']:.1f}",
            f"{c['max_latency_ms']:.1f}",
            str(c["tokens_in"]),
            str(c["tokens_out"]),
        )
    out.print(table)
    out.print(f"fallback rate: {summary['fallback_rate']:.1%} of {total} tickets", highlight=False)
    out.print(
        "inbound: " + (", ".join(f"{k} {v}" for k, v in sorted(inbound_counts.items())) or "none"), highlight=False
    )
    out.print("outbox: " + (", ".join(f"{k} {v}" for k, v in sorted(outbox_counts.items())) or "none"), highlight=False)


@main.group()
def mail() -> None:
    """Email helpers."""


@mail.command("send-test")
@click.option("--to", "to", help="Recipient (default: the first support address).")
@click.option("--from", "sender", help="Sender (default: newcomer@<first allowed domain>).")
@click.option("--port", type=int, help="SMTP intake port (default: email.smtp_intake.port).")
@pass_ctx
def mail_send_test(ctx: Context, to: str | None, sender: str | None, port: int | None) -> None:
    """Send a sample request to the running bot's SMTP intake, to see the round trip."""
    import smtplib
    from email.message import EmailMessage
    from email.utils import make_msgid

    with errors():
        config = ctx.config
    intake = config.email.smtp_intake
    domain = next((d for d in config.email.allowed_sender_domains if d != "*"), "example.com")
    message = EmailMessage()
    message["From"] = sender or f"newcomer@{domain}"
    message["To"] = to or config.email.support_addresses[0]
    message["Subject"] = "My laptop cannot connect to the VPN"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(
        "Hello,\n\nsince this morning my laptop cannot connect to the VPN from home. "
        "It says the authentication failed, although my password works for email.\n\nThanks,\nA newcomer\n"
    )
    host = "127.0.0.1" if intake.host in ("0.0.0.0", "::", "") else intake.host
    try:
        with smtplib.SMTP(host, port or intake.port, timeout=30) as client:
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        fail(
            f"could not deliver to the SMTP intake at {host}:{port or intake.port}: {exc} (is `ticketbot run` running?)"
        )
    click.echo(
        f"sent {message['Message-ID']} from {message['From']} to {message['To']} via {host}:{port or intake.port}"
    )
    if config.email.relay is None:
        click.echo(f"the acknowledgement will appear in {config.outbox_dir}/ within a few seconds")
    click.echo("see the ticket with: ticketbot tickets list")


def parse_priority(value: str) -> Priority:
    try:
        return Priority(value.strip().lower())
    except ValueError:
        raise InvalidInput(
            f"unknown priority {value!r}; choose one of: {', '.join(p.value for p in Priority)}"
        ) from None


if __name__ == "__main__":  # pragma: no cover
    # `python -m bot.cli`: run the CLI of the module imported under its own name, where the commands below are
    # registered. Registering them here too would import bot.cli a second time, half-built, and fail.
    from bot.cli import main as registered

    registered()
else:
    # Registered last: these modules import this one for Context and the helpers.
    from bot.cli_api import tokens as _tokens
    from bot.cli_digest import digest as _digest
    from bot.cli_io import export as _export
    from bot.cli_io import import_ as _import

    for _command in (_digest, _tokens, _import, _export):
        main.add_command(_command)

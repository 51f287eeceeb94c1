"""Command line for the summarise stage: `ticketbot digest` renders a digest, or delivers it now through the outbox."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import click

from core.digest import digest_to_json, render_text
from core.errors import InvalidInput

if TYPE_CHECKING:
    from bot.cli import Context


@click.command("digest")
@click.option("--scope", default="admin", show_default=True, help="admin, or a department's name.")
@click.option("--date", "day", help="The digest's day, YYYY-MM-DD in the digest timezone (default: today).")
@click.option("--dry-run", is_flag=True, help="Render it here; record and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the digest's figures as JSON.")
@click.pass_obj  # the CLI's Context (bot.cli.main sets it), as pass_ctx passes it
def digest(ctx: Context, scope: str, day: str | None, dry_run: bool, as_json: bool) -> None:
    """Render a digest (--dry-run) or deliver it now: recorded once per scope and day, sent by `ticketbot run`.

    A digest already delivered for that day (by the scheduler or an earlier command) is not sent again.
    """
    # Imported here, not at the top: bot.cli imports this module to register the command, and under
    # `python -m bot.cli` that module is __main__, so a top-level import would run a half-built bot.cli.
    from bot.cli import dump_json, errors, fail
    from bot.digest import DigestService
    from storage.digests import SqlDigestStore

    with errors():
        config = ctx.config
        service = DigestService(config, SqlDigestStore(ctx.store), slack=ctx.secrets.slack_bot_token is not None)
        scope_name = service.scope_for(scope)
        now = datetime.now(UTC)
        tz = ZoneInfo(config.digests.timezone)
        target = _parse_day(day) if day else now.astimezone(tz).date()
        period = service.period_on(scope_name, target, now=now)
        if dry_run:
            composed = service.compose(period, now=now)
            if as_json:
                dump_json(digest_to_json(composed))
            else:
                click.echo(render_text(composed), nl=False)
            return
        status = service.store.digest_status(period.scope, period.day)
        if status == "enqueued":
            fail(f"the {period.key} digest was already delivered; use --dry-run to see it")
        composed = service.compose(period, now=now)
        items = service.items(composed)
        claimed = service.store.claim_digest(period, items, now=now, retake_skipped=True)
    if not claimed:
        fail(f"the {period.key} digest was delivered meanwhile by another process")
    if as_json:
        dump_json({"delivered": True, "outbox": [i.dedupe_key for i in items], "digest": digest_to_json(composed)})
        return
    where = ", ".join(i.dedupe_key.rsplit(":", 2)[-2] + " " + i.dedupe_key.rsplit(":", 1)[-1] for i in items)
    click.echo(f"{period.key}: queued {len(items)} deliveries ({where or 'no destination configured'})")
    click.echo("`ticketbot run` sends them (see `ticketbot outbox list`)")


def _parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--date: {value!r} is not a date (YYYY-MM-DD)") from None

"""Command line for bulk data: `ticketbot import FILE` (CSV, JSON, JSON Lines, XML) and `ticketbot export`."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli import Context, dump_json, err, errors, out
from bot.io.export import ExportFormat, write_export
from bot.io.importer import (
    Importer,
    ImportOptions,
    ImportReport,
    RowError,
    import_classifier,
    parse_mapping,
    quick_handover,
    router_for,
)
from bot.io.readers import DEFAULT_MAX_ROW_BYTES, Format, format_from_name
from core.errors import InvalidInput
from core.message import Channel
from core.ticket import Priority, Status
from storage.imports import SqlImportStore
from storage.queries import TicketQuery, iter_tickets

SHOWN_ERRORS = 20  # bad rows printed; --errors FILE gets every one


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice([f.value for f in Format]), help="Default: from the extension.")
@click.option("--map", "pairs", multiple=True, metavar="FIELD=COLUMN", help="Read FIELD from COLUMN; repeatable.")
@click.option("--map-file", type=click.Path(exists=True, dir_okay=False), help="JSON or YAML {field: column}.")
@click.option("--classify", is_flag=True, help="Route rows without a department with the offline classifier.")
@click.option("--dry-run", is_flag=True, help="Read, validate and count; change nothing.")
@click.option("--namespace", default="", help="Prefix for external ids, when files from several systems collide.")
@click.option("--encoding", default="utf-8", show_default=True, help="CSV text encoding (ASCII-compatible).")
@click.option("--delimiter", help="CSV delimiter (default: guessed from the header among , ; tab |).")
@click.option("--max-row-bytes", type=click.IntRange(1024), default=DEFAULT_MAX_ROW_BYTES, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 50_000), default=5000, show_default=True)
@click.option("--errors", "errors_file", type=click.Path(dir_okay=False), help="Write every bad row to this CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj  # the CLI's Context (bot.cli.main sets it); pass_ctx would make an import cycle for mypy
def import_(
    ctx: Context,
    file: Path,
    fmt: str | None,
    pairs: tuple[str, ...],
    map_file: str | None,
    classify: bool,
    dry_run: bool,
    namespace: str,
    encoding: str,
    delimiter: str | None,
    max_row_bytes: int,
    batch_size: int,
    errors_file: str | None,
    as_json: bool,
) -> None:
    """Import tickets from FILE: historical data, so nobody is mailed or posted to.

    Good rows are imported, bad rows reported by number with the reason, rows imported before are skipped.
    Exit code 0: every row imported or already there; 1: some rows bad; 2: the file could not be used.
    Fields: external_id, id, subject, body, requester, requester_name, department, priority, status,
    assignee, channel, summary, created_at, updated_at, resolved_at (see docs/import-export.md).
    """
    with errors():
        chosen = Format(fmt) if fmt else format_from_name(file.name)
        if chosen is None:
            raise InvalidInput(f"cannot tell the format of {file.name}; give --format csv|json|jsonl|xml")
        options = ImportOptions(
            format=chosen,
            source=file.name,
            mapping=parse_mapping(pairs, map_file),
            classify=classify,
            dry_run=dry_run,
            channel=Channel.CLI,
            actor="cli:import",
            namespace=namespace,
            encoding=encoding,
            delimiter=delimiter,
            max_row_bytes=max_row_bytes,
            batch_size=batch_size,
        )
        config = ctx.config
        importer = Importer(
            store=SqlImportStore(ctx.store.engine),
            router=router_for(config),
            classifier=import_classifier(config) if classify else None,
        )
        with (
            file.open("rb") as stream,
            _error_sink(errors_file) as on_error,
            _progress(file) as progress,
            quick_handover(),
        ):
            report = importer.run(stream, options, progress=lambda r: progress(stream.tell(), r), on_error=on_error)
    if as_json:
        dump_json(report.as_dict())
    else:
        print_report(report)
    sys.exit(report.exit_code)


@contextmanager
def _progress(file: Path) -> Iterator[Callable[[int, ImportReport], None]]:
    """A progress bar on stderr (over the bytes read) for files worth waiting on, when stderr is a terminal."""
    size = file.stat().st_size
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal or size < 1024 * 1024,
    )
    with bar:
        task = bar.add_task("reading", total=size)

        def update(position: int, report: ImportReport) -> None:
            bar.update(task, completed=position, description=f"{report.rows:,} rows")

        yield update


@contextmanager
def _error_sink(path: str | None) -> Iterator[Callable[[RowError], None] | None]:
    """Every bad row to a CSV (row, line, reason) when asked: the report lists only the first ones."""
    if path is None:
        yield None
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "line", "reason"])

        def write(error: RowError) -> None:
            writer.writerow([error.row, "" if error.line is None else error.line, error.reason])

        yield write


def print_report(report: ImportReport) -> None:
    verb = "would import" if report.dry_run else "imported"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("rows read", f"{report.rows:,}")
    table.add_row(verb, f"{report.imported:,}")
    table.add_row("duplicates skipped", f"{report.duplicates:,}")
    table.add_row("bad rows", f"{report.bad:,}")
    if report.classified:
        table.add_row("classified", f"{report.classified:,}")
    if report.triaged:
        table.add_row("sent to triage", f"{report.triaged:,}")
    out.print(table)
    if report.ignored_fields:
        out.print(f"ignored fields: {', '.join(report.ignored_fields)}", highlight=False)
    for error in report.errors[:SHOWN_ERRORS]:
        out.print(f"  {error.describe()}", highlight=False, markup=False)
    hidden = report.bad - min(len(report.errors), SHOWN_ERRORS)
    if hidden > 0:
        out.print(f"  … and {hidden:,} more bad rows (write them all with --errors FILE)", highlight=False)
    if report.fatal:
        err.print(f"[bold red]stopped:[/] {report.fatal}", highlight=False, markup=True)


# -- export -----------------------------------------------------------------------------------------


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"--{name}: not an ISO 8601 date or time: {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _choices(
    name: str, values: tuple[str, ...], kind: type[Status] | type[Priority] | type[Channel]
) -> tuple[str, ...]:
    for value in values:
        if value not in {k.value for k in kind}:
            raise InvalidInput(f"--{name}: unknown value {value!r}; one of: {', '.join(k.value for k in kind)}")
    return values


@click.command("export")
@click.option("--format", "fmt", type=click.Choice([f.value for f in ExportFormat]), help="Default: from -o or json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Output file (default: stdout).")
@click.option("--department", multiple=True, help="Only this department; repeat for any of several.")
@click.option("--status", multiple=True, help="Only this status; repeatable.")
@click.option("--priority", multiple=True, help="Only this priority; repeatable.")
@click.option("--channel", multiple=True, help="Only this channel; repeatable.")
@click.option("--requester", help="Only this requester.")
@click.option("--q", "text", help="Text in the subject or body.")
@click.option("--open", "open_only", is_flag=True, help="Only open tickets.")
@click.option("--created-from", help="Created at or after (ISO 8601; no zone means UTC).")
@click.option("--created-to", help="Created before.")
@click.option("--updated-from", help="Updated at or after.")
@click.option("--updated-to", help="Updated before.")
@click.pass_obj  # the CLI's Context (bot.cli.main sets it); pass_ctx would make an import cycle for mypy
def export(
    ctx: Context,
    fmt: str | None,
    output: Path | None,
    department: tuple[str, ...],
    status: tuple[str, ...],
    priority: tuple[str, ...],
    channel: tuple[str, ...],
    requester: str | None,
    text: str | None,
    open_only: bool,
    created_from: str | None,
    created_to: str | None,
    updated_from: str | None,
    updated_to: str | None,
) -> None:
    """Export tickets, newest first, with the fields and filters of GET /api/v1/tickets (streamed)."""
    with errors():
        config = ctx.config
        departments = []
        for name in department:
            found = config.department(name)
            if found is None:
                raise InvalidInput(f"unknown department {name!r}; one of: {', '.join(config.department_names)}")
            departments.append(found.name)
        query = TicketQuery(
            department=tuple(departments),
            status=tuple(Status(s) for s in _choices("status", status, Status)),
            priority=tuple(Priority(p) for p in _choices("priority", priority, Priority)),
            channel=tuple(Channel(c) for c in _choices("channel", channel, Channel)),
            requester=requester,
            q=text,
            open_only=open_only,
            created_from=_time("created-from", created_from),
            created_to=_time("created-to", created_to),
            updated_from=_time("updated-from", updated_from),
            updated_to=_time("updated-to", updated_to),
        )
        suffix = output.suffix.lower().lstrip(".") if output else ""
        chosen = ExportFormat(fmt or (suffix if suffix in {f.value for f in ExportFormat} else "json"))
        tickets = iter_tickets(ctx.store, query)
        if output is None:
            count = write_export(tickets, sys.stdout, chosen)
        else:
            count = _write_file(output, lambda f: write_export(tickets, f, chosen))
    if output is not None:
        err.print(f"exported {count:,} tickets to {output}", highlight=False)


def _write_file(path: Path, write: Callable[[TextIO], int]) -> int:
    """Write to a temporary file beside ``path`` and rename it: a failed export never leaves half a file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("w", newline="", encoding="utf-8") as f:
            count = write(f)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return count

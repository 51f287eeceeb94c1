"""Import, second step: maps, validates, dedupes and (with --classify) routes source rows, then stores them in batches.

Imports are historical data: they create tickets and an "imported" event each, and send nothing (no
acknowledgement mail, no Slack post). See docs/import-export.md for the rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import yaml

from bot.io.readers import (
    DEFAULT_MAX_ROW_BYTES,
    BrokenInput,
    Format,
    Reader,
    SourceRow,
    UnusableInput,
    open_reader,
)
from core.classify.base import Classifier
from core.config import Config
from core.errors import ClassifierUnavailable, InvalidInput, StorageError
from core.message import Channel
from core.pipeline import first_line
from core.route import Router
from core.ticket import Priority, Status
from storage.imports import ImportedTicket

log = logging.getLogger(__name__)

# The fields a row may carry (after --map), what GET /tickets and `ticketbot export` write under the same names.
FIELDS: dict[str, str] = {
    "external_id": "the ticket's id in the system it comes from: the dedupe key when present",
    "id": "a ticketbot ticket id (from an export): that ticket, unchanged, is not imported again",
    "subject": "subject line (subject or body is required)",
    "body": "the request text",
    "requester": "requester's email address or Slack user id (required); 'Name <address>' sets the name too",
    "requester_name": "requester's display name",
    "department": "a configured department; empty means: classify with --classify, else triage",
    "priority": "low, medium, high, urgent (normal = medium, critical = urgent)",
    "status": "new, in_progress, waiting, resolved, closed (open, pending, on-hold and solved are understood)",
    "assignee": "who works on it",
    "channel": "email, slack, cli or api; anything else is kept in the imported event",
    "summary": "one-line summary",
    "created_at": "ISO 8601 time (a zone-less time is UTC) or Unix seconds; default: the import time",
    "updated_at": "ISO 8601 time; default: created_at",
    "resolved_at": "ISO 8601 time; default for resolved and closed tickets: updated_at",
}
MAX_SUBJECT = 2000
MAX_REQUESTER = 320
MAX_NAME = 200
MAX_KEY = 200
MAX_BATCH_BYTES = 16 * 1024 * 1024  # text per batch: bounds memory when rows are large
# See ``quick_handover``: how long the reading thread may keep the GIL while the writing thread waits for it.
HANDOVER_INTERVAL = 0.0001
STATUS_ALIASES = {
    "open": Status.NEW,
    "pending": Status.WAITING,
    "on_hold": Status.WAITING,
    "hold": Status.WAITING,
    "solved": Status.RESOLVED,
    "done": Status.RESOLVED,
}
PRIORITY_ALIASES = {"normal": Priority.MEDIUM, "critical": Priority.URGENT}


class ImportStore(Protocol):
    """What the import needs from storage (``storage.imports.SqlImportStore``)."""

    writers: int  # how many batches may be written at once (the database's parallelism)

    def encode(self, ticket: ImportedTicket) -> ImportedTicket:
        """The ticket made ready to insert, on the reading thread (see ``SqlImportStore.encode``)."""
        ...

    def insert(self, tickets: Sequence[ImportedTicket], *, actor: str) -> dict[str, int]: ...

    def existing_keys(self, keys: Sequence[str]) -> set[str]: ...

    def ticket_texts(self, ticket_ids: Sequence[int]) -> Mapping[int, tuple[str, str, str]]: ...


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that was not imported, and why."""

    row: int
    reason: str
    line: int | None = None

    def describe(self) -> str:
        where = f"row {self.row}" + (f" (line {self.line})" if self.line is not None else "")
        return f"{where}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did. ``exit_code``: 0 all good, 1 some rows bad, 2 nothing could be read."""

    format: str
    source: str
    dry_run: bool = False
    rows: int = 0
    imported: int = 0
    duplicates: int = 0
    bad: int = 0
    classified: int = 0
    triaged: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_omitted: int = 0
    fatal: str | None = None
    ignored_fields: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.fatal is not None and self.rows == 0:
            return 2
        return 1 if self.bad or self.fatal is not None else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "source": self.source,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "bad": self.bad,
            "classified": self.classified,
            "triaged": self.triaged,
            "errors": [{"row": e.row, "line": e.line, "reason": e.reason} for e in self.errors],
            "errors_omitted": self.errors_omitted,
            "fatal": self.fatal,
            "ignored_fields": self.ignored_fields,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True, slots=True)
class ImportOptions:
    """How to read and import one file."""

    format: Format
    source: str = ""  # the file's name: recorded in each imported event, and namespaces external ids if asked
    mapping: Mapping[str, str] = field(default_factory=dict)
    classify: bool = False
    dry_run: bool = False
    channel: Channel = Channel.CLI  # for rows that name no channel of ours
    actor: str = "import"
    namespace: str = ""  # prefixes external ids, for files from several systems whose ids may collide
    encoding: str = "utf-8"
    delimiter: str | None = None
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES
    batch_size: int = 5000  # rows per transaction (fewer, larger commits: SQLite checkpoints cost per commit)
    max_errors: int = 1000  # rows listed in the report; the rest are counted (and all go to on_error)


def parse_mapping(pairs: Iterable[str], file: str | Path | None = None) -> dict[str, str]:
    """``field=Column`` pairs (``--map``) over an optional JSON or YAML mapping file; pairs win.

    Raises:
        InvalidInput: an unknown field, a pair without '=', an unreadable file.
    """
    mapping: dict[str, str] = {}
    if file is not None:
        try:
            loaded = yaml.safe_load(Path(file).read_text(encoding="utf-8"))  # YAML is a superset of JSON
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"mapping file {file}: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise InvalidInput(f"mapping file {file}: expected an object of field: column names")
        mapping.update({str(k): v for k, v in loaded.items()})
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise InvalidInput(f"--map {pair!r}: expected FIELD=COLUMN, e.g. subject=Title")
        mapping[name.strip()] = column.strip()
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r} in the mapping; fields: {', '.join(FIELDS)}")
    return mapping


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


class _Resolver:
    """Which source field feeds each of our fields, worked out once per distinct set of keys (a CSV header,
    or the keys JSON and XML rows share)."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)
        self._cache: dict[tuple[str, ...], dict[str, str]] = {}
        self.ignored: set[str] = set()

    def resolve(self, keys: Sequence[str]) -> dict[str, str]:
        signature = tuple(keys)
        found = self._cache.get(signature)
        if found is not None:
            return found
        by_norm = {_norm_name(k): k for k in keys}
        found = {}
        for name in FIELDS:
            wanted = self.mapping.get(name)
            if wanted is None:
                if name in by_norm:
                    found[name] = by_norm[name]
            elif wanted in keys:
                found[name] = wanted
            elif _norm_name(wanted) in by_norm:
                found[name] = by_norm[_norm_name(wanted)]
            elif "." in wanted:
                found[name] = wanted  # a path into nested JSON objects, looked up per row
        if len(self._cache) < 256:
            self._cache[signature] = found
            if len(self.ignored) < 50:
                used = set(found.values())
                self.ignored.update(k for k in keys if k not in used)
        return found


class _Bad(Exception):
    """A row that cannot be imported; the message is the reason shown in the report."""


def _lookup(fields: Mapping[str, Any], source: str) -> Any:
    if source in fields:
        return fields[source]
    value: Any = fields
    for part in source.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = str(value)
    else:
        raise _Bad(f"{name}: expected text, got {'a list' if isinstance(value, list) else 'an object'}")
    if "\x00" in text:
        raise _Bad(f"{name}: contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"{name}: contains an unpaired surrogate (broken Unicode escape)") from None
    return text


def _norm_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _time(value: str, name: str) -> datetime | None:
    text = value.strip()
    if not text:
        return None
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text), UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise _Bad(f"{name}: not an ISO 8601 time: {text[:40]!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _enum_value(value: str) -> str:
    return value.strip().lower().replace(" ", "_").replace("-", "_")


def content_key(requester: str, subject: str, body: str, created_at: datetime | None) -> str:
    """The dedupe key of a row without an external id: a hash of its normalised identity fields."""
    when = created_at.isoformat() if created_at else ""
    parts = [_norm_text(requester).lower(), _norm_text(subject), _norm_text(body), when]
    return "sha256:" + hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def external_key(external_id: str, namespace: str) -> str:
    key = f"ext:{namespace}:{external_id}" if namespace else f"ext:{external_id}"
    if len(key) > MAX_KEY:
        return "ext-sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return key


@dataclass
class _Pending:
    row: SourceRow
    ticket: ImportedTicket
    ticket_id: int | None  # the "id" field: maybe this database's own ticket, exported and imported back


@dataclass
class _Flushed:
    """What storing one batch did; added to the report on the reading thread."""

    imported: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)


@contextmanager
def quick_handover(interval: float = HANDOVER_INTERVAL) -> Iterator[None]:
    """Lower the interpreter's thread switch interval while an import runs, for a process that only imports.

    The writing thread releases the GIL inside each SQLite call, and needs it back for a moment after each (a
    dozen calls a batch: begin, insert, index, commit...). The reading thread parses in Python meanwhile, and by
    default keeps the GIL for up to 5 ms after another thread asks for it, so the writer spent about a third of
    its time waiting, not writing. At 0.1 ms the same 100,000 rows took 9 s instead of 13 (docs/import-export.md).

    The interval is the whole process's: ``ticketbot import`` sets it, the bot's server (POST /api/v1/import)
    does not, as it would add thread switches to every request it serves.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Importer:
    """Reads a file row by row and imports it in batches of ``options.batch_size``, one transaction each."""

    def __init__(self, *, store: ImportStore, router: Router, classifier: Classifier | None = None) -> None:
        self.store = store
        self.router = router
        self.classifier = classifier

    def run(
        self,
        stream: BinaryIO,
        options: ImportOptions,
        *,
        progress: Callable[[ImportReport], None] | None = None,
        on_error: Callable[[RowError], None] | None = None,
    ) -> ImportReport:
        """Import ``stream`` (binary, seekable). Bad rows are reported, good rows imported, duplicates skipped.

        Raises:
            UnusableInput: nothing can be imported (an empty file, a missing column); nothing changed.
            InvalidInput: --classify without a classifier.
            StorageError: the database failed for a whole batch; earlier batches stay committed.
        """
        if options.classify and self.classifier is None:
            raise InvalidInput("--classify needs a classifier")
        reader = open_reader(
            stream,
            options.format,
            encoding=options.encoding,
            max_row_bytes=options.max_row_bytes,
            delimiter=options.delimiter,
        )
        resolver = _Resolver(options.mapping)
        if reader.columns is not None:
            self._check_columns(reader, resolver, options.mapping)
        report = ImportReport(format=options.format.value, source=options.source, dry_run=options.dry_run)

        def bad(error: RowError) -> None:
            report.bad += 1
            if len(report.errors) < options.max_errors:
                report.errors.append(error)
            else:
                report.errors_omitted += 1
            if on_error is not None:
                on_error(error)

        # The database writes batches on threads while this one reads and checks the next: drivers wait (network,
        # fsync, the server) without the GIL, so the work overlaps. At most ``writers`` batches are in flight.
        writers = max(1, self.store.writers)
        in_flight: deque[Future[_Flushed]] = deque()

        def settle(keep: int) -> None:
            while len(in_flight) > keep:
                done = in_flight.popleft().result()
                report.imported += done.imported
                report.duplicates += done.duplicates
                for error in done.errors:
                    bad(error)
                if progress is not None:
                    progress(report)

        batch: list[_Pending] = []
        size = 0
        with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="import-writer") as pool:
            try:
                for source_row in reader:
                    report.rows += 1
                    if source_row.error is not None or source_row.fields is None:
                        bad(RowError(source_row.row, source_row.error or "unreadable", source_row.line))
                        continue
                    try:
                        item = self._prepare(source_row, resolver, options, report)
                    except _Bad as exc:
                        bad(RowError(source_row.row, str(exc), source_row.line))
                        continue
                    batch.append(item)
                    size += len(item.ticket.body) + len(item.ticket.subject)
                    # Rows or bytes: a batch of enormous rows is cut short, so memory stays bounded either way.
                    if len(batch) >= options.batch_size or size >= MAX_BATCH_BYTES:
                        settle(writers - 1)
                        in_flight.append(pool.submit(self._flush, batch, options))
                        batch, size = [], 0
            except BrokenInput as exc:
                report.fatal = str(exc)  # rows before it stand; with none read, the exit code is 2
            finally:
                settle(0)  # also when reading failed: batches already sent are committed and counted
            in_flight.append(pool.submit(self._flush, batch, options))
            settle(0)
        report.errors.sort(key=lambda e: e.row)  # database refusals arrive a batch late
        report.ignored_fields = sorted(resolver.ignored)[:50]
        return report

    @staticmethod
    def _check_columns(reader: Reader, resolver: _Resolver, mapping: Mapping[str, str]) -> None:
        columns = reader.columns or []
        found = resolver.resolve(columns)
        for name, column in mapping.items():
            if name not in found:
                raise UnusableInput(
                    f"column {column!r} (mapped to {name}) is not in the header; columns: {', '.join(columns)}"
                )
        if "requester" not in found:
            raise UnusableInput(
                f"no requester column; map one with --map requester=COLUMN (columns: {', '.join(columns)})"
            )
        if "subject" not in found and "body" not in found:
            raise UnusableInput(
                f"no subject or body column; map one with --map body=COLUMN (columns: {', '.join(columns)})"
            )

    def _prepare(
        self, source_row: SourceRow, resolver: _Resolver, options: ImportOptions, report: ImportReport
    ) -> _Pending:
        fields = source_row.fields or {}
        where = resolver.resolve(list(fields))

        def get(name: str) -> str:
            source = where.get(name)
            return _text(_lookup(fields, source), name).strip() if source is not None else ""

        raw_requester = get("requester")
        name, address = parseaddr(raw_requester) if "<" in raw_requester else ("", raw_requester)
        requester = address.strip() or raw_requester
        if not requester:
            raise _Bad("missing requester")
        if len(requester) > MAX_REQUESTER:
            raise _Bad(f"requester is {len(requester):,} characters (limit {MAX_REQUESTER})")
        requester_name = get("requester_name") or name
        if len(requester_name) > MAX_NAME:
            raise _Bad(f"requester_name is {len(requester_name):,} characters (limit {MAX_NAME})")
        given_subject = get("subject")
        body_source = where.get("body")
        # The body keeps its line breaks and indentation: only surrounding blank space goes.
        body = _text(_lookup(fields, body_source), "body").strip() if body_source is not None else ""
        if not given_subject and not body:
            raise _Bad("missing subject and body (one is required)")
        if len(given_subject) > MAX_SUBJECT:
            raise _Bad(f"subject is {len(given_subject):,} characters (limit {MAX_SUBJECT})")
        subject = given_subject or first_line(body)
        assignee = get("assignee") or None
        if assignee is not None and len(assignee) > MAX_NAME:
            raise _Bad(f"assignee is {len(assignee):,} characters (limit {MAX_NAME})")

        status_text = get("status")
        status = Status.NEW
        if status_text:
            value = _enum_value(status_text)
            found_status = STATUS_ALIASES.get(value) or next((s for s in Status if s.value == value), None)
            if found_status is None:
                raise _Bad(f"unknown status {status_text!r}; one of: {', '.join(s.value for s in Status)}")
            status = found_status
        priority_text = get("priority")
        priority: Priority | None = None
        if priority_text:
            value = _enum_value(priority_text)
            priority = PRIORITY_ALIASES.get(value) or next((p for p in Priority if p.value == value), None)
            if priority is None:
                raise _Bad(f"unknown priority {priority_text!r}; one of: {', '.join(p.value for p in Priority)}")

        created_at = _time(get("created_at"), "created_at")
        updated_at = _time(get("updated_at"), "updated_at")
        resolved_at = _time(get("resolved_at"), "resolved_at")
        now = datetime.now(UTC)
        created = created_at or now
        updated = updated_at or created
        resolved = (resolved_at or updated) if status in (Status.RESOLVED, Status.CLOSED) else None

        channel_text = get("channel")
        channel = next((c for c in Channel if c.value == channel_text.lower()), options.channel)
        external_id = get("external_id")
        key = (
            external_key(external_id, options.namespace)
            if external_id
            else content_key(requester, given_subject, body, created_at)
        )
        event: dict[str, Any] = {"source": options.source, "format": options.format.value, "row": source_row.row}
        if source_row.line is not None:
            event["line"] = source_row.line
        if external_id:
            event["external_id"] = external_id
        if channel_text and channel.value != channel_text.lower():
            event["channel"] = channel_text[:100]

        department_text = get("department")
        summary = get("summary") or first_line(subject)
        confidence, classifier, model, triaged = 1.0, "import", None, False
        if department_text:
            department = self.router.canonical(department_text)
            if department is None:
                raise _Bad(f"unknown department {department_text!r}; one of: {', '.join(self.router.departments)}")
        elif options.classify and self.classifier is not None:
            try:
                verdict = self.classifier.classify(subject, body)
            except ClassifierUnavailable as exc:
                raise _Bad(f"could not classify: {exc}") from None
            route = self.router.route(verdict)
            department, triaged = route.department, route.triaged
            confidence, classifier, model = verdict.confidence, verdict.classifier, verdict.model
            priority = priority or verdict.priority
            summary = get("summary") or verdict.summary or summary
            report.classified += 1
            event["classified"] = {"department": verdict.department, "confidence": round(verdict.confidence, 4)}
            if route.reason:
                event["route"] = route.reason
        else:
            # Nobody said where it belongs: a person sorts it out, as with a low-confidence classification.
            department, triaged, confidence = self.router.triage_department, True, 0.0
            event["route"] = "no department in the file"
        report.triaged += triaged

        ticket = ImportedTicket(
            key=key,
            subject=subject,
            body=body,
            requester=requester,
            requester_name=requester_name,
            channel=channel,
            department=department,
            priority=priority or Priority.MEDIUM,
            status=status,
            assignee=assignee,
            confidence=confidence,
            summary=summary,
            classifier=classifier,
            classifier_model=model,
            triaged=triaged,
            created_at=created,
            updated_at=updated,
            resolved_at=resolved,
            event=event,
        )
        ticket = self.store.encode(ticket)  # on this (reading) thread, so the writing thread only waits on SQL
        id_text = get("id").lstrip("#")
        return _Pending(source_row, ticket, int(id_text) if id_text.isdigit() and len(id_text) < 12 else None)

    def _flush(self, batch: list[_Pending], options: ImportOptions) -> _Flushed:
        """Store one batch (on the writer thread): skip repeats and rows already stored, insert the rest."""
        done = _Flushed()
        if not batch:
            return done
        unique: dict[str, _Pending] = {}
        for item in batch:
            if item.ticket.key in unique:
                done.duplicates += 1  # the same row twice in one batch
            else:
                unique[item.ticket.key] = item
        pending = list(unique.values())

        exported = [p.ticket_id for p in pending if p.ticket_id is not None]
        if exported:
            stored = self.store.ticket_texts(exported)
            kept = [p for p in pending if not _same_ticket(p, stored)]
            done.duplicates += len(pending) - len(kept)
            pending = kept

        if options.dry_run:
            existing = self.store.existing_keys([p.ticket.key for p in pending])
            done.duplicates += len(existing)
            done.imported += len(pending) - len(existing)
            return done
        try:
            inserted = self.store.insert([p.ticket for p in pending], actor=options.actor)
        except StorageError as exc:
            inserted = self._insert_one_by_one(pending, options, done, exc)
        done.imported += len(inserted)
        # A key the insert skipped was already stored: an earlier import of the same row.
        done.duplicates += len(pending) - len(inserted) - len(done.errors)
        return done

    def _insert_one_by_one(
        self, pending: list[_Pending], options: ImportOptions, done: _Flushed, batch_error: StorageError
    ) -> dict[str, int]:
        """A batch the database refused (rolled back whole): find the rows it objects to, keep the rest."""
        inserted: dict[str, int] = {}
        for item in pending:
            try:
                inserted.update(self.store.insert([item.ticket], actor=options.actor))
            except StorageError as exc:
                reason = f"the database refused the row: {str(exc)[:300]}"
                done.errors.append(RowError(item.row.row, reason, item.row.line))
        if len(done.errors) == len(pending):
            raise batch_error  # every row failed: the database is the problem, not the data
        return inserted


def _same_ticket(item: _Pending, stored: Mapping[int, tuple[str, str, str]]) -> bool:
    """True when ``item`` is this database's ticket ``id`` as exported: same requester, subject and body."""
    if item.ticket_id is None or item.ticket_id not in stored:
        return False
    requester, subject, body = stored[item.ticket_id]
    t = item.ticket
    return (
        requester.lower() == t.requester.lower()
        and _norm_text(subject) == _norm_text(t.subject)
        and _norm_text(body) == _norm_text(t.body)
    )


def dump_report(report: ImportReport) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


def router_for(config: Config) -> Router:
    """The router the pipeline uses, for the same configuration."""
    return Router(
        departments=config.department_names,
        triage_department=config.routing.triage_department,
        confidence_threshold=config.routing.confidence_threshold,
    )


def import_classifier(config: Config) -> Classifier:
    """The offline model, whatever ``classifier.mode`` says: a bulk import would otherwise send every
    historical row to Claude (hours and a bill for a large file); the offline model does 1,000s a second."""
    from core.classify.offline import OfflineClassifier

    return OfflineClassifier.load(
        config.model_path if config.model_path.exists() else None,
        config.department_names,
        descriptions={d.name: d.description for d in config.departments},
        keywords={d.name: d.keywords for d in config.departments},
    )

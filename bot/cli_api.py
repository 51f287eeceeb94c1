"""Command line for the REST API: `ticketbot tokens create|list|revoke` (tokens are shown once, stored hashed)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from storage.tokens import ApiToken, TokenStore

if TYPE_CHECKING:
    from bot.cli import Context

# bot.cli's helpers are imported inside the commands, not here: bot.cli imports this module to register the
# group, and under `python -m bot.cli` that module is __main__, so a top-level import would run a half-built bot.cli.


def token_store(ctx: Context) -> TokenStore:
    return TokenStore(ctx.store.engine)


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "scope": token.scope,
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


@click.group()
def tokens() -> None:
    """API tokens for /api/v1 (Authorization: Bearer <token>)."""


@tokens.command("create")
@click.option("--name", required=True, help="Who or what uses the token (shown in lists and ticket events).")
@click.option("--scope", type=click.Choice(["read", "write"]), default="read", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the token and its details as JSON.")
@click.pass_obj  # the CLI's Context (bot.cli.main sets it), as pass_ctx passes it
def tokens_create(ctx: Context, name: str, scope: str, as_json: bool) -> None:
    """Create a token and print it once: only its hash is stored, so it cannot be shown again."""
    from bot.cli import dump_json, errors

    with errors():
        token, secret = token_store(ctx).create(name, "write" if scope == "write" else "read")
    if as_json:
        dump_json({**token_json(token), "token": secret})
        return
    click.echo(secret)
    click.echo(f"token {token.id} {token.name!r} ({token.scope}) created; copy it now: it is not shown again", err=True)


@tokens.command("list")
@click.option("--active", is_flag=True, help="Hide revoked tokens.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj  # the CLI's Context (bot.cli.main sets it), as pass_ctx passes it
def tokens_list(ctx: Context, active: bool, as_json: bool) -> None:
    """Tokens with their scope and last use (never their secret)."""
    from bot.cli import dump_json, errors, out

    with errors():
        rows = token_store(ctx).list(include_revoked=not active)
    if as_json:
        dump_json([token_json(t) for t in rows])
        return
    table = Table("ID", "Name", "Scope", "Prefix", "Created", "Last used", "Revoked", title=f"{len(rows)} tokens")
    for t in rows:
        table.add_row(
            str(t.id),
            t.name,
            t.scope,
            t.prefix + "…",
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
        )
    out.print(table)


@tokens.command("revoke")
@click.argument("token")
@click.pass_obj  # the CLI's Context (bot.cli.main sets it), as pass_ctx passes it
def tokens_revoke(ctx: Context, token: str) -> None:
    """Revoke TOKEN (its id or name); running servers refuse it within api.token_cache_seconds."""
    from bot.cli import errors

    with errors():
        revoked = token_store(ctx).revoke(token)
    click.echo(f"token {revoked.id} {revoked.name!r} revoked")

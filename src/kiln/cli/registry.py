"""``kiln registry ...``: list, inspect and manage models, versions, aliases and artifacts."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from kiln.registry import Lineage, Registry
    from kiln.registry.archives import ArchiveLimits
    from kiln.registry.search import VersionQuery

app = typer.Typer(help="The model registry: versions, aliases, lineage, artifacts.", no_args_is_help=True)
alias_app = typer.Typer(help="Move aliases (production, staging, ...) and see their history.", no_args_is_help=True)
user_app = typer.Typer(help="Users and API tokens of the registry's HTTP API.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")
app.add_typer(user_app, name="user")

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $KILN_DATABASE_URL, else SQLite in $KILN_HOME)"),
]
ArtifactsOption = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        help="Artifact store URL (default: $KILN_ARTIFACTS_URL, else $KILN_HOME/artifacts)",
    ),
]


@app.callback()
def _options(ctx: typer.Context, db: DbOption = None, artifacts: ArtifactsOption = None) -> None:
    ctx.obj = {"db": db, "artifacts": artifacts}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """``kiln.cli.main.user_errors``, imported late: ``main`` imports this module."""
    from kiln.cli.main import user_errors as report

    with report():
        yield


def _open(ctx: typer.Context) -> Registry:
    from kiln.registry import Registry

    options = ctx.obj or {}
    return Registry(options.get("db"), artifacts_url=options.get("artifacts"))


def _dump(value: Any) -> str:
    data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value
    return json.dumps(data, indent=2, default=str)


@app.command("register")
def register(
    ctx: typer.Context,
    package: Annotated[Path, typer.Argument(help="Model package folder")],
    name: Annotated[str, typer.Option("--name", help="Model name")],
    run: Annotated[str | None, typer.Option(help="Id of the run that made it")] = None,
) -> None:
    """Register a package as the next version of a model."""
    with user_errors(), _open(ctx) as registry:
        typer.echo(registry.register(package, name=name, run=run).ref)


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """List models with their latest version."""
    with user_errors(), _open(ctx) as registry:
        for model in registry.list_models():
            typer.echo(f"{model.name}\t{model.task}\tlatest {model.latest_version}")


TagOption = Annotated[
    list[str] | None, typer.Option("--tag", help="KEY=VALUE the version's tags must hold (repeatable)")
]
MetricOption = Annotated[
    list[str] | None, typer.Option("--metric", help="Threshold NAME>=NUMBER (or >, <=, <, =; repeatable)")
]
TaskOption = Annotated[str | None, typer.Option("--task", help="Only models of this task")]
FormatOption = Annotated[str | None, typer.Option("--format", help="Package format, e.g. torch or onnx")]
AfterOption = Annotated[
    str | None, typer.Option("--created-after", help="Registered at or after (ISO 8601, UTC if no zone)")
]
BeforeOption = Annotated[
    str | None, typer.Option("--created-before", help="Registered before (ISO 8601, UTC if no zone)")
]
AliasOption = Annotated[str | None, typer.Option("--alias", help="An alias pointing at it ('*': any alias)")]
OrderOption = Annotated[str, typer.Option("--order-by", help="'version' or 'metric:NAME'")]
DescOption = Annotated[bool, typer.Option("--desc", help="Highest first")]
# The flag that sets each search field, to name it in errors.
_FLAGS = {"tag": "--tag", "metric": "--metric", "task": "--task", "format": "--format",
          "created_after": "--created-after", "created_before": "--created-before", "alias": "--alias",
          "order_by": "--order-by", "limit": "--limit", "cursor": "--cursor", "model": "--model"}


def _search_query(**fields: Any) -> VersionQuery:
    """The query of the search fields given on the command line; an error names the flag.

    Fields left unset (None, False, an empty list) are left out, as ``parse_query`` expects.
    """
    from kiln.registry.search import parse_query

    params: dict[str, list[str]] = {}
    for name, value in fields.items():
        if value is None or value is False or value == []:
            continue
        values = value if isinstance(value, list) else [str(value).lower() if isinstance(value, bool) else str(value)]
        params[name] = values
    with _flag_errors():
        return parse_query(params)


@contextlib.contextmanager
def _flag_errors() -> Iterator[None]:
    """Name the command-line flag, not the query field, in a search error."""
    from kiln.registry.search import QueryError

    try:
        yield
    except QueryError as exc:
        flag = _FLAGS.get(exc.field, exc.field)
        raise QueryError(flag, str(exc).removeprefix(f"{exc.field}: ")) from None


def _version_line(v: Any) -> str:
    aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
    metrics = " ".join(f"{k}={val}" for k, val in sorted(v.metrics.items()))
    return f"{v.ref}{aliases}\t{v.format}/{v.precision}\t{v.created_at:%Y-%m-%d %H:%M}\t{v.created_by}\t{metrics}"


@app.command("versions")
def versions(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name")],
    tag: TagOption = None,
    metric: MetricOption = None,
    format_: FormatOption = None,
    created_after: AfterOption = None,
    created_before: BeforeOption = None,
    alias: AliasOption = None,
    order_by: OrderOption = "version",
    desc: DescOption = False,
) -> None:
    """List a model's versions (all, or those the filters select) with aliases and metrics."""
    from kiln.registry.search import MAX_PAGE_SIZE

    with user_errors(), _open(ctx) as registry:
        query = _search_query(
            model=name, tag=tag, metric=metric, format=format_, created_after=created_after,
            created_before=created_before, alias=alias, order_by=order_by, descending=desc,
            limit=MAX_PAGE_SIZE,
        )
        while True:
            page = registry.search(query)
            for v in page.versions:
                typer.echo(_version_line(v))
            if page.next_cursor is None:
                break
            query = dataclasses.replace(query, cursor=page.next_cursor)


@app.command("search")
def search(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Only this model's versions")] = None,
    tag: TagOption = None,
    metric: MetricOption = None,
    task: TaskOption = None,
    format_: FormatOption = None,
    created_after: AfterOption = None,
    created_before: BeforeOption = None,
    alias: AliasOption = None,
    order_by: OrderOption = "version",
    desc: DescOption = False,
    limit: Annotated[int, typer.Option("--limit", help="Page size (1-1000)")] = 100,
    cursor: Annotated[str | None, typer.Option("--cursor", help="The 'next:' cursor of the previous page")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the page as JSON")] = False,
) -> None:
    """One page of versions across models; the last line gives the cursor of the next page."""
    with user_errors(), _open(ctx) as registry:
        query = _search_query(
            model=model, tag=tag, metric=metric, task=task, format=format_, created_after=created_after,
            created_before=created_before, alias=alias, order_by=order_by, descending=desc, limit=limit,
            cursor=cursor,
        )
        with _flag_errors():
            page = registry.search(query)
        if as_json:
            typer.echo(_dump(page))
            return
        for v in page.versions:
            typer.echo(_version_line(v))
        if page.next_cursor is not None:
            typer.echo(f"next: {page.next_cursor}")


@app.command("show")
def show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="name@version or name@alias")]) -> None:
    """Print a version (with its local package path) as JSON."""
    with user_errors(), _open(ctx) as registry:
        version = registry.get_version(ref)
        data = dataclasses.asdict(version) | {"path": str(registry.resolve(version.ref))}
        typer.echo(_dump(data))


@app.command("lineage")
def lineage(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="name@version or name@alias")]) -> None:
    """Show where a version came from: data -> run -> versions, as a tree."""
    with user_errors(), _open(ctx) as registry:
        typer.echo(render_lineage(registry.lineage(ref)))


def render_lineage(family: Lineage) -> str:
    """A text tree: data fingerprint, run, root version and every descendant."""
    root = family.root
    lines = [f"data {root.data_fingerprint or (family.run.data_fingerprint if family.run else '?')}"]
    indent = "  "
    if family.run is not None:
        lines.append(f"{indent}run {family.run.id} ({family.run.name or 'unnamed'}, {family.run.status})")
        indent += "  "
    children: dict[str, list[Any]] = {}
    how = {e.child: e.transformation for e in family.edges}
    for edge in family.edges:
        if edge.parent:
            children.setdefault(edge.parent, []).append(edge.child)

    def walk(ref: str, depth: str) -> None:
        marker = "  <- " + ref if ref == family.focus else ""
        lines.append(f"{depth}{ref} ({how.get(ref) or 'registered'}){marker}")
        for child in children.get(ref, []):
            walk(child, depth + "  ")

    walk(root.ref, indent)
    return "\n".join(line.replace("  <- " + family.focus, "  <-") for line in lines)


@alias_app.command("set")
def alias_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production")],
    version: Annotated[int, typer.Argument(help="Version number")],
) -> None:
    """Point an alias at a version (atomic; recorded in the history)."""
    with user_errors(), _open(ctx) as registry:
        move = registry.set_alias(name, alias, version)
        typer.echo(f"{name}@{alias}: {move.from_version or '-'} -> {move.to_version}")


@alias_app.command("history")
def alias_history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name")],
    alias: Annotated[str | None, typer.Argument(help="Alias (default: all)")] = None,
) -> None:
    """Every move of an alias, oldest first."""
    with user_errors(), _open(ctx) as registry:
        for m in registry.alias_history(name, alias):
            typer.echo(
                f"{m.moved_at:%Y-%m-%d %H:%M:%S}\t{m.alias}\t{m.from_version or '-'} -> "
                f"{m.to_version or '-'}\t{m.moved_by}"
            )


@app.command("delete")
def delete(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="name@version")]) -> None:
    """Delete a version (refused while an alias points at it)."""
    with user_errors(), _open(ctx) as registry:
        typer.echo(f"deleted {registry.delete(ref).ref}")


@app.command("gc")
def gc(
    ctx: typer.Context,
    grace_s: Annotated[float, typer.Option(help="Keep uploads started less than this ago")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go")] = False,
) -> None:
    """Remove stored packages that no version uses."""
    with user_errors(), _open(ctx) as registry:
        removed = registry.gc(grace_s=grace_s, is_dry_run=dry_run)
        for digest in removed:
            typer.echo(digest)
        typer.echo(f"{'would remove' if dry_run else 'removed'} {len(removed)} artifact(s)")


@app.command("export")
def export(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Model names")],
    to: Annotated[Path, typer.Option("--to", help="New folder, or a .tar.gz file")],
) -> None:
    """Export models with every version, run, alias and package."""
    from kiln.registry.transfer import export_models

    with user_errors(), _open(ctx) as registry:
        typer.echo(f"exported {export_models(registry, names, to)} version(s) to {to}")


@app.command("import")
def import_(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Folder or .tar.gz from `kiln registry export`")],
    max_upload_bytes: Annotated[
        int | None, typer.Option(help="Largest .tar.gz export read, in bytes (default 2 GiB)")
    ] = None,
    max_unpacked_bytes: Annotated[
        int | None, typer.Option(help="Most bytes a .tar.gz export may unpack to (default 8 GiB)")
    ] = None,
    max_archive_entries: Annotated[
        int | None, typer.Option(help="Most files and folders in a .tar.gz export (default 10000)")
    ] = None,
) -> None:
    """Import an export; versions already held are skipped. An archive past a limit is refused."""
    from kiln.registry.transfer import import_models

    with user_errors():
        limits = _archive_limits(max_upload_bytes, max_unpacked_bytes, max_archive_entries)
        with _open(ctx) as registry:
            for ref in import_models(registry, source, limits=limits):
                typer.echo(ref)


def _archive_limits(
    max_upload_bytes: int | None, max_unpacked_bytes: int | None, max_archive_entries: int | None
) -> ArchiveLimits:
    """The limits given on the command line, with ``ArchiveLimits``'s defaults for the others."""
    from kiln.registry.archives import ArchiveLimits

    given = {
        "max_upload_bytes": max_upload_bytes,
        "max_unpacked_bytes": max_unpacked_bytes,
        "max_archive_entries": max_archive_entries,
    }
    return ArchiveLimits(**{k: v for k, v in given.items() if v is not None})


@app.command("migrate")
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the registry database schema."""
    from kiln.registry import db

    with user_errors():
        engine = db.make_engine(db.database_url((ctx.obj or {}).get("db")))
        before, after = db.migrate(engine)
        engine.dispose()
    typer.echo(f"registry schema: {before or 'empty'} -> {after}")


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; beyond loopback API tokens are required")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8100,
    open_reads: Annotated[
        bool, typer.Option("--open-reads", help="Allow reads without a token (loopback only)")
    ] = False,
    max_upload_bytes: Annotated[
        int | None,
        typer.Option(help="Largest package archive accepted, in bytes (default 2 GiB); larger gets 413"),
    ] = None,
    max_unpacked_bytes: Annotated[
        int | None,
        typer.Option(help="Most bytes an uploaded archive may unpack to (default 8 GiB); more gets 413"),
    ] = None,
    max_archive_entries: Annotated[
        int | None,
        typer.Option(help="Most files and folders in an uploaded archive (default 10000); more gets 413"),
    ] = None,
) -> None:
    """Serve the registry's HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from kiln.registry.http import create_app

    with user_errors(), _open(ctx) as registry:
        limits = _archive_limits(max_upload_bytes, max_unpacked_bytes, max_archive_entries)
        app = create_app(registry, is_read_open=open_reads, limits=limits, host=host)
        uvicorn.run(app, host=host, port=port)


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name")],
    role: Annotated[str, typer.Option(help="reader, feedback, writer or admin")] = "reader",
) -> None:
    """Add a user."""
    from kiln.registry.domain import Role
    from kiln.registry.errors import RegistryError

    with user_errors(), _open(ctx) as registry:
        if role not in {r.value for r in Role}:
            allowed = ", ".join(r.value for r in Role)
            raise RegistryError(f"role must be one of {allowed}, got {role!r}")
        user = registry.store.create_user(name, Role(role))
        typer.echo(f"{user.name}\t{user.role.value}")


@user_app.command("token")
def user_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name")],
    label: Annotated[str, typer.Option(help="What the token is for")] = "",
) -> None:
    """Issue an API token for a user; it is printed once and stored hashed."""
    with user_errors(), _open(ctx) as registry:
        _token, secret = registry.store.create_token(name, name=label)
        typer.echo(secret)

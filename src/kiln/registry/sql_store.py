"""``SqlStore``: the registry store on SQLAlchemy 2, for SQLite and PostgreSQL.

Every public method runs in exactly one transaction. Writes lock what they change: on
PostgreSQL the model row (``SELECT ... FOR UPDATE``), on SQLite the whole database
(``BEGIN IMMEDIATE``, see ``db.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kiln.registry import db, sql_search
from kiln.registry.domain import (
    AliasMove,
    ApiToken,
    LineageEdge,
    MetricPoint,
    Model,
    ModelVersion,
    Resolution,
    Role,
    Run,
    User,
)
from kiln.registry.errors import AuthError, ConflictError, NotFoundError, RegistryError
from kiln.registry.references import LATEST
from kiln.registry.schema import (
    AliasMoveRow,
    AliasRow,
    LineageRow,
    ModelRow,
    RunMetricRow,
    RunRow,
    TokenRow,
    UploadRow,
    UserRow,
    VersionRow,
)
from kiln.registry.search import VersionPage, VersionQuery, encode_cursor
from kiln.registry.store import NewVersion, RegistryStore

TOKEN_PREFIX = "kiln"
RUN_STATUSES = ("running", "finished", "failed")


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; Kiln stores UTC only.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _hash_secret(secret: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


class SqlStore(RegistryStore):
    """The registry store on a SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._is_postgresql = db.is_postgresql(engine)

    @classmethod
    def from_url(cls, url: str | None = None) -> SqlStore:
        """Open (and on first use create) the registry database at ``url`` or the default."""
        engine = db.make_engine(db.database_url(url))
        db.ensure_schema(engine)
        return cls(engine)

    def close(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._engine) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def _write(self) -> Iterator[Session]:
        with self._engine.connect() as conn:
            conn.execution_options(**{db.WRITE_OPTION: True})
            with Session(bind=conn) as session, session.begin():
                yield session

    # --- lookups shared by methods (run inside their caller's transaction) ---
    def _model_row(self, s: Session, name: str, *, lock: bool = False) -> ModelRow:
        query = select(ModelRow).where(ModelRow.name == name)
        if lock and self._is_postgresql:
            query = query.with_for_update()
        row = s.scalars(query).one_or_none()
        if row is None:
            raise NotFoundError(f"no model named {name!r} in the registry")
        return row

    def _version_row(self, s: Session, model: ModelRow, number: int) -> VersionRow:
        row = s.scalars(
            select(VersionRow).where(VersionRow.model_id == model.id, VersionRow.number == number)
        ).one_or_none()
        if row is None:
            raise NotFoundError(
                f"model {model.name!r} has no version {number} (latest is {model.last_version})"
            )
        return row

    def _to_version(self, s: Session, row: VersionRow, model_name: str) -> ModelVersion:
        aliases = s.scalars(
            select(AliasRow.name).where(AliasRow.version_id == row.id).order_by(AliasRow.name)
        ).all()
        return _version(row, model_name, tuple(aliases))

    def _ref_of(self, s: Session, version_id: int | None) -> str | None:
        if version_id is None:
            return None
        row = s.execute(
            select(ModelRow.name, VersionRow.number)
            .join(VersionRow, VersionRow.model_id == ModelRow.id)
            .where(VersionRow.id == version_id)
        ).one()
        return f"{row[0]}@{row[1]}"

    # --- models and versions ---
    def create_version(self, new: NewVersion, *, upload_id: int | None = None) -> ModelVersion:
        with self._write() as s:
            (created,) = self._insert_versions(s, [new])
            if upload_id is not None:
                s.execute(delete(UploadRow).where(UploadRow.id == upload_id))
            return created

    def create_versions(self, news: Sequence[NewVersion]) -> list[ModelVersion]:
        with self._write() as s:
            return self._insert_versions(s, news)

    def _insert_versions(self, s: Session, news: Sequence[NewVersion]) -> list[ModelVersion]:
        # Each model is locked once however many of its versions come; rows go in as batches.
        models: dict[str, ModelRow] = {}
        rows = []
        for new in news:
            model = models.get(new.model) or self._lock_or_create_model(s, new.model, new.task)
            models[new.model] = model
            if new.task and model.task and new.task != model.task:
                raise ConflictError(
                    f"model {new.model!r} holds {model.task} packages, this one is {new.task}"
                )
            if new.run_id is not None and s.get(RunRow, new.run_id) is None:
                raise NotFoundError(f"no run with id {new.run_id!r}")
            # The counter moves only if this transaction commits: numbers stay gap-free.
            model.last_version += 1
            model.stamp += 1
            rows.append(_version_row(new, model))
        s.add_all(rows)
        s.flush()
        made = list(zip(rows, news, strict=True))
        sql_search.write_search_rows_of(s, [(row.id, new.tags, new.metrics) for row, new in made])
        for row, new in made:
            self._insert_lineage(s, row.id, new)
        return [_version(row, new.model, ()) for row, new in made]

    def _insert_lineage(self, s: Session, version_id: int, new: NewVersion) -> None:
        for parent in new.parents:
            parent_id = None
            if parent.parent_model is not None and parent.parent_version is not None:
                parent_model = self._model_row(s, parent.parent_model)
                parent_id = self._version_row(s, parent_model, parent.parent_version).id
            s.add(
                LineageRow(
                    child_id=version_id,
                    parent_id=parent_id,
                    parent_hint=parent.parent_hint[:500],
                    transformation=parent.transformation,
                    settings=dict(parent.settings),
                )
            )

    def _lock_or_create_model(self, s: Session, name: str, task: str) -> ModelRow:
        values = {
            "name": name,
            "task": task,
            "description": "",
            "created_at": _now(),
            "last_version": 0,
            "stamp": 0,
        }
        insert = postgresql.insert if self._is_postgresql else sqlite.insert
        # Two first registrations of one name race here; ON CONFLICT lets both go on.
        s.execute(insert(ModelRow).values(**values).on_conflict_do_nothing(index_elements=["name"]))
        return self._model_row(s, name, lock=True)

    def get_model(self, name: str) -> Model:
        with self._read() as s:
            return _model(self._model_row(s, name))

    def list_models(self) -> list[Model]:
        with self._read() as s:
            return [_model(r) for r in s.scalars(select(ModelRow).order_by(ModelRow.name))]

    def list_versions(self, model: str) -> list[ModelVersion]:
        with self._read() as s:
            m = self._model_row(s, model)
            aliases: dict[int, list[str]] = {}
            for name, version_id in s.execute(
                select(AliasRow.name, AliasRow.version_id).where(AliasRow.model_id == m.id)
            ):
                aliases.setdefault(version_id, []).append(name)
            rows = s.scalars(
                select(VersionRow).where(VersionRow.model_id == m.id).order_by(VersionRow.number)
            )
            return [_version(r, m.name, tuple(sorted(aliases.get(r.id, [])))) for r in rows]

    def get_version(self, model: str, version: int) -> ModelVersion:
        with self._read() as s:
            m = self._model_row(s, model)
            return self._to_version(s, self._version_row(s, m, version), m.name)

    def find_versions(self, package_digest: str) -> list[ModelVersion]:
        with self._read() as s:
            rows = s.execute(
                select(VersionRow, ModelRow.name)
                .join(ModelRow, VersionRow.model_id == ModelRow.id)
                .where(VersionRow.package_digest == package_digest)
                .order_by(VersionRow.created_at, VersionRow.id)
            ).all()
            return [self._to_version(s, row, name) for row, name in rows]

    def update_version(
        self,
        model: str,
        version: int,
        *,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        with self._write() as s:
            m = self._model_row(s, model, lock=True)
            row = self._version_row(s, m, version)
            row.metrics = {**row.metrics, **(metrics or {})}
            row.tags = {**row.tags, **(tags or {})}
            m.stamp += 1
            sql_search.write_search_rows(s, row.id, tags=row.tags, metrics=row.metrics)
            return self._to_version(s, row, m.name)

    def delete_version(self, model: str, version: int) -> ModelVersion:
        with self._write() as s:
            m = self._model_row(s, model, lock=True)
            row = self._version_row(s, m, version)
            gone = self._to_version(s, row, m.name)
            if gone.aliases:
                raise ConflictError(
                    f"{gone.ref} is what alias(es) {', '.join(gone.aliases)} point to: "
                    "move or remove them first"
                )
            # Children keep a hint naming the deleted parent.
            for edge in s.scalars(select(LineageRow).where(LineageRow.parent_id == row.id)):
                edge.parent_id = None
                edge.parent_hint = f"{gone.ref} (deleted)"
            s.execute(delete(LineageRow).where(LineageRow.child_id == row.id))
            sql_search.write_search_rows(s, row.id, tags={}, metrics={})
            s.delete(row)
            m.stamp += 1
            return gone

    # --- aliases ---
    def set_alias(self, model: str, alias: str, version: int, *, moved_by: str) -> AliasMove:
        _check_alias_name(alias)
        with self._write() as s:
            m = self._model_row(s, model, lock=True)
            target = self._version_row(s, m, version)
            row = s.scalars(
                select(AliasRow).where(AliasRow.model_id == m.id, AliasRow.name == alias)
            ).one_or_none()
            previous = None
            if row is None:
                row = AliasRow(model_id=m.id, name=alias, version_id=target.id, updated_at=_now())
                s.add(row)
            else:
                previous = s.get_one(VersionRow, row.version_id).number
                row.version_id = target.id
                row.updated_at = _now()
            m.stamp += 1
            return self._record_move(s, m, alias, previous, version, moved_by)

    def remove_alias(self, model: str, alias: str, *, moved_by: str) -> AliasMove:
        with self._write() as s:
            m = self._model_row(s, model, lock=True)
            row = s.scalars(
                select(AliasRow).where(AliasRow.model_id == m.id, AliasRow.name == alias)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"model {model!r} has no alias {alias!r}")
            previous = s.get_one(VersionRow, row.version_id).number
            s.delete(row)
            m.stamp += 1
            return self._record_move(s, m, alias, previous, None, moved_by)

    def _record_move(
        self, s: Session, m: ModelRow, alias: str, old: int | None, new: int | None, by: str
    ) -> AliasMove:
        move = AliasMoveRow(
            model_id=m.id,
            alias=alias,
            from_version=old,
            to_version=new,
            moved_at=_now(),
            moved_by=by,
        )
        s.add(move)
        return _move(move, m.name)

    def get_alias(self, model: str, alias: str) -> ModelVersion:
        return self.resolve_alias(model, alias).version

    def resolve_alias(self, model: str, alias: str) -> Resolution:
        with self._read() as s:
            found = sql_search.resolve(s, model, alias)
            if found is None:
                m = self._model_row(s, model)  # no such model: say so
                if alias == LATEST:
                    raise NotFoundError(f"model {m.name!r} has no versions")
                raise NotFoundError(f"model {model!r} has no alias {alias!r}")
            row, name, stamp, aliases = found
            return Resolution(_version(row, name, aliases), stamp)

    def model_stamps(self, models: Iterable[str]) -> dict[str, int]:
        with self._read() as s:
            return sql_search.stamps(s, models)

    def search_versions(self, query: VersionQuery) -> VersionPage:
        with self._read() as s:
            model_id = self._model_row(s, query.model).id if query.model is not None else None
            rows, last = sql_search.search(s, query, model_id)
            aliases = sql_search.aliases_of(s, [row.id for row, _ in rows])
            versions = tuple(_version(row, name, aliases.get(row.id, ())) for row, name in rows)
            return VersionPage(versions, encode_cursor(query, last) if last else None)

    def alias_history(self, model: str, alias: str | None = None) -> list[AliasMove]:
        with self._read() as s:
            m = self._model_row(s, model)
            query = select(AliasMoveRow).where(AliasMoveRow.model_id == m.id)
            if alias is not None:
                query = query.where(AliasMoveRow.alias == alias)
            return [_move(r, m.name) for r in s.scalars(query.order_by(AliasMoveRow.id))]

    # --- lineage ---
    def parent_edges(self, model: str, version: int) -> list[LineageEdge]:
        return self._edges(model, version, is_parents=True)

    def child_edges(self, model: str, version: int) -> list[LineageEdge]:
        return self._edges(model, version, is_parents=False)

    def _edges(self, model: str, version: int, *, is_parents: bool) -> list[LineageEdge]:
        with self._read() as s:
            m = self._model_row(s, model)
            row = self._version_row(s, m, version)
            column = LineageRow.child_id if is_parents else LineageRow.parent_id
            edges = s.scalars(select(LineageRow).where(column == row.id).order_by(LineageRow.id))
            return [
                LineageEdge(
                    child=self._ref_of(s, e.child_id) or "",
                    parent=self._ref_of(s, e.parent_id),
                    parent_hint=e.parent_hint,
                    transformation=e.transformation,
                    settings=dict(e.settings),
                )
                for e in edges
            ]

    # --- runs ---
    def create_run(
        self,
        *,
        name: str,
        recipe: Mapping[str, Any],
        data_fingerprint: str,
        code_version: str,
        params: Mapping[str, Any],
        created_by: str,
    ) -> Run:
        with self._write() as s:
            row = RunRow(
                id=uuid.uuid4().hex,
                name=name,
                recipe=dict(recipe),
                data_fingerprint=data_fingerprint,
                code_version=code_version,
                params=dict(params),
                status="running",
                started_at=_now(),
                ended_at=None,
                created_by=created_by,
            )
            s.add(row)
            return _run(row, ())

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int) -> None:
        with self._write() as s:
            self._run_row(s, run_id)
            at = _now()
            for key, value in metrics.items():
                s.add(
                    RunMetricRow(
                        run_id=run_id, key=key, step=step, value=float(value), timestamp=at
                    )
                )

    def finish_run(self, run_id: str, *, status: str = "finished") -> Run:
        if status not in RUN_STATUSES[1:]:
            raise RegistryError(f"run status must be finished or failed, got {status!r}")
        with self._write() as s:
            row = self._run_row(s, run_id)
            row.status = status
            row.ended_at = _now()
            return _run(row, self._metric_points(s, run_id))

    def get_run(self, run_id: str) -> Run:
        with self._read() as s:
            return _run(self._run_row(s, run_id), self._metric_points(s, run_id))

    def _run_row(self, s: Session, run_id: str) -> RunRow:
        row = s.get(RunRow, run_id)
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return row

    def _metric_points(self, s: Session, run_id: str) -> tuple[MetricPoint, ...]:
        rows = s.scalars(
            select(RunMetricRow)
            .where(RunMetricRow.run_id == run_id)
            .order_by(RunMetricRow.key, RunMetricRow.step, RunMetricRow.id)
        )
        return tuple(MetricPoint(r.key, r.step, r.value, _utc(r.timestamp)) for r in rows)

    # --- artifact bookkeeping ---
    def begin_upload(self, package_digest: str) -> int:
        with self._write() as s:
            row = UploadRow(package_digest=package_digest, started_at=_now())
            s.add(row)
            s.flush()
            return row.id

    def end_upload(self, upload_id: int) -> None:
        with self._write() as s:
            s.execute(delete(UploadRow).where(UploadRow.id == upload_id))

    def live_digests(self, *, pending_max_age_s: float) -> set[str]:
        with self._write() as s:
            cutoff = _now() - timedelta(seconds=pending_max_age_s)
            stale = [r for r in s.scalars(select(UploadRow)) if _utc(r.started_at) <= cutoff]
            for row in stale:
                s.delete(row)
            s.flush()
            live = set(s.scalars(select(VersionRow.package_digest)))
            live.update(s.scalars(select(UploadRow.package_digest)))
            return live

    # --- users and tokens ---
    def create_user(self, name: str, role: Role) -> User:
        with self._write() as s:
            if s.scalars(select(UserRow).where(UserRow.name == name)).one_or_none():
                raise ConflictError(f"user {name!r} already exists")
            row = UserRow(name=name, role=Role(role).value, created_at=_now())
            s.add(row)
            return User(row.name, Role(row.role), row.created_at)

    def list_users(self) -> list[User]:
        with self._read() as s:
            rows = s.scalars(select(UserRow).order_by(UserRow.name))
            return [User(r.name, Role(r.role), _utc(r.created_at)) for r in rows]

    def create_token(self, user: str, *, name: str = "") -> tuple[ApiToken, str]:
        with self._write() as s:
            owner = self._user_row(s, user)
            token_id = secrets.token_hex(8)
            secret = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
            row = TokenRow(
                id=token_id,
                user_id=owner.id,
                name=name,
                secret_sha256=_hash_secret(secret),
                created_at=_now(),
            )
            s.add(row)
            return ApiToken(token_id, owner.name, name, row.created_at, None), secret

    def revoke_token(self, token_id: str) -> ApiToken:
        with self._write() as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id!r}")
            row.revoked_at = row.revoked_at or _now()
            owner = s.get_one(UserRow, row.user_id)
            return ApiToken(
                row.id, owner.name, row.name, _utc(row.created_at), _utc(row.revoked_at)
            )

    def has_tokens(self) -> bool:
        with self._read() as s:
            query = select(TokenRow.id).where(TokenRow.revoked_at.is_(None)).limit(1)
            return s.scalars(query).first() is not None

    def authenticate(self, secret: str) -> User:
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != TOKEN_PREFIX:
            raise AuthError("not a Kiln API token")
        with self._read() as s:
            row = s.get(TokenRow, parts[1])
            if row is None or not hmac.compare_digest(row.secret_sha256, _hash_secret(secret)):
                raise AuthError("unknown API token")
            if row.revoked_at is not None:
                raise AuthError(f"API token {row.id} was revoked")
            owner = s.get_one(UserRow, row.user_id)
            return User(owner.name, Role(owner.role), _utc(owner.created_at))

    def _user_row(self, s: Session, name: str) -> UserRow:
        row = s.scalars(select(UserRow).where(UserRow.name == name)).one_or_none()
        if row is None:
            raise NotFoundError(f"no user named {name!r}")
        return row


def _check_alias_name(alias: str) -> None:
    is_valid = alias.replace("-", "").replace("_", "").isalnum() and alias.isascii()
    if not is_valid or alias.isdigit() or alias == LATEST:
        raise RegistryError(
            "alias must be letters, digits, '-' or '_', not a plain number and not 'latest', "
            f"got {alias!r}"
        )


def _version_row(new: NewVersion, model: ModelRow) -> VersionRow:
    return VersionRow(
        model_id=model.id,
        number=model.last_version,
        package_digest=new.package_digest,
        format=new.format,
        precision=new.precision,
        metrics=dict(new.metrics),
        tags=dict(new.tags),
        description=new.description,
        created_at=_now(),
        created_by=new.created_by,
        data_fingerprint=new.data_fingerprint,
        run_id=new.run_id,
    )


def _model(row: ModelRow) -> Model:
    return Model(row.name, row.task, row.description, _utc(row.created_at), row.last_version)


def _version(row: VersionRow, model: str, aliases: tuple[str, ...]) -> ModelVersion:
    return ModelVersion(
        model=model,
        version=row.number,
        package_digest=row.package_digest,
        format=row.format,
        precision=row.precision,
        metrics=dict(row.metrics),
        tags=dict(row.tags),
        description=row.description,
        created_at=_utc(row.created_at),
        created_by=row.created_by,
        data_fingerprint=row.data_fingerprint,
        run_id=row.run_id,
        aliases=aliases,
    )


def _move(row: AliasMoveRow, model: str) -> AliasMove:
    return AliasMove(
        model, row.alias, row.from_version, row.to_version, _utc(row.moved_at), row.moved_by
    )


def _run(row: RunRow, points: tuple[MetricPoint, ...]) -> Run:
    return Run(
        id=row.id,
        name=row.name,
        recipe=dict(row.recipe),
        data_fingerprint=row.data_fingerprint,
        code_version=row.code_version,
        params=dict(row.params),
        status=row.status,
        started_at=_utc(row.started_at),
        ended_at=_utc(row.ended_at) if row.ended_at else None,
        created_by=row.created_by,
        metrics=points,
    )

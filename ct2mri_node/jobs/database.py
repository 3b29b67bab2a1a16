"""The job store's connection layer: one SQL dialect, two servers (SQLite and PostgreSQL).

Why psycopg with the same SQL rather than SQLAlchemy Core: the store's queries are a few dozen
plain statements that already run on both servers except for small, mechanical differences
(``?`` placeholders, ``lastrowid``, ``AUTOINCREMENT``/``REAL`` in the schema, PRAGMAs, ``BEGIN
IMMEDIATE``), so a thin translating layer keeps every query readable in one place and adds one
small dependency, where SQLAlchemy would mean rewriting each of them and a large one.

* :class:`SqliteDatabase`: today's behaviour: WAL, ``synchronous=FULL``, every write transaction
  ``BEGIN IMMEDIATE`` (one writer at a time). One machine only: SQLite's locks do not work over
  a network filesystem.
* :class:`PostgresDatabase`: ``?`` becomes ``%s``, ``INSERT INTO jobs`` gets ``RETURNING id``,
  the schema's ``INTEGER``/``REAL``/``AUTOINCREMENT`` become ``BIGINT``/``DOUBLE PRECISION``/
  ``IDENTITY``. A ``serial`` transaction takes one transaction-scoped advisory lock, so it is
  serialised like SQLite's ``BEGIN IMMEDIATE`` and every store method keeps the invariants it has
  on SQLite; claims run ``serial=False`` and lock only the rows they take (``SELECT ... FOR UPDATE
  [OF t] SKIP LOCKED``, which the SQLite dialect drops: there the whole database is locked).
  Connections are pooled per store, checked before use and re-opened, waiting up to
  ``connect_timeout_s`` while the server is away (a restart loses no call). Errors become
  :class:`~ct2mri_node.errors.SpoolError`; the password never appears in a message.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..errors import SpoolError

log = logging.getLogger(__name__)

#: The key of PostgreSQL's advisory lock that serial transactions take (ASCII "ct2mri").
STORE_LOCK_KEY = 0x637432_6D7269
_FOR_UPDATE = re.compile(r"\s+FOR\s+UPDATE(\s+OF\s+\w+)?(\s+SKIP\s+LOCKED)?", re.IGNORECASE)


def is_postgres_url(location: str | Path) -> bool:
    """Whether ``location`` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what every message and log line shows)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


class Cursor(Protocol):
    """What store code reads back from :meth:`Connection.execute` (as ``sqlite3.Cursor``)."""

    rowcount: int
    lastrowid: int | None

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection as store code uses it: ``execute`` with ``?`` placeholders; rows by name or index."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    """One job store database (see the module docstring for the two kinds)."""

    dialect: str
    location: str   # for messages: the file, or the URL without its password

    def connect(self) -> Any: ...
    def transaction(self, serial: bool = True) -> Any: ...
    def ensure_schema(self, script: str) -> None: ...
    def columns(self, conn: Connection, table: str) -> set[str]: ...
    def tables(self, conn: Connection) -> set[str]: ...
    def close(self) -> None: ...


# -- SQLite ------------------------------------------------------------------------------------
class _SqliteConnection:
    """A sqlite3 connection that drops the row-lock clauses SQLite does not have."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(_FOR_UPDATE.sub("", sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self.raw.executemany(sql, rows)


class SqliteDatabase:
    """SQLite in WAL mode with a full fsync on every commit (the embedded default, one machine)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open the job database {self.path}: {exc}") from exc

    @contextmanager
    def connect(self) -> Iterator[_SqliteConnection]:
        """A connection (autocommit unless a transaction is begun); closed on exit."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield _SqliteConnection(conn)
        finally:
            conn.close()

    @contextmanager
    def transaction(self, serial: bool = True) -> Iterator[_SqliteConnection]:
        """``BEGIN IMMEDIATE``: the write lock is taken before reading, so claims are atomic."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def ensure_schema(self, script: str) -> None:
        with self.connect() as conn:
            conn.raw.executescript(script)

    def columns(self, conn: Connection, table: str) -> set[str]:
        return {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}

    def tables(self, conn: Connection) -> set[str]:
        return {r["name"] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def close(self) -> None:
        """Nothing is kept open between calls."""


# -- PostgreSQL --------------------------------------------------------------------------------
class Row(tuple):  # type: ignore[type-arg]
    """A result row readable by index, by column name and as ``dict(row)`` (like ``sqlite3.Row``)."""

    _index: dict[str, int]

    def __new__(cls, index: dict[str, int], values: Sequence[Any]) -> Row:  # noqa: PYI034
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(index, values)


class _PgCursor:
    def __init__(self, cursor: Any, lastrowid: int | None = None) -> None:
        self._cursor = cursor
        self.rowcount = int(cursor.rowcount)
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor.fetchall())


_DDL = ((re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
        (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"))


def postgres_sql(sql: str) -> tuple[str, bool]:
    """The PostgreSQL form of one store statement, and whether it returns the new job's id."""
    text = sql.replace("%", "%%").replace("?", "%s")
    returning = bool(re.match(r"\s*INSERT INTO jobs \((?!id\b)", text)) and "RETURNING" not in text
    if returning:
        text += " RETURNING id"
    return text, returning


def postgres_ddl(script: str) -> str:
    """The PostgreSQL form of a SQLite schema script."""
    for pattern, replacement in _DDL:
        script = pattern.sub(replacement, script)
    return script


class _PgConnection:
    """A psycopg connection speaking the store's SQL (``?`` placeholders, ``lastrowid``)."""

    def __init__(self, raw: Any, database: PostgresDatabase) -> None:
        self.raw = raw
        self._db = database
        self._cache: dict[str, tuple[str, bool]] = {}

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _PgCursor:
        import psycopg

        translated = self._cache.get(sql)
        if translated is None:
            translated = self._cache[sql] = postgres_sql(sql)
        text, returning = translated
        try:
            cur = self.raw.execute(text, list(params))
            lastrowid = int(cur.fetchone()[0]) if returning else None
        except psycopg.Error as exc:
            raise SpoolError(f"job store {self._db.location}: {str(exc).strip()}") from exc
        return _PgCursor(cur, lastrowid)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        import psycopg

        try:
            with self.raw.cursor() as cur:
                cur.executemany(postgres_sql(sql)[0], [list(r) for r in rows])
        except psycopg.Error as exc:
            raise SpoolError(f"job store {self._db.location}: {str(exc).strip()}") from exc


class PostgresDatabase:
    """A PostgreSQL server shared by every receiver and worker (``job_store.url``)."""

    dialect = "postgresql"

    def __init__(self, url: str, password: str | None = None, connect_timeout_s: float = 30.0,
                 pool_size: int = 8) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:  # pragma: no cover (a dependency in pyproject)
            raise SpoolError("job_store.url names PostgreSQL but psycopg is not installed "
                             "(pip install 'psycopg[binary]')") from exc
        self.url = url
        self.location = mask_url(url)
        self._password = password
        self.connect_timeout_s = float(connect_timeout_s)
        self._pool: list[Any] = []
        self._pool_size = pool_size
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresDatabase({self.location!r})"

    def _open(self) -> Any:
        """A new server connection, retried until ``connect_timeout_s`` passes (server restarting)."""
        import psycopg

        deadline = time.monotonic() + self.connect_timeout_s
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": _row_factory, "connect_timeout": 5}
        if self._password is not None:
            kwargs["password"] = self._password
        delay = 0.05
        while True:
            try:
                return psycopg.connect(self.url, **kwargs)
            except psycopg.Error as exc:
                if time.monotonic() + delay > deadline:
                    message = str(exc).strip().replace(self._password or "\0", "***")
                    raise SpoolError(f"cannot reach the job store {self.location}: {message}") from None
                if delay == 0.05:   # once per call: the server may be restarting
                    log.warning("job store %s unreachable; retrying for up to %.0f s", self.location,
                                self.connect_timeout_s)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _checkout(self) -> Any:
        """A pooled connection that answers, or a new one."""
        import psycopg

        while True:
            with self._lock:
                raw = self._pool.pop() if self._pool else None
            if raw is None:
                return self._open()
            try:
                raw.execute("SELECT 1")
                return raw
            except psycopg.Error:
                raw.close()   # the server restarted or dropped it: try the next one

    def _checkin(self, raw: Any) -> None:
        from psycopg.pq import TransactionStatus

        if raw.closed or raw.info.transaction_status != TransactionStatus.IDLE:
            raw.close()
            return
        with self._lock:
            if len(self._pool) < self._pool_size:
                self._pool.append(raw)
                return
        raw.close()

    @contextmanager
    def connect(self) -> Iterator[_PgConnection]:
        """A pooled connection in autocommit mode; back to the pool on exit."""
        raw = self._checkout()
        try:
            yield _PgConnection(raw, self)
        finally:
            self._checkin(raw)

    @contextmanager
    def transaction(self, serial: bool = True) -> Iterator[_PgConnection]:
        """One transaction; ``serial`` also takes the store lock (SQLite's ``BEGIN IMMEDIATE``),
        otherwise the caller locks the rows it changes (``FOR UPDATE``, claims: ``SKIP LOCKED``)."""
        with self.connect() as conn:
            conn.execute("BEGIN")
            try:
                if serial:
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (STORE_LOCK_KEY,))
                yield conn
            except BaseException:
                try:
                    conn.raw.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 (a dead connection has rolled back already)
                    conn.raw.close()
                raise
            conn.execute("COMMIT")

    def ensure_schema(self, script: str) -> None:
        """Run a schema script under the store lock (concurrent ``CREATE ... IF NOT EXISTS`` race)."""
        with self.transaction() as conn:
            for statement in postgres_ddl(script).split(";"):
                if statement.strip():
                    conn.execute(statement)

    def columns(self, conn: Connection, table: str) -> set[str]:
        rows = conn.execute("SELECT column_name FROM information_schema.columns"
                            " WHERE table_schema=current_schema() AND table_name=?", (table,))
        return {r["column_name"] for r in rows}

    def tables(self, conn: Connection) -> set[str]:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()")
        return {r["table_name"] for r in rows}

    def close(self) -> None:
        """Close the pooled connections (a store is usually kept for the process's life)."""
        with self._lock:
            pool, self._pool = self._pool, []
        for raw in pool:
            raw.close()


def open_database(location: str | Path, password: str | None = None,
                  connect_timeout_s: float = 30.0) -> SqliteDatabase | PostgresDatabase:
    """A SQLite file path or a ``postgresql://`` URL -> its database."""
    if is_postgres_url(location):
        return PostgresDatabase(str(location), password, connect_timeout_s)
    if isinstance(location, str) and "://" in location:
        raise SpoolError(f"job store {mask_url(location)}: only SQLite paths and postgresql:// URLs are supported")
    return SqliteDatabase(Path(location))

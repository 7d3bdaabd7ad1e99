"""Who may do what in Postgres, one role per service (``churnops grant-reader`` locally,
the ECS init containers on AWS, as the administrator):

* ``writer`` (the flow): read, insert, update the metrics tables; no DDL, no DELETE (the
  administrator migrates first);
* ``reader`` (Grafana): SELECT on :data:`~churnops.monitoring.metrics_db.DASHBOARD_TABLES`;
* ``owner`` (MLflow, Prefect): owns its own database, which no one else may connect to.

Idempotent and serialised by an advisory lock (init containers start together); passwords
go as SCRAM verifiers, never as text a server log could keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from psycopg2 import sql
from psycopg2.errors import InsufficientPrivilege
from psycopg2.extensions import encrypt_password
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.pool import NullPool

from churnops.monitoring.metrics_db import DASHBOARD_TABLES, metadata, upgrade

#: Key of the advisory lock that serialises role changes (any constant; "churnops").
LOCK_KEY = 0x636875726E6F7073

#: What the flow may do to each of its tables; alembic_version is only read.
WRITER_PRIVILEGES = sql.SQL("SELECT, INSERT, UPDATE")
VERSION_TABLE = "alembic_version"
#: The dashboards' read-only role (`churnops grant-reader`); Grafana logs in as it.
DASHBOARD_ROLE = "grafana_reader"


class Kind(StrEnum):
    OWNER = "owner"
    WRITER = "writer"
    READER = "reader"


@dataclass(frozen=True)
class Role:
    """A login role; ``database`` None: the database of the administrator's URL."""

    kind: Kind
    name: str
    password: str = field(repr=False)
    database: str | None = None


def ensure_role(admin: Engine | str | URL, role: Role) -> None:
    """Create or update ``role`` with exactly its grants, as ``admin`` (a user who may create
    roles and databases); any role name is taken literally (:mod:`psycopg2.sql`)."""
    url = _admin_url(admin)
    if not role.name:
        raise ValueError("role name is empty")
    database = role.database or url.database
    if not database:
        raise ValueError("no database: give the role one or put one in the URL")
    try:
        with _locked(url) as cursor:
            _ensure_login(cursor, role)
            if role.kind is Kind.OWNER:
                _ensure_owned_database(cursor, role.name, database)
            else:
                _grant_on_metrics(url.set(database=database), role)
    except (InsufficientPrivilege, ProgrammingError) as exc:
        cause = getattr(exc, "orig", exc)
        if not isinstance(cause, InsufficientPrivilege):
            raise
        first = str(cause).strip().splitlines()[0]
        raise ValueError(
            f"{url.username!r} may not set up database roles ({first}): use the URL of the "
            "database's administrator, a user who may create roles"
        ) from exc


def grant_read_only(admin: Engine | str | URL, role: str, password: str) -> None:
    """The dashboards' read-only login on the metrics database of ``admin``."""
    ensure_role(admin, Role(Kind.READER, role, password))


def _admin_url(admin: Engine | str | URL) -> URL:
    url = admin.url if isinstance(admin, Engine) else make_url(admin)
    if url.drivername == "postgresql":  # psycopg2, as in metrics_db.make_engine
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg2":
        raise ValueError(
            "database roles need PostgreSQL through psycopg2; this database is "
            f"{url.get_backend_name()}+{url.get_driver_name()} (set DATABASE_URL to a "
            "postgresql:// URL)"
        )
    return url


@contextmanager
def _locked(url: URL) -> Iterator[Any]:
    """An autocommit cursor (for CREATE DATABASE) holding the lock of role changes, on the
    administrator's database, the same for every init container."""
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            try:
                yield cursor
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    finally:
        engine.dispose()


def _grant_on_metrics(url: URL, role: Role) -> None:
    """Migrate as the administrator, then grant, in one transaction."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        upgrade(engine)  # the schema first: the roles get no DDL
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            for statement in _metrics_grants(role, url.database or ""):
                cursor.execute(statement)
    finally:
        engine.dispose()


def _ensure_login(cursor: Any, role: Role) -> None:
    """A login with the password and nothing else, never a superuser's or the
    administrator's. An existing role loses CREATEDB, CREATEROLE and every role it was
    granted (``pg_write_all_data`` would let a reader write); RDS's administrator may not
    restate SUPERUSER, REPLICATION or BYPASSRLS, so a role with one of them is refused."""
    cursor.execute(
        "SELECT rolsuper OR rolreplication OR rolbypassrls, rolname = current_user "
        "FROM pg_roles WHERE rolname = %s",
        (role.name,),
    )
    found = cursor.fetchone()
    if found and (found[0] or found[1]):
        raise ValueError(
            f"role {role.name!r} is a superuser or the administrator, or may replicate or "
            "bypass row security: pick another"
        )
    verifier = encrypt_password(role.password, role.name, cursor.connection)
    statement = (
        "ALTER ROLE {who} WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD {password}"
        if found
        else "CREATE ROLE {who} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        "PASSWORD {password}"
    )
    cursor.execute(
        sql.SQL(statement).format(who=sql.Identifier(role.name), password=sql.Literal(verifier))
    )
    _revoke_memberships(cursor, role.name)
    # PostgreSQL 16 asks the administrator to act as the role to give it a database
    cursor.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role.name)))


def _revoke_memberships(cursor: Any, name: str) -> None:
    """The role is a member of no other role: it holds only what is granted to it here."""
    cursor.execute(
        "SELECT m.roleid::regrole::text FROM pg_auth_members m "
        "JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = %s",
        (name,),
    )
    for (granted,) in cursor.fetchall():
        cursor.execute(sql.SQL("REVOKE {} FROM {}").format(sql.SQL(granted), sql.Identifier(name)))


def _ensure_owned_database(cursor: Any, owner: str, database: str) -> None:
    """``database`` exists, belongs to ``owner``, and only its owner may connect."""
    who, name = sql.Identifier(owner), sql.Identifier(database)
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
    if cursor.fetchone():
        cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, who))
    else:
        cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, who))
    cursor.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))


def _metrics_grants(role: Role, database: str) -> list[sql.Composed]:
    """Take everything away, then give exactly what the kind needs; PUBLIC loses what
    PostgreSQL before 15 grants it."""
    who, db = sql.Identifier(role.name), sql.Identifier(database)
    statements = [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, who),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(who),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(who),
        sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(who),
        # Granted by older versions of this code: future tables were readable.
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {}").format(
            who
        ),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, who),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
    ]
    if role.kind is Kind.READER:
        tables = _identifiers(t.name for t in DASHBOARD_TABLES)
        return [*statements, sql.SQL("GRANT SELECT ON {} TO {}").format(tables, who)]
    if role.kind is Kind.WRITER:
        tables = _identifiers(t.name for t in metadata.sorted_tables)
        return [
            *statements,
            sql.SQL("GRANT {} ON {} TO {}").format(WRITER_PRIVILEGES, tables, who),
            sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(VERSION_TABLE), who),
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(who),
        ]
    raise ValueError(f"{role.kind} roles get no grants on the metrics database")


def _identifiers(names: Iterator[str] | Any) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)

"""DuckDB storage laid out like Altertable's warehouse.

The database is attached as catalog ``altertable`` with schema ``analytics``, so the tracking
guide's SQL runs verbatim. Tables (the ``_`` ones are internal):

* ``_events``: one row per accepted track call, as sent (plus ``received_at``).
* ``_identities``: one row per identity: its primary ``distinct_id`` (the id that survived
  aliases), ``traits``, and per-trait timestamps so identifies merge last-write-wins by
  their ``timestamp``, not by arrival order.
* ``identity_distinct_ids``: every id known to belong to an identity (the identified id,
  the ``anonymous_id`` an identify linked, ids merged by ``alias``), one row per
  ``(environment, distinct_id)``.

Views:

* ``events``: ``_events`` with ``identity_uuid`` and ``identity_traits`` resolved *now*
  through ``identity_distinct_ids`` (by ``distinct_id``, else ``anonymous_id``), so events
  reflect identifies and aliases that came after them.
* ``identities``: one row per identity with ``distinct_id``, ``traits``, ``updated_at``,
  ``created_at``, ``environment``, ``identity_uuid`` and ``distinct_ids`` (all linked ids).

Identity semantics (decisions where the API documentation is silent, close to the official
mock): a track call never creates or links identities. ``identify`` creates the identity of
``distinct_id`` if needed, shallow-merges ``traits`` and links ``anonymous_id`` when that id
belongs to no identity yet. ``alias`` merges the identity of ``distinct_id`` into that of
``new_user_id`` (created if needed); both ids, and every id linked to either, then resolve
to the merged identity, whose primary id is ``new_user_id``.

A Python mirror of the identity tables answers lookups without queries; the receiver is the
only writer of its database file (DuckDB locks it), so the mirror stays exact. One lock
serialises every use of the store's own connection; untrusted queries get connections of
their own (:meth:`Store.reader`) and never take it. Once set up, the database is locked down
for everyone: external access off (no file read or written, no attach, install or load) and
the configuration locked (no ``SET``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

from ._validation import AliasItem, IdentifyItem, TrackItem

__all__ = [
    "INSTALL_HINT",
    "Store",
    "StoreError",
    "import_duckdb",
    "new_uuid7",
    "sql_string",
    "to_jsonable",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'opentelemetry-exporter-altertable[local]'"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS altertable.analytics;
CREATE TABLE IF NOT EXISTS altertable.analytics._meta (key VARCHAR NOT NULL, value VARCHAR);
CREATE TABLE IF NOT EXISTS altertable.analytics._events (
    uuid VARCHAR NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    event VARCHAR NOT NULL,
    properties JSON NOT NULL,
    distinct_id VARCHAR,
    anonymous_id VARCHAR,
    device_id VARCHAR,
    session_id VARCHAR,
    environment VARCHAR NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS altertable.analytics._identities (
    identity_uuid VARCHAR NOT NULL,
    environment VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL,
    traits JSON NOT NULL,
    trait_timestamps JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS altertable.analytics.identity_distinct_ids (
    environment VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL,
    identity_uuid VARCHAR NOT NULL
);
CREATE OR REPLACE VIEW altertable.analytics.identities AS
SELECT
    i.distinct_id,
    i.traits,
    i.updated_at,
    i.created_at,
    i.environment,
    i.identity_uuid,
    (
        SELECT list(m.distinct_id ORDER BY m.distinct_id)
        FROM altertable.analytics.identity_distinct_ids AS m
        WHERE m.identity_uuid = i.identity_uuid
    ) AS distinct_ids
FROM altertable.analytics._identities AS i;
CREATE OR REPLACE VIEW altertable.analytics.events AS
SELECT
    e.uuid,
    e.timestamp,
    e.event,
    e.properties,
    e.distinct_id,
    e.anonymous_id,
    e.device_id,
    e.session_id,
    e.environment,
    i.identity_uuid,
    i.traits AS identity_traits,
    e.received_at
FROM altertable.analytics._events AS e
LEFT JOIN altertable.analytics.identity_distinct_ids AS by_distinct
    ON by_distinct.environment = e.environment AND by_distinct.distinct_id = e.distinct_id
LEFT JOIN altertable.analytics.identity_distinct_ids AS by_anonymous
    ON by_anonymous.environment = e.environment AND by_anonymous.distinct_id = e.anonymous_id
LEFT JOIN altertable.analytics._identities AS i
    ON i.identity_uuid = coalesce(by_distinct.identity_uuid, by_anonymous.identity_uuid);
"""

# The batch travels as ONE JSON string: binding one Python value per cell costs ~1 us each,
# several times what DuckDB's JSON reader needs. Row = [micros, event, properties, distinct_id,
# anonymous_id, device_id, session_id, environment]; {uuid} is uuidv7() where DuckDB has it.
_INSERT_EVENTS = """
INSERT INTO altertable.analytics._events
SELECT
    {uuid}::VARCHAR,
    make_timestamp(r[1]::BIGINT)::TIMESTAMPTZ,
    r[2] ->> '$',
    r[3],
    r[4] ->> '$',
    r[5] ->> '$',
    r[6] ->> '$',
    r[7] ->> '$',
    r[8] ->> '$',
    now()
FROM (SELECT unnest(json_transform($1, '[["JSON"]]')) AS r)
"""
_LOCK_DOWN = "SET enable_external_access = false; SET lock_configuration = true"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


class StoreError(Exception):
    """Storing failed; ``stored`` items of the batch (its first ones) were kept."""

    def __init__(self, message: str, stored: int) -> None:
        super().__init__(message)
        self.stored = stored


def import_duckdb() -> Any:
    """Import DuckDB on first use, so the exporter never needs it."""
    try:
        import duckdb
    except ImportError:
        raise ImportError(f"the local receiver needs DuckDB: {INSTALL_HINT}") from None
    return duckdb


def new_uuid7() -> str:
    """A time-ordered UUID (version 7), as the API's task and event ids are."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (millis & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | ((rand >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


@dataclass
class _Identity:
    identity_uuid: str
    environment: str
    distinct_id: str
    created_at: datetime
    updated_at: datetime
    traits: dict[str, Any] = field(default_factory=dict)
    trait_times: dict[str, float] = field(default_factory=dict)

    def merge_traits(self, traits: dict[str, Any], at: float) -> None:
        """Shallow merge; a key keeps the value of the latest ``timestamp`` (ties: newest call)."""
        for key, value in traits.items():
            if at >= self.trait_times.get(key, float("-inf")):
                self.traits[key] = value
                self.trait_times[key] = at


class _Changes:
    """What one request changed in the identity mirror, to write in one transaction."""

    def __init__(self) -> None:
        self.identities: dict[str, _Identity | None] = {}
        self.links: dict[tuple[str, str], str] = {}


class Store:
    """The DuckDB database behind a receiver. Thread-safe; every call takes one lock."""

    def __init__(self, db_path: str | os.PathLike[str] | None = None) -> None:
        duckdb = import_duckdb()
        self.db_path = None if db_path is None else os.fspath(db_path)
        self._lock = threading.Lock()
        self._closed = False
        self._conn: Any = duckdb.connect(":memory:")
        try:
            self._conn.execute("SET GLOBAL TimeZone = 'UTC'")
            target = ":memory:" if self.db_path is None else self.db_path
            self._conn.execute(f"ATTACH {sql_string(target)} AS altertable")
            self._conn.execute(_SCHEMA)
            self._insert_sql = _INSERT_EVENTS.format(uuid=self._uuid_function())
            self._conn.execute(
                "DELETE FROM altertable.analytics._meta WHERE key = 'schema_version';"
                "INSERT INTO altertable.analytics._meta VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
            self._links: dict[tuple[str, str], str] = {}
            self._identities: dict[str, _Identity] = {}
            self._load_identities()
            # Last: from here on no connection to this database (ours, or the readers that
            # /query uses) can read or write a file, attach, install, load or change a setting.
            self._conn.execute(_LOCK_DOWN)
            self._readers: set[Any] = set()
        except BaseException:
            self._conn.close()
            raise

    # -- events -----------------------------------------------------------------------------

    def insert_events(self, items: Sequence[TrackItem]) -> None:
        """Insert a batch in one statement; on failure keep the items before the bad one."""
        if not items:
            return
        with self._lock:
            self._check_open()
            try:
                self._insert_events(items)
                return
            except Exception as exc:  # DuckDB raises many error classes
                logger.debug("batch insert failed (%s); retrying item by item", exc)
            for stored, item in enumerate(items):
                try:
                    self._insert_events([item])
                except Exception as exc:
                    raise StoreError(f"could not store event {stored}: {exc}", stored) from None

    def _insert_events(self, items: Sequence[TrackItem]) -> None:
        rows = [
            [
                (item.timestamp - _EPOCH) // _MICROSECOND,
                item.event,
                item.properties,
                item.distinct_id,
                item.anonymous_id,
                item.device_id,
                item.session_id,
                item.environment,
            ]
            for item in items
        ]
        self._conn.execute(self._insert_sql, [_json(rows)])

    def _uuid_function(self) -> str:
        """``uuidv7()`` (time-ordered, like the API's ids) where this DuckDB has it."""
        try:
            self._conn.execute("SELECT uuidv7()")
        except Exception:
            return "gen_random_uuid()"
        return "uuidv7()"

    # -- identities -------------------------------------------------------------------------

    def apply_identify(self, items: Sequence[IdentifyItem]) -> None:
        """Create or update identities in order; the whole request commits at once."""
        if not items:
            return
        with self._lock:
            self._check_open()
            changes = _Changes()
            for item in items:
                identity = self._get_or_create(
                    item.environment, item.distinct_id, item.timestamp, changes
                )
                if item.traits:
                    identity.merge_traits(item.traits, item.timestamp.timestamp())
                identity.updated_at = max(identity.updated_at, item.timestamp)
                changes.identities[identity.identity_uuid] = identity
                anonymous = item.anonymous_id
                if anonymous is not None and anonymous != item.distinct_id:
                    key = (item.environment, anonymous)
                    if key not in self._links:
                        self._link(key, identity.identity_uuid, changes)
            self._commit(changes, "identify")

    def apply_alias(self, items: Sequence[AliasItem]) -> None:
        """Merge the identity of ``distinct_id`` into the one of ``new_user_id``."""
        if not items:
            return
        with self._lock:
            self._check_open()
            changes = _Changes()
            for item in items:
                target = self._get_or_create(
                    item.environment, item.new_user_id, item.timestamp, changes
                )
                source_key = (item.environment, item.distinct_id)
                source_uuid = self._links.get(source_key)
                if source_uuid is None:
                    self._link(source_key, target.identity_uuid, changes)
                elif source_uuid != target.identity_uuid:
                    self._merge(self._identities[source_uuid], target, changes)
                target.updated_at = max(target.updated_at, item.timestamp)
                changes.identities[target.identity_uuid] = target
            self._commit(changes, "alias")

    def _get_or_create(
        self, environment: str, distinct_id: str, at: datetime, changes: _Changes
    ) -> _Identity:
        key = (environment, distinct_id)
        identity_uuid = self._links.get(key)
        if identity_uuid is not None:
            return self._identities[identity_uuid]
        identity = _Identity(new_uuid7(), environment, distinct_id, at, at)
        self._identities[identity.identity_uuid] = identity
        changes.identities[identity.identity_uuid] = identity
        self._link(key, identity.identity_uuid, changes)
        return identity

    def _link(self, key: tuple[str, str], identity_uuid: str, changes: _Changes) -> None:
        self._links[key] = identity_uuid
        changes.links[key] = identity_uuid

    def _merge(self, source: _Identity, target: _Identity, changes: _Changes) -> None:
        for trait, value in source.traits.items():
            at = source.trait_times.get(trait, float("-inf"))
            if at > target.trait_times.get(trait, float("-inf")):
                target.traits[trait] = value
                target.trait_times[trait] = at
        target.created_at = min(target.created_at, source.created_at)
        target.updated_at = max(target.updated_at, source.updated_at)
        for key, owner in list(self._links.items()):
            if owner == source.identity_uuid:
                self._link(key, target.identity_uuid, changes)
        del self._identities[source.identity_uuid]
        changes.identities[source.identity_uuid] = None

    def _commit(self, changes: _Changes, what: str) -> None:
        alive = [i for i in changes.identities.values() if i is not None]
        link_keys = list(changes.links)
        conn = self._conn
        try:
            conn.execute("BEGIN TRANSACTION")
            conn.execute(
                "DELETE FROM altertable.analytics._identities "
                "WHERE identity_uuid IN (SELECT unnest($1::VARCHAR[]))",
                [list(changes.identities)],
            )
            if alive:
                conn.execute(
                    "INSERT INTO altertable.analytics._identities SELECT "
                    "unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), "
                    "unnest($4::VARCHAR[])::JSON, unnest($5::VARCHAR[])::JSON, "
                    "unnest($6::TIMESTAMPTZ[]), unnest($7::TIMESTAMPTZ[])",
                    [
                        [i.identity_uuid for i in alive],
                        [i.environment for i in alive],
                        [i.distinct_id for i in alive],
                        [_json(i.traits) for i in alive],
                        [_json(i.trait_times) for i in alive],
                        [i.created_at for i in alive],
                        [i.updated_at for i in alive],
                    ],
                )
            if link_keys:
                environments = [k[0] for k in link_keys]
                distinct_ids = [k[1] for k in link_keys]
                conn.execute(
                    "DELETE FROM altertable.analytics.identity_distinct_ids AS m "
                    "USING (SELECT unnest($1::VARCHAR[]) AS environment, "
                    "unnest($2::VARCHAR[]) AS distinct_id) AS k "
                    "WHERE m.environment = k.environment AND m.distinct_id = k.distinct_id",
                    [environments, distinct_ids],
                )
                conn.execute(
                    "INSERT INTO altertable.analytics.identity_distinct_ids SELECT "
                    "unnest($1::VARCHAR[]), unnest($2::VARCHAR[]), unnest($3::VARCHAR[])",
                    [environments, distinct_ids, [changes.links[k] for k in link_keys]],
                )
            conn.execute("COMMIT")
        except Exception as exc:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # the transaction may already be gone
                logger.debug("rollback after a failed %s failed too", what, exc_info=True)
            self._load_identities()
            raise StoreError(f"could not store {what}: {exc}", 0) from None

    def _load_identities(self) -> None:
        self._identities = {}
        rows = self._conn.execute(
            "SELECT identity_uuid, environment, distinct_id, traits, trait_timestamps, "
            "created_at, updated_at FROM altertable.analytics._identities"
        ).fetchall()
        for uid, environment, distinct_id, traits, times, created_at, updated_at in rows:
            self._identities[uid] = _Identity(
                uid,
                environment,
                distinct_id,
                created_at,
                updated_at,
                json.loads(traits),
                json.loads(times),
            )
        links = self._conn.execute(
            "SELECT environment, distinct_id, identity_uuid "
            "FROM altertable.analytics.identity_distinct_ids"
        ).fetchall()
        self._links = {(env, did): uid for env, did, uid in links}

    # -- reading ----------------------------------------------------------------------------

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run SQL; returns the last statement's column names and rows (empty for DDL).

        Statements that may write (anything but SELECT, EXPLAIN, PRAGMA) reload the identity
        mirror afterwards, so hand-made changes to the tables are seen by later calls.
        """
        with self._lock:
            self._check_open()
            kinds = {statement.type.name for statement in self._conn.extract_statements(sql)}
            try:
                cursor = self._conn.execute(sql)
                if cursor.description is None:
                    return [], []
                columns = [d[0] for d in cursor.description]
                return columns, [tuple(row) for row in cursor.fetchall()]
            finally:
                if kinds - {"SELECT", "EXPLAIN", "PRAGMA"}:
                    self._load_identities()

    def reader(self) -> Any:
        """A new DuckDB connection to the same database, for one untrusted query.

        It runs beside ingestion (DuckDB's MVCC), never under the store's lock, and inherits the
        locked-down configuration. Give it back with :meth:`release_reader`.
        """
        with self._lock:
            self._check_open()
            cursor = self._conn.cursor()
            self._readers.add(cursor)
            return cursor

    def readers_open(self) -> int:
        with self._lock:
            return len(self._readers)

    def release_reader(self, cursor: Any) -> None:
        with self._lock:
            self._readers.discard(cursor)
        with contextlib.suppress(Exception):
            cursor.close()

    def interrupt(self) -> None:
        """Abort the statements running now, if any (used by a stop that cannot wait)."""
        with contextlib.suppress(Exception):
            self._conn.interrupt()
        with self._lock:
            readers = list(self._readers)
        for cursor in readers:
            with contextlib.suppress(Exception):
                cursor.interrupt()

    def close(self) -> None:
        """Checkpoint and close; later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self.db_path is not None:
                    self._conn.execute("CHECKPOINT altertable")
            finally:
                self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the receiver's database is closed")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled), for the statements DuckDB cannot
    parameterise, such as ``ATTACH``."""
    return "'" + text.replace("'", "''") + "'"


def to_jsonable(value: Any) -> Any:  # noqa: PLR0911  # one return per DuckDB value type
    """Make a DuckDB value JSON-safe: datetimes as ISO 8601, decimals as floats, etc."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, dt_time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return to_jsonable(float(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)

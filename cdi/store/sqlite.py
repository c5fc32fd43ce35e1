"""Object store for the embedded backend: Kubernetes-shaped JSON objects in one SQLite file.

It behaves like the small part of an API server the controller needs: objects keyed by
(kind, namespace, name), a ``metadata.uid``, a global monotonically increasing
``metadata.resourceVersion`` (optimistic concurrency on update), finalizers (a delete with
finalizers only sets ``deletionTimestamp``), and events with k8s-style de-duplication.

Several processes use the file at once (the CLI, the controller daemon): WAL mode, a busy
timeout, and every write in one ``BEGIN IMMEDIATE`` transaction.

The file holds Secrets: it is created 0600 whatever the umask (and an existing one with group or
other bits is tightened), before SQLite opens it; SQLite gives the ``-wal`` and ``-shm`` files
the database's mode. No writer can store a body larger than ``limits.MAX_STORED_BYTES``
(admission's 1.5 MiB plus room for the controller's status): whatever skipped admission, the
database cannot be grown by one giant object.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cdi.api.limits import MAX_STORED_BYTES, json_size
from cdi.common.errors import ConflictError, NotFoundError, PermanentError

Obj = dict[str, Any]
log = logging.getLogger(__name__)
PRIVATE_FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    rv INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ts TEXT NOT NULL,
    last_ts TEXT NOT NULL,
    rv INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_obj ON events (kind, namespace, name);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', 0);
"""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(obj: Obj) -> tuple[str, str, str]:
    md = obj.get("metadata") or {}
    return obj["kind"], md.get("namespace") or "default", md["name"]


def tighten_file(path: str, *, create: bool = False) -> str | None:
    """Make ``path`` mode 0600 (creating it empty with ``create``); says what changed, if anything.

    The mode is set with ``fchmod`` on the open file, so the umask does not matter.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode == PRIVATE_FILE_MODE:
            return None
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        except PermissionError:
            raise PermanentError(
                f"{path} has mode {mode:04o} and belongs to uid {st.st_uid}, so it cannot be made private "
                f"(0600); run as its owner, or chown it to uid {os.geteuid()}",
                reason="UnsafeDataDir",
            ) from None
        return f"{path} from {mode:04o} to {PRIVATE_FILE_MODE:04o}"
    finally:
        os.close(fd)


def _body(obj: Obj) -> str:
    """The stored JSON; refused past MAX_STORED_BYTES (measured as admission measures)."""
    body = json.dumps(obj)
    if len(body) > MAX_STORED_BYTES and json_size(obj, MAX_STORED_BYTES) > MAX_STORED_BYTES:
        kind, ns, name = key_of(obj)
        raise PermanentError(
            f'{kind} "{name}" in namespace "{ns}" is larger than {MAX_STORED_BYTES} bytes as JSON, the most '
            "one stored object may hold; keep large data out of the object (in a volume, or spread over "
            "several Secrets or ConfigMaps)",
            reason="RequestEntityTooLarge",
        )
    return body


class Store:
    """Thread-safe within a process (one connection per thread), safe across processes."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        for p in (path, *(path + suffix for suffix in SIDE_FILES)):
            changed = tighten_file(p, create=p == path)
            if changed:
                log.warning("tightened the permissions of %s: it holds Secrets", changed)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)

    # -- plumbing --------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    @staticmethod
    def _next_rv(db: sqlite3.Connection) -> int:
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'rv'")
        row = db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        return int(row[0])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- reads -----------------------------------------------------------------------------

    def revision(self) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()
        return int(row[0])

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        row = self._db().execute(
            "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def must_get(self, kind: str, namespace: str, name: str) -> Obj:
        obj = self.get(kind, namespace, name)
        if obj is None:
            raise NotFoundError(f'{kind} "{name}" not found in namespace "{namespace}"')
        return obj

    def list(self, kind: str, namespace: str | None = None) -> builtins.list[Obj]:
        if namespace is None:
            rows = self._db().execute("SELECT body FROM objects WHERE kind=? ORDER BY namespace, name", (kind,))
        else:
            rows = self._db().execute(
                "SELECT body FROM objects WHERE kind=? AND namespace=? ORDER BY name", (kind, namespace)
            )
        return [json.loads(r[0]) for r in rows.fetchall()]

    def changed_since(self, rv: int) -> builtins.list[tuple[str, str, str]]:
        """Keys of objects written after ``rv`` (deleted ones are not listed: compare lists)."""
        rows = self._db().execute("SELECT kind, namespace, name FROM objects WHERE rv > ?", (rv,))
        return [(r[0], r[1], r[2]) for r in rows.fetchall()]

    # -- writes ----------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        """Store a new object; raises ConflictError if (kind, namespace, name) exists."""
        obj = copy.deepcopy(obj)
        kind, ns, name = key_of(obj)
        md = obj.setdefault("metadata", {})
        md["namespace"] = ns
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, ns, name)
            ).fetchone():
                raise ConflictError(f'{kind} "{name}" already exists in namespace "{ns}"')
            rv = self._next_rv(db)
            md["uid"] = md.get("uid") or str(uuid.uuid4())
            md["resourceVersion"] = str(rv)
            md["creationTimestamp"] = md.get("creationTimestamp") or now_iso()
            md.setdefault("generation", 1)
            db.execute(
                "INSERT INTO objects (kind, namespace, name, rv, body) VALUES (?, ?, ?, ?, ?)",
                (kind, ns, name, rv, _body(obj)),
            )
        return obj

    def update(self, obj: Obj, *, check_rv: bool = True) -> Obj:
        """Replace an object. With ``check_rv`` the stored resourceVersion must match.

        An object whose deletionTimestamp is set and whose finalizers are now empty is removed.
        """
        obj = copy.deepcopy(obj)
        kind, ns, name = key_of(obj)
        md = obj["metadata"]
        with self._tx() as db:
            row = db.execute(
                "SELECT rv, body FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, ns, name)
            ).fetchone()
            if row is None:
                raise NotFoundError(f'{kind} "{name}" not found in namespace "{ns}"')
            if check_rv and str(row[0]) != str(md.get("resourceVersion")):
                raise ConflictError(
                    f'{kind} "{name}" was modified (resourceVersion {row[0]}, yours {md.get("resourceVersion")}); '
                    "read it again and retry"
                )
            old = json.loads(row[1])
            md["uid"] = old["metadata"]["uid"]
            md["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            if old.get("spec") != obj.get("spec"):
                md["generation"] = int(old["metadata"].get("generation", 1)) + 1
            if md.get("deletionTimestamp") and not md.get("finalizers"):
                db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, ns, name))
                db.execute("DELETE FROM events WHERE kind=? AND namespace=? AND name=?", (kind, ns, name))
                self._next_rv(db)
                return obj
            rv = self._next_rv(db)
            md["resourceVersion"] = str(rv)
            db.execute(
                "UPDATE objects SET rv=?, body=? WHERE kind=? AND namespace=? AND name=?",
                (rv, _body(obj), kind, ns, name),
            )
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> Obj | None:
        """Delete like the API server: with finalizers only mark deletionTimestamp.

        Returns the object as it now is (marked), or None when it is gone.
        :raises NotFoundError: when there is no such object.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name)
            ).fetchone()
            if row is None:
                raise NotFoundError(f'{kind} "{name}" not found in namespace "{namespace}"')
            obj: Obj = json.loads(row[0])
            md = obj["metadata"]
            rv = self._next_rv(db)
            if md.get("finalizers"):
                if not md.get("deletionTimestamp"):
                    md["deletionTimestamp"] = now_iso()
                md["resourceVersion"] = str(rv)
                db.execute(
                    "UPDATE objects SET rv=?, body=? WHERE kind=? AND namespace=? AND name=?",
                    (rv, json.dumps(obj), kind, namespace, name),
                )
                return obj
            db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            db.execute("DELETE FROM events WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            return None

    # -- events ----------------------------------------------------------------------------

    def record_event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        """Record an event on ``obj``; a repeat of the last (type, reason, message) bumps its count."""
        kind, ns, name = key_of(obj)
        uid = obj.get("metadata", {}).get("uid", "")
        ts = now_iso()
        with self._tx() as db:
            rv = self._next_rv(db)
            last = db.execute(
                "SELECT id, type, reason, message FROM events WHERE kind=? AND namespace=? AND name=? "
                "ORDER BY id DESC LIMIT 1",
                (kind, ns, name),
            ).fetchone()
            if last and (last[1], last[2], last[3]) == (type_, reason, message):
                db.execute("UPDATE events SET count=count+1, last_ts=?, rv=? WHERE id=?", (ts, rv, last[0]))
            else:
                db.execute(
                    "INSERT INTO events (kind, namespace, name, uid, type, reason, message, count, first_ts, last_ts, rv) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)",
                    (kind, ns, name, uid, type_, reason, message, ts, ts, rv),
                )

    def events(
        self, kind: str | None = None, namespace: str | None = None, name: str | None = None
    ) -> builtins.list[Obj]:
        """Events as k8s Event-shaped dicts, oldest first."""
        sql = "SELECT kind, namespace, name, uid, type, reason, message, count, first_ts, last_ts FROM events"
        where, args = [], []
        for col, val in (("kind", kind), ("namespace", namespace), ("name", name)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        out = []
        for r in self._db().execute(sql, args).fetchall():
            out.append(
                {
                    "kind": "Event",
                    "involvedObject": {"kind": r[0], "namespace": r[1], "name": r[2], "uid": r[3]},
                    "type": r[4],
                    "reason": r[5],
                    "message": r[6],
                    "count": r[7],
                    "firstTimestamp": r[8],
                    "lastTimestamp": r[9],
                }
            )
        return out

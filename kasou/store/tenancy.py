"""Tables for tenancy: projects, users, memberships, tokens and the audit log.

Shares the SQLiteStore's connection and lock. The audit table refuses UPDATE and DELETE
with triggers: the log is append-only even for code that forgets.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from kasou.errors import Conflict, NotFound
from kasou.store.base import DEFAULT_PROJECT, now_iso
from kasou.store.sqlite import SQLiteStore
from kasou.tenancy.models import Membership, Project, Quota, Role, TokenInfo, User

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, quota TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, admin INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memberships (
    project TEXT NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    role TEXT NOT NULL, PRIMARY KEY (project, user));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    hash TEXT NOT NULL, description TEXT NOT NULL, created_at TEXT NOT NULL,
    expires_at TEXT, revoked INTEGER NOT NULL DEFAULT 0, last_used_at TEXT);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, actor TEXT NOT NULL,
    source TEXT NOT NULL, project TEXT, action TEXT NOT NULL, target TEXT,
    outcome TEXT NOT NULL, status INTEGER NOT NULL, detail TEXT,
    prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_project ON audit(project, ts);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class TenancyStore:
    def __init__(self, store: SQLiteStore) -> None:
        self._db = store._db
        self._lock = store._lock
        with self._lock:
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO projects VALUES (?, ?, ?, ?)",
                (DEFAULT_PROJECT, "the default project", Quota().model_dump_json(), now_iso()))

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _insert(self, sql: str, args: tuple[Any, ...], what: str) -> None:
        try:
            with self._lock:
                self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise Conflict(f"{what} already exists", field="name") from None

    # -- projects ------------------------------------------------------------------------
    def create_project(self, p: Project) -> None:
        self._insert("INSERT INTO projects VALUES (?, ?, ?, ?)",
                     (p.name, p.description, p.quota.model_dump_json(), p.created_at),
                     f"project {p.name!r}")

    @staticmethod
    def _project(row: sqlite3.Row) -> Project:
        return Project(name=row["name"], description=row["description"],
                       quota=Quota.model_validate_json(row["quota"]), created_at=row["created_at"])

    def get_project(self, name: str) -> Project:
        row = self._one("SELECT * FROM projects WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no project named {name!r}")
        return self._project(row)

    def list_projects(self) -> list[Project]:
        return [self._project(r) for r in self._all("SELECT * FROM projects ORDER BY name")]

    def set_quota(self, name: str, quota: Quota) -> None:
        with self._lock:
            cur = self._db.execute("UPDATE projects SET quota = ? WHERE name = ?",
                                   (quota.model_dump_json(), name))
        if cur.rowcount == 0:
            raise NotFound(f"no project named {name!r}")

    def delete_project(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM projects WHERE name = ?", (name,))

    # -- users and memberships ---------------------------------------------------------------
    def create_user(self, u: User) -> None:
        self._insert("INSERT INTO users VALUES (?, ?, ?)", (u.name, int(u.admin), u.created_at),
                     f"user {u.name!r}")

    def get_user(self, name: str) -> User:
        row = self._one("SELECT * FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return User(name=row["name"], admin=bool(row["admin"]), created_at=row["created_at"])

    def list_users(self) -> list[User]:
        return [User(name=r["name"], admin=bool(r["admin"]), created_at=r["created_at"])
                for r in self._all("SELECT * FROM users ORDER BY name")]

    def delete_user(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM users WHERE name = ?", (name,))

    def set_member(self, m: Membership) -> None:
        with self._lock:
            self._db.execute("INSERT INTO memberships VALUES (?, ?, ?) "
                             "ON CONFLICT(project, user) DO UPDATE SET role = excluded.role",
                             (m.project, m.user, m.role.value))

    def remove_member(self, project: str, user: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM memberships WHERE project = ? AND user = ?",
                             (project, user))

    def members(self, project: str) -> list[Membership]:
        return [Membership(project=r["project"], user=r["user"], role=Role(r["role"]))
                for r in self._all("SELECT * FROM memberships WHERE project = ? ORDER BY user",
                                   (project,))]

    def roles_of(self, user: str) -> dict[str, Role]:
        return {r["project"]: Role(r["role"])
                for r in self._all("SELECT * FROM memberships WHERE user = ?", (user,))}

    # -- tokens --------------------------------------------------------------------------
    def create_token(self, t: TokenInfo, hashed: str) -> None:
        self._insert("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, 0, NULL)",
                     (t.id, t.user, hashed, t.description, t.created_at, t.expires_at),
                     f"token {t.id!r}")

    def token_row(self, token_id: str) -> tuple[TokenInfo, str] | None:
        row = self._one("SELECT * FROM tokens WHERE id = ?", (token_id,))
        return None if row is None else (self._token(row), row["hash"])

    @staticmethod
    def _token(row: sqlite3.Row) -> TokenInfo:
        return TokenInfo(id=row["id"], user=row["user"], description=row["description"],
                         created_at=row["created_at"], expires_at=row["expires_at"],
                         revoked=bool(row["revoked"]), last_used_at=row["last_used_at"])

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        if user is None:
            rows = self._all("SELECT * FROM tokens ORDER BY created_at")
        else:
            rows = self._all("SELECT * FROM tokens WHERE user = ? ORDER BY created_at", (user,))
        return [self._token(r) for r in rows]

    def revoke_token(self, token_id: str) -> None:
        with self._lock:
            cur = self._db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))
        if cur.rowcount == 0:
            raise NotFound(f"no token with id {token_id!r}")

    def touch_token(self, token_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?",
                             (now_iso(), token_id))

    # -- audit ----------------------------------------------------------------------------
    def audit_append(self, entry: dict[str, Any], chain: Any) -> dict[str, Any]:
        """Append under the lock, so each entry's `prev` is the entry before it."""
        with self._lock:
            last = self._db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = last["hash"] if last else chain.GENESIS
            full = {**entry, "prev": prev}
            full["hash"] = chain.entry_hash(full)
            cols = ("ts", "actor", "source", "project", "action", "target", "outcome", "status",
                    "detail", "prev", "hash")
            self._db.execute(f"INSERT INTO audit ({', '.join(cols)}) VALUES "
                             f"({', '.join('?' * len(cols))})", tuple(full.get(c) for c in cols))
        return full

    def audit_entries(self, project: str | None = None, since: str | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM audit WHERE 1=1", list[object]()
        if project is not None:
            sql += " AND project = ?"
            args.append(project)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since)
        sql += " ORDER BY seq"
        if limit:
            sql = f"SELECT * FROM ({sql.replace('ORDER BY seq', 'ORDER BY seq DESC')} LIMIT ?) " \
                  "ORDER BY seq"
            args.append(limit)
        return [dict(r) for r in self._all(sql, tuple(args))]


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))

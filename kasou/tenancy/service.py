"""Tenancy operations: users, tokens, projects, members, quotas, the audit log."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kasou.errors import AuthError, Conflict, InvalidSpec, NotFound
from kasou.store.base import DEFAULT_PROJECT, now_iso
from kasou.store.tenancy import TenancyStore
from kasou.tenancy import audit as chain
from kasou.tenancy import quotas, tokens
from kasou.tenancy.models import (
    Membership,
    NewToken,
    Principal,
    Project,
    ProjectSpec,
    Quota,
    Role,
    TokenInfo,
    User,
    UserSpec,
)

MAX_TOKEN_DAYS = 3650


class TenancyService:
    def __init__(self, store: TenancyStore) -> None:
        self.store = store
        self.usage = quotas.UsageRegistry()
        self._verified = tokens.VerifiedCache()
        # A project may be deleted only when nothing in it is left; areas say what they hold.
        self.holdings: list[Callable[[str], int]] = []
        # A user may be deleted only when they hold nothing by name (a pool's desktop):
        # a later user of the same name must not inherit it. Areas say what a user holds.
        self.user_holdings: list[Callable[[str], list[str]]] = []

    # -- who is asking -------------------------------------------------------------------
    @staticmethod
    def local_admin() -> Principal:
        return Principal(name="local-admin", admin=True, source="unix")

    def authenticate(self, presented: str, source: str) -> Principal:
        parsed = tokens.parse_token(presented)
        if parsed is None:
            raise AuthError("malformed token")
        token_id, secret = parsed
        row = self.store.token_row(token_id)
        if row is None:
            raise AuthError("unknown token")
        info, hashed = row
        if info.revoked:
            raise AuthError("token revoked")
        if info.expires_at and info.expires_at <= now_iso():
            raise AuthError("token expired")
        if self._verified.get(presented) != token_id:
            if not tokens.verify_secret(secret, hashed):
                raise AuthError("wrong token")
            self._verified.put(presented, token_id)
        user = self.store.get_user(info.user)
        return Principal(name=user.name, admin=user.admin, token_id=token_id,
                         roles=self.store.roles_of(user.name), source=source)

    # -- users and tokens ----------------------------------------------------------------
    def create_user(self, spec: UserSpec) -> User:
        user = User(**spec.model_dump(), created_at=now_iso())
        self.store.create_user(user)
        return user

    def delete_user(self, name: str) -> None:
        self.store.get_user(name)
        held = [thing for holding in self.user_holdings for thing in holding(name)]
        if held:
            raise Conflict(f"user {name!r} still holds {', '.join(held)}; return "
                           f"{'it' if len(held) == 1 else 'them'} first")
        self.store.delete_user(name)

    def create_token(self, user: str, *, expires_days: float | None = 30,
                     description: str = "") -> NewToken:
        self.store.get_user(user)
        if expires_days is not None and not 0 < expires_days <= MAX_TOKEN_DAYS:
            raise InvalidSpec(f"expires_days: must be between 0 and {MAX_TOKEN_DAYS}",
                              field="expires_days")
        token_id, secret = tokens.new_secret()
        expires = None
        if expires_days is not None:
            when = datetime.now(UTC) + timedelta(days=expires_days)
            expires = when.isoformat(timespec="milliseconds")
        info = TokenInfo(id=token_id, user=user, description=description[:200],
                         created_at=now_iso(), expires_at=expires)
        self.store.create_token(info, tokens.hash_secret(secret))
        return NewToken(**info.model_dump(), token=tokens.format_token(token_id, secret))

    def revoke_token(self, token_id: str) -> None:
        self.store.revoke_token(token_id)
        self._verified.forget(token_id)

    # -- projects ------------------------------------------------------------------------
    def create_project(self, spec: ProjectSpec) -> Project:
        project = Project(**spec.model_dump(), created_at=now_iso())
        self.store.create_project(project)
        return project

    def delete_project(self, name: str) -> None:
        self.store.get_project(name)
        if name == DEFAULT_PROJECT:
            raise Conflict("the default project cannot be deleted")
        held = sum(count(name) for count in self.holdings)
        if held:
            raise Conflict(f"project {name!r} still holds {held} resources; delete them first")
        self.store.delete_project(name)

    def set_quota(self, name: str, quota: Quota) -> Project:
        self.store.set_quota(name, quota)
        return self.store.get_project(name)

    def add_member(self, project: str, user: str, role: Role) -> Membership:
        self.store.get_project(project)
        self.store.get_user(user)
        m = Membership(project=project, user=user, role=role)
        self.store.set_member(m)
        return m

    def describe_project(self, name: str) -> dict[str, Any]:
        p = self.store.get_project(name)
        return {**p.model_dump(mode="json"), "usage": self.usage.usage(name),
                "members": [m.model_dump(mode="json") for m in self.store.members(name)]}

    def visible_projects(self, who: Principal) -> list[Project]:
        projects = self.store.list_projects()
        return projects if who.admin else [p for p in projects if p.name in who.roles]

    def require_project(self, name: str) -> Project:
        try:
            return self.store.get_project(name)
        except NotFound:
            raise NotFound(f"no project named {name!r}") from None

    # -- quotas -----------------------------------------------------------------------------
    def check_quota(self, project: str, add: dict[str, int],
                    used: dict[str, int] | None = None) -> None:
        quota = self.store.get_project(project).quota
        quotas.check(project, quota, self.usage.usage(project) if used is None else used, add)

    # -- audit ---------------------------------------------------------------------------
    def record(self, *, actor: str, source: str, project: str | None, action: str,
               target: str | None, status: int, detail: str | None = None) -> None:
        outcome = "ok" if status < 400 else ("denied" if status in (401, 403, 429) else "error")
        self.store.audit_append({"ts": now_iso(), "actor": actor, "source": source,
                                 "project": project, "action": action, "target": target,
                                 "outcome": outcome, "status": status, "detail": detail}, chain)

    def audit(self, project: str | None = None, since: str | None = None,
              limit: int | None = 1000) -> list[dict[str, Any]]:
        return self.store.audit_entries(project, since, limit)

    def verify_audit(self) -> dict[str, Any]:
        ok, bad, why = chain.verify(self.store.audit_entries())
        return {"ok": ok, "first_bad_seq": bad, "message": why}

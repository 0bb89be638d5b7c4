"""Who may do what: the one table of roles and verbs, checked in one place.

Every API route declares the verb it needs; `authorize` answers for the REST API, the CLI
and the web UI alike (all three go through the API).
"""

from __future__ import annotations

from enum import StrEnum

from kasou.errors import Forbidden
from kasou.tenancy.models import Principal, Role


class Verb(StrEnum):
    READ = "read"          # list and show
    OPERATE = "operate"    # start, stop, console, snapshot...
    CREATE = "create"      # within quota
    DELETE = "delete"
    MANAGE = "manage"      # project members
    ADMIN = "admin"        # projects, quotas, users: global administrators only


ALLOWED: dict[Role, frozenset[Verb]] = {
    Role.VIEWER: frozenset({Verb.READ}),
    Role.MEMBER: frozenset({Verb.READ, Verb.OPERATE, Verb.CREATE, Verb.DELETE}),
    Role.OWNER: frozenset({Verb.READ, Verb.OPERATE, Verb.CREATE, Verb.DELETE, Verb.MANAGE}),
}


def may(principal: Principal, verb: Verb, project: str | None) -> bool:
    if principal.admin:
        return True
    if verb is Verb.ADMIN or project is None:
        return False
    role = principal.roles.get(project)
    return role is not None and verb in ALLOWED[role]


def authorize(principal: Principal, verb: Verb, project: str | None) -> None:
    if may(principal, verb, project):
        return
    if verb is Verb.ADMIN:
        raise Forbidden(f"{principal.name} is not an administrator")
    role = principal.roles.get(project or "")
    if role is None:
        raise Forbidden(f"{principal.name} has no role in project {project!r}")
    raise Forbidden(f"{principal.name} is {role.value} in project {project!r}; "
                    f"{verb.value} needs " + " or ".join(
                        r.value for r, verbs in ALLOWED.items() if verb in verbs))

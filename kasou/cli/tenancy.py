"""`kasou project|user|token ...` and `kasou audit`: tenants, identities, the audit log."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call
from kasou.cli.output import print_fields, print_json, print_table
from kasou.units import parse_size

project_app = typer.Typer(help="Projects (tenants), their members and quotas.",
                          no_args_is_help=True)
user_app = typer.Typer(help="Users (administrators only).", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)


def _out(data: Any, as_json: bool, fields: dict[str, Any] | None = None) -> None:
    if as_json:
        print_json(data)
    else:
        print_fields(fields if fields is not None else data)


def _quota(vcpus: int | None, memory: str | None, disk: str | None, vms: int | None,
           snapshots: int | None, forwards: int | None) -> dict[str, Any]:
    q: dict[str, Any] = {"vcpus": vcpus, "vms": vms, "snapshots": snapshots,
                         "forwards": forwards}
    try:
        q["memory_mib"] = parse_size(memory) >> 20 if memory else None
        q["disk_bytes"] = parse_size(disk) if disk else None
    except ValueError as e:
        from kasou.cli.common import fail

        fail(f"quota: {e}")
    return q


@project_app.command("create")
def project_create(name: str, description: str = "",
                   vcpus: int | None = typer.Option(None, help="Quota: vCPUs."),
                   memory: str | None = typer.Option(None, help="Quota: memory, e.g. 8G."),
                   disk: str | None = typer.Option(None, help="Quota: disk, e.g. 100G."),
                   vms: int | None = typer.Option(None, help="Quota: number of VMs."),
                   snapshots: int | None = typer.Option(None, help="Quota: snapshots."),
                   forwards: int | None = typer.Option(None, help="Quota: port forwards."),
                   as_json: bool = JsonOpt) -> None:
    """Create a project (administrators)."""
    body = {"name": name, "description": description,
            "quota": _quota(vcpus, memory, disk, vms, snapshots, forwards)}
    _out(call(Client().post, "/projects", body), as_json)


@project_app.command("list")
def project_list(as_json: bool = JsonOpt) -> None:
    """Projects you can see."""
    projects = call(Client().get, "/projects")
    if as_json:
        print_json(projects)
        return
    print_table(["NAME", "DESCRIPTION", "CREATED"],
                [[p["name"], p["description"], p["created_at"]] for p in projects])


@project_app.command("show")
def project_show(name: str, as_json: bool = JsonOpt) -> None:
    """A project's quota, usage and members."""
    p = call(Client().get, f"/projects/{name}")
    if as_json:
        print_json(p)
        return
    quota, usage = p["quota"], p["usage"]
    print_fields({"name": p["name"], "description": p["description"]})
    rows = [[k, usage.get(k, 0), "unlimited" if v is None else v] for k, v in quota.items()]
    print_table(["RESOURCE", "USED", "QUOTA"], rows)
    print_table(["MEMBER", "ROLE"], [[m["user"], m["role"]] for m in p["members"]])


@project_app.command("delete")
def project_delete(name: str) -> None:
    """Delete an empty project (administrators)."""
    call(Client().delete, f"/projects/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@project_app.command("quota")
def project_quota(name: str, vcpus: int | None = None, memory: str | None = None,
                  disk: str | None = None, vms: int | None = None,
                  snapshots: int | None = None, forwards: int | None = None,
                  as_json: bool = JsonOpt) -> None:
    """Set a project's quota; an option left out means unlimited (administrators)."""
    _out(call(Client().put, f"/projects/{name}/quota",
              _quota(vcpus, memory, disk, vms, snapshots, forwards)), as_json)


@project_app.command("add-member")
def project_add_member(name: str, user: str,
                       role: str = typer.Option("member", help="owner, member or viewer.")
                       ) -> None:
    """Give a user a role in a project (owners and administrators)."""
    m = call(Client().put, f"/projects/{name}/members/{user}", {"role": role})
    sys.stdout.write(f"{m['user']} is {m['role']} in {m['project']}\n")


@project_app.command("remove-member")
def project_remove_member(name: str, user: str) -> None:
    """Take a user's role in a project away."""
    call(Client().delete, f"/projects/{name}/members/{user}")
    sys.stdout.write(f"{user} removed from {name}\n")


@user_app.command("create")
def user_create(name: str, admin: bool = typer.Option(False, "--admin"),
                as_json: bool = JsonOpt) -> None:
    """Create a user."""
    _out(call(Client().post, "/users", {"name": name, "admin": admin}), as_json)


@user_app.command("list")
def user_list(as_json: bool = JsonOpt) -> None:
    """Users."""
    users = call(Client().get, "/users")
    if as_json:
        print_json(users)
        return
    print_table(["NAME", "ADMIN", "CREATED"], [[u["name"], u["admin"], u["created_at"]]
                                               for u in users])


@user_app.command("delete")
def user_delete(name: str) -> None:
    """Delete a user and its tokens."""
    call(Client().delete, f"/users/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@token_app.command("create")
def token_create(user: str,
                 expires_days: float = typer.Option(30, help="Days until it expires."),
                 description: str = "", as_json: bool = JsonOpt) -> None:
    """Make a token for a user. The token is shown once: keep it."""
    t = call(Client().post, f"/users/{user}/tokens",
             {"expires_days": expires_days, "description": description})
    if as_json:
        print_json(t)
        return
    sys.stdout.write(f"{t['token']}\n")
    sys.stderr.write(f"token {t['id']} for {t['user']}, expires {t['expires_at']}; "
                     "it will not be shown again\n")


@token_app.command("list")
def token_list(as_json: bool = JsonOpt) -> None:
    """Tokens (yours, or all for administrators). Secrets are never shown."""
    tokens = call(Client().get, "/tokens")
    if as_json:
        print_json(tokens)
        return
    print_table(["ID", "USER", "EXPIRES", "REVOKED", "LAST USED", "DESCRIPTION"],
                [[t["id"], t["user"], t["expires_at"], t["revoked"], t["last_used_at"],
                  t["description"]] for t in tokens])


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token at once."""
    call(Client().delete, f"/tokens/{token_id}")
    sys.stdout.write(f"token {token_id} revoked\n")


def audit_cmd(project: str | None = typer.Option(None, "--project", help="One project."),
              since: str | None = typer.Option(None, help="ISO time, e.g. 2026-11-26T10:00."),
              limit: int = typer.Option(100, help="Newest N entries."),
              verify: bool = typer.Option(False, "--verify", help="Check the hash chain."),
              as_json: bool = JsonOpt) -> None:
    """The audit log: who did what, when, from where, and how it ended."""
    c = Client()
    if verify:
        result = call(c.get, "/audit/verify")
        _out(result, as_json)
        if not result["ok"]:
            raise typer.Exit(1)
        return
    entries = call(c.get, "/audit", project=project, since=since, limit=limit)
    if as_json:
        print_json(entries)
        return
    print_table(["SEQ", "TIME", "ACTOR", "FROM", "PROJECT", "ACTION", "TARGET", "STATUS"],
                [[e["seq"], e["ts"], e["actor"], e["source"], e["project"], e["action"],
                  e["target"], e["status"]] for e in entries])

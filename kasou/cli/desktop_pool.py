"""`kasou desktop-pool ...` (VDI pools: many desktops from one template, handed to users)
and `kasou desktop ...` (a user's own desktops). `kasou pool` is storage pools."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call, fail
from kasou.cli.desktop import BASE_HELP, console_url, web_base
from kasou.cli.output import print_fields, print_json, print_table

pool_app = typer.Typer(help="Desktop pools (VDI): desktops as linked clones of a template, "
                       "assigned to users.", no_args_is_help=True)
mine_app = typer.Typer(help="Your own desktops (from desktop pools).", no_args_is_help=True)

POLICY_HELP = ("What a returned desktop becomes: 'reset' (a fresh clone of the template) or "
               "'keep' (as its user left it).")


def _path(name: str, action: str = "") -> str:
    return f"/desktop-pools/{quote(name, safe='')}" + (f"/{action}" if action else "")


def _print_pool(pool: dict[str, Any]) -> None:
    print_fields({"name": pool["name"], "project": pool["project"],
                  "template": pool["template"], "image": pool["image"],
                  "size": pool["size"], "assigned": pool["assigned"],
                  "policy": pool["policy"],
                  "desktop": f"{pool['vcpus']} vCPU, {pool['memory']} MiB"})
    _print_desktops(pool["desktops"])


def _print_desktops(desktops: list[dict[str, Any]]) -> None:
    if desktops:
        sys.stdout.write("\n")
        print_table(["DESKTOP", "POOL", "STATE", "USER", "SINCE"],
                    [[d["vm"], d["pool"], d["state"], d["user"], d["assigned_at"]]
                     for d in desktops])


def _print_access(access: dict[str, Any], base: str | None) -> None:
    url = console_url({"vm": access["vm"], "token": access["token"]}, web_base(base))
    sys.stdout.write(f"{access['user']} has desktop {access['vm']} (pool {access['pool']})\n"
                     f"screen (link valid about a minute): {url}\n")


@pool_app.command("create")
def pool_create(name: str,
                template: str = typer.Option(..., "--from", help="Template volume to clone."),
                size: int = typer.Option(..., "--size", help="Number of desktops."),
                image: str | None = typer.Option(None, help="Image giving the kernel, for "
                                                 "kernel-booted guests (e.g. tiny)."),
                vcpus: int = typer.Option(1, help="vCPUs per desktop."),
                memory: str = typer.Option("256M", help="Memory per desktop."),
                policy: str = typer.Option("reset", help=POLICY_HELP),
                as_json: bool = JsonOpt) -> None:
    """Make a pool of SIZE desktops, each a linked clone of TEMPLATE with a screen."""
    body: dict[str, Any] = {"name": name, "template": template, "size": size,
                            "vcpus": vcpus, "memory": memory, "policy": policy}
    if image:
        body["image"] = image
    pool = call(Client(timeout=600).post, "/desktop-pools", body)
    if as_json:
        print_json(pool)
    else:
        _print_pool(pool)


@pool_app.command("list")
def pool_list(all_projects: bool = typer.Option(False, "--all-projects",
                                                help="Every project's (administrators)."),
              as_json: bool = JsonOpt) -> None:
    """Desktop pools, with how many desktops are assigned."""
    pools = call(Client().get, "/desktop-pools" + ("?all_projects=true" if all_projects
                                                    else ""))
    if as_json:
        print_json(pools)
        return
    print_table(["NAME", "PROJECT", "TEMPLATE", "SIZE", "ASSIGNED", "POLICY"],
                [[p["name"], p["project"], p["template"], p["size"], p["assigned"],
                  p["policy"]] for p in pools])


@pool_app.command("show")
def pool_show(name: str, as_json: bool = JsonOpt) -> None:
    """A pool and its desktops: state and who holds each."""
    pool = call(Client().get, _path(name))
    if as_json:
        print_json(pool)
    else:
        _print_pool(pool)


@pool_app.command("resize")
def pool_resize(name: str, size: int, as_json: bool = JsonOpt) -> None:
    """Grow (new desktops from the template) or shrink (free desktops only) a pool."""
    pool = call(Client(timeout=600).post, _path(name, "resize"), {"size": size})
    if as_json:
        print_json(pool)
    else:
        _print_pool(pool)


@pool_app.command("delete")
def pool_delete(name: str, force: bool = typer.Option(
        False, "--force", help="Also when users hold desktops (their work is lost).")) -> None:
    """Delete a pool and all its desktops and their disks."""
    call(Client(timeout=600).delete, _path(name) + ("?force=true" if force else ""))


@pool_app.command("assign")
def pool_assign(name: str, user: str,
                base: str | None = typer.Option(None, "--base", help=BASE_HELP),
                as_json: bool = JsonOpt) -> None:
    """Give USER a desktop of the pool (theirs until returned), started, and print a
    browser URL for its screen."""
    access = call(Client().post, _path(name, "assign"), {"user": user})
    if as_json:
        print_json(access)
    else:
        _print_access(access, base)


@pool_app.command("return")
def pool_return(name: str, user: str, as_json: bool = JsonOpt) -> None:
    """Take USER's desktop back: reset to the template or kept, per the pool's policy."""
    desk = call(Client(timeout=300).post, _path(name, "return"), {"user": user})
    if as_json:
        print_json(desk)
    else:
        sys.stdout.write(f"{desk['vm']} is free ({desk['state']})\n")


@mine_app.command("list")
def mine_list(as_json: bool = JsonOpt) -> None:
    """The desktops assigned to you."""
    desktops = call(Client().get, "/desktops")
    if as_json:
        print_json(desktops)
    elif desktops:
        _print_desktops(desktops)
    else:
        sys.stdout.write("no desktop is assigned to you\n")


@mine_app.command("open")
def mine_open(pool: str,
              project: str | None = typer.Option(None, "--in", help="The pool's project, "
                                                 "when you have desktops in two projects' "
                                                 "pools of that name."),
              base: str | None = typer.Option(None, "--base", help=BASE_HELP),
              as_json: bool = JsonOpt) -> None:
    """Start your desktop of POOL if needed and print a browser URL for its screen."""
    mine = call(Client().get, "/desktops")
    found = sorted({d["project"] for d in mine if d["pool"] == pool
                    and (project is None or d["project"] == project)})
    if not found:
        fail(f"you have no desktop in a pool named {pool!r}")
    if len(found) > 1:
        fail(f"pools named {pool!r} in projects {', '.join(found)}: pick one with --in")
    access = call(Client(timeout=300).post,
                  f"/desktops/{quote(found[0], safe='')}/{quote(pool, safe='')}/open")
    if as_json:
        print_json(access)
    else:
        _print_access(access, base)

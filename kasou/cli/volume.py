"""`kasou pool ...` and `kasou volume ...`: where disks live, and the disks themselves."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from kasou.cli.client import ApiError, Client, DaemonUnavailable
from kasou.cli.common import JsonOpt, call
from kasou.cli.output import print_fields, print_json, print_table

app = typer.Typer(help="Volumes: disks in pools (qcow2/raw), templates, imports.",
                  no_args_is_help=True)
pool_app = typer.Typer(help="Pools: directories that hold volumes.", no_args_is_help=True)


def human(nbytes: int | None) -> str:
    if nbytes is None:
        return ""
    size = float(nbytes)
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" or size >= 100 else f"{size:.1f}{unit}"
        size /= 1024
    return f"{nbytes}B"


def _local_or_url(source: str) -> str:
    if source.startswith(("http://", "https://")):
        return source
    return str(Path(source).expanduser().absolute())


# -- pools ---------------------------------------------------------------------------------
@pool_app.command("list")
def pool_list(as_json: bool = JsonOpt) -> None:
    """Pools, with their space."""
    pools = call(Client().get, "/pools")
    if as_json:
        print_json(pools)
        return
    print_table(["NAME", "PATH", "VOLUMES", "ALLOCATED", "FREE"],
                [[p["name"], p["path"], p["volumes"], human(p["allocated"]), human(p["free"])]
                 for p in pools])


@pool_app.command("create")
def pool_create(name: str, path: str = typer.Option(..., help="A directory on the host."),
                as_json: bool = JsonOpt) -> None:
    """Add a pool at a directory (made if missing)."""
    pool = call(Client().post, "/pools", {"name": name, "path": _local_or_url(path)})
    if as_json:
        print_json(pool)
    else:
        sys.stdout.write(f"{pool['name']}: {pool['path']}\n")


@pool_app.command("show")
def pool_show(name: str, as_json: bool = JsonOpt) -> None:
    """One pool."""
    pool = call(Client().get, f"/pools/{name}")
    if as_json:
        print_json(pool)
        return
    print_fields({**pool, "allocated": human(pool["allocated"]),
                  "capacity": human(pool["capacity"]), "free": human(pool["free"])})


@pool_app.command("delete")
def pool_delete(name: str) -> None:
    """Remove an empty pool (its directory only if kasou made it)."""
    call(Client().delete, f"/pools/{name}")
    sys.stdout.write(f"{name}: deleted\n")


# -- volumes -------------------------------------------------------------------------------
def show_volume(vol: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(vol)
        return
    print_fields({"name": vol["name"], "pool": vol["pool"], "path": vol["path"],
                  "format": vol["format"], "size": human(vol["size"]),
                  "allocated": human(vol["allocated"]),
                  "template": "yes" if vol["template"] else None,
                  "backing": vol.get("backing"),
                  "clones": ", ".join(vol["dependants"]) or None,
                  "owner vm": vol.get("owner_vm"),
                  "attached to": ", ".join(vol["attached_to"]) or None,
                  "state": vol["state"], "source": vol["source"],
                  "created": vol["created_at"]})


@app.command("list")
def volume_list(as_json: bool = JsonOpt) -> None:
    """Volumes in the project."""
    vols = call(Client().get, "/volumes")
    if as_json:
        print_json(vols)
        return
    rows = [[v["name"], v["format"], human(v["size"]), human(v["allocated"]), v["pool"],
             "template" if v["template"] else (f"clone of {v['backing']}" if v["backing"]
                                               else ""),
             ", ".join(v["attached_to"]), v["state"]] for v in vols]
    print_table(["NAME", "FORMAT", "SIZE", "ALLOCATED", "POOL", "KIND", "ATTACHED TO", "STATE"],
                rows)


@app.command("show")
def volume_show(name: str, as_json: bool = JsonOpt) -> None:
    """One volume."""
    show_volume(call(Client().get, f"/volumes/{name}"), as_json)


@app.command("create")
def volume_create(name: str, size: str = typer.Option(..., help="e.g. 4G or 512M."),
                  fmt: str = typer.Option("qcow2", "--format", help="qcow2 or raw."),
                  pool: str | None = typer.Option(None, help="Pool (default: default)."),
                  as_json: bool = JsonOpt) -> None:
    """A blank volume."""
    body = {"name": name, "size": size, "format": fmt, "pool": pool}
    show_volume(call(Client().post, "/volumes", {k: v for k, v in body.items() if v}), as_json)


@app.command("import")
def volume_import(
    name: str,
    source: str = typer.Argument(..., help="An http(s) URL, or a file on the daemon's host."),
    sha256: str | None = typer.Option(None, help="Refuse the import unless it matches."),
    fmt: str | None = typer.Option(None, "--format", help="Store as qcow2 or raw."),
    pool: str | None = typer.Option(None, help="Pool (default: default)."),
    template: bool = typer.Option(False, "--template", help="Mark it as a template."),
    as_json: bool = JsonOpt,
) -> None:
    """Import a disk image or ISO (checked: a file that is not one is refused)."""
    body = {"name": name, "source": _local_or_url(source), "sha256": sha256, "format": fmt,
            "pool": pool, "template": template}
    body = {k: v for k, v in body.items() if v is not None}
    show_volume(_with_progress(name, body, quiet=as_json), as_json)


def _with_progress(name: str, body: dict[str, Any], quiet: bool) -> Any:
    """POST the import (it returns when done) while polling the volume for progress."""
    result: dict[str, Any] = {}

    def post() -> None:
        try:
            result["ok"] = Client(timeout=24 * 3600).post("/volumes/import", body)
        except (ApiError, DaemonUnavailable) as e:
            result["error"] = e

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    if not quiet and sys.stderr.isatty():
        _show_progress(name, worker)
    worker.join()
    if "error" in result:
        return call(_raise, result["error"])
    return result["ok"]


def _raise(error: Exception) -> None:
    raise error


def _show_progress(name: str, worker: threading.Thread) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    poll = Client(timeout=10)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  transient=True) as bar:
        task = bar.add_task(f"{name}: starting", total=None)
        while worker.is_alive():
            try:
                vol = poll.get(f"/volumes/{name}")
            except (ApiError, DaemonUnavailable):
                vol = None
            prog = (vol or {}).get("progress")
            if prog:
                bar.update(task, description=f"{name}: {prog['phase']}",
                           completed=prog["done"], total=prog["total"])
            time.sleep(0.25)


@app.command("resize")
def volume_resize(name: str, size: str,
                  shrink: bool = typer.Option(False, "--shrink",
                                              help="Allow making it smaller (loses data)."),
                  as_json: bool = JsonOpt) -> None:
    """Grow a volume (live when its VM runs); shrinking needs --shrink."""
    show_volume(call(Client().post, f"/volumes/{name}/resize",
                     {"size": size, "shrink": shrink}), as_json)


@app.command("convert")
def volume_convert(name: str, new_name: str,
                   fmt: str = typer.Option(..., "--format", help="qcow2 or raw."),
                   pool: str | None = typer.Option(None, help="Pool of the copy."),
                   as_json: bool = JsonOpt) -> None:
    """Copy a volume into a new one in another format."""
    body = {"name": new_name, "format": fmt, "pool": pool}
    show_volume(call(Client().post, f"/volumes/{name}/convert",
                     {k: v for k, v in body.items() if v}), as_json)


@app.command("template")
def volume_template(name: str,
                    off: bool = typer.Option(False, "--off", help="Un-mark (no clones left)."),
                    as_json: bool = JsonOpt) -> None:
    """Mark a volume as a template (read-only; VMs get clones with `vm create --from`)."""
    show_volume(call(Client().post, f"/volumes/{name}/template", {"template": not off}),
                as_json)


@app.command("delete")
def volume_delete(name: str) -> None:
    """Delete a volume (refused while attached, or while clones depend on it)."""
    call(Client().delete, f"/volumes/{name}")
    sys.stdout.write(f"{name}: deleted\n")

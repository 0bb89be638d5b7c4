"""`kasou vm set` (limits, live and kept), `kasou host ksm`, and the isolation lines of
`kasou vm show` / `kasou vm create`."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call
from kasou.cli.output import print_fields, print_json

NONE_WORDS = ("none", "off", "default", "")
LIMIT_HELP = {
    "cpu_limit": "At most this many host CPUs' worth of time, e.g. 0.25 (none: no limit).",
    "cpu_weight": "Relative CPU share under contention, 1-10000 (default 100).",
    "pin": "Run only on these host CPUs, e.g. 0 or 0-1,3 (none: any).",
    "memory_target": "Balloon the guest down to this size, e.g. 128M (none: all its memory).",
    "io_weight": "Relative disk I/O share, 1-1000 (default 100).",
}


def _value(raw: str | None) -> Any:
    """CLI text -> JSON value: 'none' clears; numbers stay numbers for the API to check."""
    if raw is None:
        return None
    if raw.strip().lower() in NONE_WORDS:
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def vm_limits_spec(cpu_limit: str | None, cpu_weight: str | None, pin: str | None,
                   memory_target: str | None, io_weight: str | None) -> dict[str, Any]:
    """The `limits` part of a create spec (empty when no option was given)."""
    given = {"cpu_limit": cpu_limit, "cpu_weight": cpu_weight, "pin": pin,
             "memory_target": memory_target, "io_weight": io_weight}
    limits = {k: _value(v) for k, v in given.items() if v is not None}
    limits = {k: v for k, v in limits.items() if v is not None}
    if isinstance(limits.get("pin"), int | float):
        limits["pin"] = str(given["pin"])
    return {"limits": limits} if limits else {}


def limit_lines(extras: dict[str, Any]) -> dict[str, str]:
    """`kasou vm show` lines: limits in force and the sandbox QEMU runs in."""
    iso = extras.get("isolation") or {}
    if not iso:
        return {}
    out: dict[str, str] = {}
    limits = iso.get("limits") or {}
    out["limits"] = ", ".join(f"{k}={v}" for k, v in limits.items()) or "none"
    if iso.get("memory_max_mib"):
        out["memory max"] = f"{iso['memory_max_mib']} MiB (cgroup hard limit)"
    box = iso.get("sandbox")
    if isinstance(box, dict):
        if box.get("enabled"):
            out["sandbox"] = (f"uid {box.get('uid')} gid {box.get('gid')}, seccomp "
                              f"{box.get('seccomp')} ({box.get('seccomp_policy')})")
        else:
            out["sandbox"] = f"off (QEMU runs as uid {box.get('uid')})"
    elif box:
        out["sandbox"] = str(box)
    return out


def vm_set(
    name: str,
    cpu_limit: str | None = typer.Option(None, help=LIMIT_HELP["cpu_limit"]),
    cpu_weight: str | None = typer.Option(None, help=LIMIT_HELP["cpu_weight"]),
    pin: str | None = typer.Option(None, help=LIMIT_HELP["pin"]),
    memory_target: str | None = typer.Option(None, help=LIMIT_HELP["memory_target"]),
    io_weight: str | None = typer.Option(None, help=LIMIT_HELP["io_weight"]),
    as_json: bool = JsonOpt,
) -> None:
    """Change a VM's limits: at once if it runs, and for every later start."""
    given = {"cpu_limit": cpu_limit, "cpu_weight": cpu_weight, "pin": pin,
             "memory_target": memory_target, "io_weight": io_weight}
    changes = {k: _value(v) for k, v in given.items() if v is not None}
    if "pin" in changes and changes["pin"] is not None:
        changes["pin"] = str(given["pin"])
    c = Client()
    if changes:
        view = call(c.request, "PATCH", f"/vms/{name}/limits", body=changes)
    else:
        view = call(c.get, f"/vms/{name}/limits")
    if as_json:
        print_json(view)
        return
    limits = view["limits"]
    print_fields({"vm": view["vm"],
                  "limits": ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None)
                  or "none",
                  "memory max": f"{view['memory_max_mib']} MiB",
                  "applied": "now (running)" if view["live"] else "at next start"})


ksm_app = typer.Typer(help="Kernel same-page merging of guest memory.", no_args_is_help=True)


def _ksm_print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    sys.stdout.write(ksm_line(info) + "\n")


def ksm_line(info: dict[str, Any]) -> str:
    if not info.get("available"):
        return "not available in this kernel"
    saved = info.get("saved_bytes", 0) / (1 << 20)
    return (f"{'on' if info.get('running') else 'off'}, {saved:.1f} MiB saved "
            f"({info.get('pages_sharing', 0)} pages sharing {info.get('pages_shared', 0)})")


@ksm_app.command("on")
def ksm_on(as_json: bool = JsonOpt) -> None:
    """Start merging identical guest pages."""
    _ksm_print(call(Client().post, "/host/ksm", on="true"), as_json)


@ksm_app.command("off")
def ksm_off(unmerge: bool = typer.Option(False, "--unmerge", help="Also split merged pages."),
            as_json: bool = JsonOpt) -> None:
    """Stop merging (merged pages stay merged unless --unmerge)."""
    _ksm_print(call(Client().post, "/host/ksm", on="false", unmerge=str(unmerge).lower()),
               as_json)


@ksm_app.command("status")
def ksm_status(as_json: bool = JsonOpt) -> None:
    """Whether KSM runs and what it saves."""
    _ksm_print(call(Client().get, "/host/ksm"), as_json)

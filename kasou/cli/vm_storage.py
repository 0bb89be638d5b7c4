"""`kasou vm snapshot ...`, `kasou vm disk ...` and `kasou vm suspend`: a VM's storage."""

from __future__ import annotations

import sys
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call, fail
from kasou.cli.output import print_json, print_table
from kasou.cli.volume import human
from kasou.units import parse_size

snapshot_app = typer.Typer(help="Snapshots of a VM: live (RAM + disks) or disk-only.",
                           no_args_is_help=True)
disk_app = typer.Typer(help="A VM's disks: attach/detach volumes (live on pc/q35), I/O "
                            "limits.", no_args_is_help=True)


# -- snapshots -----------------------------------------------------------------------------
@snapshot_app.command("create")
def snapshot_create(vm: str, name: str,
                    disk_only: bool = typer.Option(False, "--disk-only",
                                                   help="Disks only, even when running."),
                    as_json: bool = JsonOpt) -> None:
    """Take a snapshot: live (RAM + disks) when the VM runs, disk-only when stopped."""
    snap = call(Client().post, f"/vms/{vm}/snapshots", {"name": name, "disk_only": disk_only})
    _done(snap, as_json, f"{vm}: snapshot {snap['name']} ({snap['kind']}) taken")


@snapshot_app.command("list")
def snapshot_list(vm: str, as_json: bool = JsonOpt) -> None:
    """The VM's snapshots."""
    snaps = call(Client().get, f"/vms/{vm}/snapshots")
    if as_json:
        print_json(snaps)
        return
    print_table(["NAME", "KIND", "VM STATE", "VOLUMES", "CREATED"],
                [[s["name"], s["kind"], s["vm_state"], ", ".join(s["volumes"]),
                  s["created_at"]] for s in snaps])


@snapshot_app.command("revert")
def snapshot_revert(vm: str, name: str, as_json: bool = JsonOpt) -> None:
    """Go back to a snapshot (a stopped VM resumes from a live one at its next start)."""
    snap = call(Client().post, f"/vms/{vm}/snapshots/{name}/revert")
    _done(snap, as_json, f"{vm}: reverted to {snap['name']}")


@snapshot_app.command("delete")
def snapshot_delete(vm: str, name: str) -> None:
    """Delete a snapshot."""
    call(Client().delete, f"/vms/{vm}/snapshots/{name}")
    sys.stdout.write(f"{vm}: snapshot {name} deleted\n")


def _done(data: Any, as_json: bool, line: str) -> None:
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(line + "\n")


# -- suspend -------------------------------------------------------------------------------
def suspend_cmd(name: str,
                discard: bool = typer.Option(False, "--discard",
                                             help="Drop the saved state instead: the VM "
                                                  "is then stopped."),
                as_json: bool = JsonOpt) -> None:
    """Save the VM's RAM and devices to disk and end its QEMU; `vm start` restores it."""
    path = f"/vms/{name}/discard-state" if discard else f"/vms/{name}/suspend"
    vm = call(Client().post, path)
    _done(vm, as_json, f"{vm['name']}: {vm['state']}")


# -- disks ---------------------------------------------------------------------------------
@disk_app.command("list")
def disk_list(vm: str, as_json: bool = JsonOpt) -> None:
    """The VM's volumes, with their limits."""
    disks = call(Client().get, f"/vms/{vm}/disks")
    if as_json:
        print_json(disks)
        return
    print_table(["VOLUME", "SLOT", "FORMAT", "SIZE", "MODE", "SERIAL", "LIMITS"],
                [[d["volume"], d["slot"], d["format"], human(d["size"]),
                  "ro" if d["readonly"] else "rw", d["serial"], _limits(d["limits"])]
                 for d in disks])


def _limits(limits: dict[str, Any]) -> str:
    parts = []
    for key, value in limits.items():
        if value:
            parts.append(f"{key}={human(value)}/s" if key.startswith("bps") else
                         f"{key}={value}")
    return " ".join(parts)


@disk_app.command("attach")
def disk_attach(vm: str, volume: str,
                readonly: bool = typer.Option(False, "--readonly", help="Read-only."),
                as_json: bool = JsonOpt) -> None:
    """Attach a volume (hot-plugged into a running pc/q35 VM)."""
    disk = call(Client().post, f"/vms/{vm}/disks", {"volume": volume, "readonly": readonly})
    _done(disk, as_json, f"{vm}: {volume} attached (serial {disk['serial']})")


@disk_app.command("detach")
def disk_detach(vm: str, volume: str) -> None:
    """Detach a volume (the guest must release it when the VM runs)."""
    call(Client().delete, f"/vms/{vm}/disks/{volume}")
    sys.stdout.write(f"{vm}: {volume} detached\n")


@disk_app.command("limit")
def disk_limit(
    vm: str, volume: str,
    iops: int | None = typer.Option(None, help="I/O operations per second (read+write)."),
    read_iops: int | None = typer.Option(None, help="Read operations per second."),
    write_iops: int | None = typer.Option(None, help="Write operations per second."),
    bps: str | None = typer.Option(None, help="Bytes per second (read+write), e.g. 10M."),
    read_bps: str | None = typer.Option(None, help="Read bytes per second."),
    write_bps: str | None = typer.Option(None, help="Write bytes per second."),
    as_json: bool = JsonOpt,
) -> None:
    """Set the disk's I/O limits (live); the limits not given are lifted."""
    body = {"iops_total": iops, "iops_read": read_iops, "iops_write": write_iops,
            "bps_total": _bytes(bps, "bps"), "bps_read": _bytes(read_bps, "read-bps"),
            "bps_write": _bytes(write_bps, "write-bps")}
    disk = call(Client().put, f"/vms/{vm}/disks/{volume}/limits",
                {k: v for k, v in body.items() if v is not None})
    _done(disk, as_json, f"{vm}: {volume} limits: {_limits(disk['limits']) or 'none'}")


def _bytes(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, default_unit="")
    except ValueError as e:
        fail(f"--{option}: {e}")


# -- pieces of `kasou vm create` and `kasou vm show` ----------------------------------------
STORAGE_HELP = {
    "template": "Give the VM its own disk cloned from this template volume.",
    "full_clone": "Copy the template instead of a copy-on-write overlay.",
    "disk_size": "Size of the VM's own disk, e.g. 4G (grows a clone; alone: a blank disk).",
    "volume": "Attach this volume (repeatable); kept when the VM is deleted.",
}


def vm_storage_spec(template: str | None, full_clone: bool, disk_size: str | None,
                    volumes: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if template:
        spec["template"] = template
    if full_clone:
        spec["full_clone"] = True
    if disk_size:
        spec["disk_size"] = disk_size
    if volumes:
        spec["volumes"] = volumes
    return spec


def disk_lines(extras: dict[str, Any]) -> dict[str, str]:
    storage = extras.get("storage") or {}
    out = {}
    disks = [f"{d['volume']} ({d['format']}, {human(d['size'])}"
             f"{', ro' if d['readonly'] else ''})" for d in storage.get("disks", [])]
    if disks:
        out["volumes"] = ", ".join(disks)
    if storage.get("snapshots"):
        out["snapshots"] = ", ".join(storage["snapshots"])
    saved = storage.get("saved_state")
    if saved:
        out["saved state"] = f"{human(saved['size'])} at {saved['saved_at']}"
    if storage.get("restores_snapshot_at_start"):
        out["at next start"] = f"resumes snapshot {storage['restores_snapshot_at_start']}"
    return out

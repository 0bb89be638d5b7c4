"""`kasou vm ...`: define, run and control virtual machines."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call, fail
from kasou.cli.desktop import BASE_HELP, DISPLAY_HELP, WEB_HELP, print_web_console
from kasou.cli.guest import CLOUD_INIT_HELP, guest_lines, vm_cloudinit_spec
from kasou.cli.isolation import LIMIT_HELP, limit_lines, vm_limits_spec
from kasou.cli.network import nic_lines, vm_network_spec
from kasou.cli.output import print_fields, print_json, print_table, vm_rows
from kasou.cli.vm_storage import STORAGE_HELP, disk_lines, vm_storage_spec

app = typer.Typer(help="Define, run and control virtual machines.", no_args_is_help=True)


def show_vm(vm: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(vm)
        return
    print_fields({"name": vm["name"], "id": vm["id"], "state": vm["state"],
                  "reason": vm.get("reason"), "pid": vm.get("pid"),
                  "accelerator": vm.get("accelerator"), "machine": vm["machine"],
                  "vcpus": vm["vcpus"], "memory": f"{vm['memory']} MiB", "image": vm.get("image"),
                  "os": vm.get("os"), "started": vm.get("started_at"),
                  "serial log": vm.get("serial_log"),
                  **nic_lines(vm.get("extras") or {}),
                  **limit_lines(vm.get("extras") or {}),
                  **disk_lines(vm.get("extras") or {}),
                  **guest_lines(vm.get("extras") or {})})


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


@app.command("create")
def vm_create(
    name: str,
    image: str | None = typer.Option(None, help="A built image: see `kasou image list`."),
    vcpus: int = typer.Option(1, help="Virtual CPUs."),
    memory: str = typer.Option("256M", help="Guest RAM, e.g. 256M or 2G."),
    machine: str | None = typer.Option(None, help="microvm, pc or q35."),
    firmware: str | None = typer.Option(None, help="bios or uefi (pc/q35)."),
    kernel: str | None = typer.Option(None, help="Boot this kernel directly."),
    initrd: str | None = typer.Option(None, help="Initrd for --kernel."),
    cmdline: str | None = typer.Option(None, help="Kernel command line."),
    disk: list[str] = typer.Option([], help="A disk image (repeatable); never deleted by kasou."),
    iso: str | None = typer.Option(None, help="An ISO to boot from."),
    forward: list[str] = typer.Option([], help="\\[ADDR:]HOSTPORT:GUESTPORT\\[/tcp|udp] on the "
                                      "user-mode NIC (repeatable; ADDR 127.0.0.1)."),
    network: list[str] = typer.Option([], help="A NIC on this host network (repeatable)."),
    ip: list[str] = typer.Option([], help="Reserve this address for the --network NIC."),
    mac: list[str] = typer.Option([], help="This MAC for the --network NIC."),
    cpu_limit: str | None = typer.Option(None, help=LIMIT_HELP["cpu_limit"]),
    cpu_weight: str | None = typer.Option(None, help=LIMIT_HELP["cpu_weight"]),
    pin: str | None = typer.Option(None, help=LIMIT_HELP["pin"]),
    memory_target: str | None = typer.Option(None, help=LIMIT_HELP["memory_target"]),
    io_weight: str | None = typer.Option(None, help=LIMIT_HELP["io_weight"]),
    template: str | None = typer.Option(None, "--from", help=STORAGE_HELP["template"]),
    full_clone: bool = typer.Option(False, "--full-clone", help=STORAGE_HELP["full_clone"]),
    disk_size: str | None = typer.Option(None, help=STORAGE_HELP["disk_size"]),
    volume: list[str] = typer.Option([], help=STORAGE_HELP["volume"]),
    user_data: str | None = typer.Option(None, help=CLOUD_INIT_HELP["user_data"]),
    ssh_key: list[str] = typer.Option([], help=CLOUD_INIT_HELP["ssh_key"]),
    hostname: str | None = typer.Option(None, help=CLOUD_INIT_HELP["hostname"]),
    display: bool = typer.Option(False, "--display", help=DISPLAY_HELP),
    start: bool = typer.Option(False, "--start", help="Start it right away."),
    as_json: bool = JsonOpt,
) -> None:
    """Define a VM (and start it with --start)."""
    spec: dict[str, Any] = {"name": name, "vcpus": vcpus, "memory": memory}
    optional = {"image": image, "machine": machine, "firmware": firmware, "kernel": _abs(kernel),
                "initrd": _abs(initrd), "cmdline": cmdline, "iso": _abs(iso)}
    spec.update({k: v for k, v in optional.items() if v is not None})
    if disk:
        spec["disks"] = [_abs(d) for d in disk]
    spec.update(vm_network_spec(forward, network, ip, mac))
    spec.update(vm_limits_spec(cpu_limit, cpu_weight, pin, memory_target, io_weight))
    spec.update(vm_storage_spec(template, full_clone, disk_size, volume))
    spec.update(vm_cloudinit_spec(user_data, ssh_key, hostname))
    if display:
        spec["display"] = True
    c = Client()
    vm = call(c.post, "/vms", spec)
    if start:
        vm = call(c.post, f"/vms/{name}/start")
    show_vm(vm, as_json)


def _action(action: str, name: str, as_json: bool, **params: Any) -> None:
    vm = call(Client().post, f"/vms/{name}/{action}", **params)
    if as_json:
        print_json(vm)
    else:
        sys.stdout.write(f"{vm['name']}: {vm['state']}\n")


@app.command("start")
def vm_start(name: str, as_json: bool = JsonOpt) -> None:
    """Start a stopped (or crashed) VM."""
    _action("start", name, as_json)


@app.command("stop")
def vm_stop(name: str,
            force: bool = typer.Option(False, "--force", help="Skip the ACPI power button."),
            timeout: float | None = typer.Option(None, help="Seconds before forcing (30)."),
            as_json: bool = JsonOpt) -> None:
    """Press the ACPI power button; force the VM off after a timeout."""
    _action("stop", name, as_json, force=str(force).lower(), timeout=timeout)


@app.command("kill")
def vm_kill(name: str, as_json: bool = JsonOpt) -> None:
    """End the VM's QEMU process at once."""
    _action("kill", name, as_json)


@app.command("pause")
def vm_pause(name: str, as_json: bool = JsonOpt) -> None:
    """Freeze the VM's vCPUs."""
    _action("pause", name, as_json)


@app.command("resume")
def vm_resume(name: str, as_json: bool = JsonOpt) -> None:
    """Let a paused VM run again."""
    _action("resume", name, as_json)


@app.command("reboot")
def vm_reboot(name: str, as_json: bool = JsonOpt) -> None:
    """Reset the VM (hard reset, like the reset button)."""
    _action("reboot", name, as_json)


@app.command("delete")
def vm_delete(name: str) -> None:
    """Delete a stopped VM and its run dir (disks given with --disk are kept)."""
    call(Client().delete, f"/vms/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@app.command("list")
def vm_list(as_json: bool = JsonOpt) -> None:
    """List VMs."""
    vms = call(Client().get, "/vms")
    if as_json:
        print_json(vms)
    else:
        print_table(*vm_rows(vms))


@app.command("show")
def vm_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show one VM."""
    show_vm(call(Client().get, f"/vms/{name}"), as_json)


@app.command("console")
def vm_console(name: str, web: bool = typer.Option(False, "--web", help=WEB_HELP),
               base: str | None = typer.Option(None, help=BASE_HELP)) -> None:
    """Attach to the serial console (Ctrl-] detaches), or print a URL for the screen."""
    from kasou.cli.console import attach

    if web:
        print_web_console(name, base)
        return
    info = call(Client().get, f"/vms/{name}/console")
    if os.isatty(0):
        sys.stderr.write(f"Connected to {name}'s console; Ctrl-] to detach.\r\n")
    try:
        attach(info["socket"])
    except OSError as e:
        fail(f"cannot attach to {name}'s console: {e.strerror or e}")


@app.command("logs")
def vm_logs(name: str,
            follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing."),
            tail: int = typer.Option(0, help="Start this many bytes before the end.")) -> None:
    """Print the serial console log."""
    c = Client()
    offset = -tail if tail > 0 else 0
    try:
        while True:
            chunk = call(c.get, f"/vms/{name}/logs", offset=offset)
            sys.stdout.write(chunk["data"])
            sys.stdout.flush()
            offset = chunk["next_offset"]
            if chunk["next_offset"] < chunk["size"]:
                continue
            if not follow:
                return
            time.sleep(0.25)
    except KeyboardInterrupt:
        return

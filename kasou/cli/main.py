"""The `kasou` command. A thin front-end: VM commands go to the daemon's API."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer

from kasou.cli.client import ApiError, Client, DaemonUnavailable
from kasou.cli.output import print_fields, print_json, print_table, vm_rows
from kasou.errors import KasouError
from kasou.paths import Layout

app = typer.Typer(help="kasou (仮想): run many isolated virtual machines.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
vm_app = typer.Typer(help="Define, run and control virtual machines.", no_args_is_help=True)
image_app = typer.Typer(help="Guest images built from Debian packages.", no_args_is_help=True)
host_app = typer.Typer(help="This host: accelerator, capacity.", no_args_is_help=True)
daemon_app = typer.Typer(help="Run the kasou daemon in the background.", no_args_is_help=True)
app.add_typer(vm_app, name="vm")
app.add_typer(image_app, name="image")
app.add_typer(host_app, name="host")
app.add_typer(daemon_app, name="daemon")

JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; turn every expected failure into one line on stderr."""
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        detail = e.body.get("errors") or []
        extra = [f"  {d['field']}: {d['message']}" for d in detail[1:]]
        fail("\n".join([str(e), *extra]))
    except DaemonUnavailable as e:
        fail(str(e))
    except KasouError as e:
        fail(e.message)


def show_vm(vm: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(vm)
        return
    print_fields({"name": vm["name"], "id": vm["id"], "state": vm["state"],
                  "reason": vm.get("reason"), "pid": vm.get("pid"),
                  "accelerator": vm.get("accelerator"), "machine": vm["machine"],
                  "vcpus": vm["vcpus"], "memory": f"{vm['memory']} MiB", "image": vm.get("image"),
                  "os": vm.get("os"), "started": vm.get("started_at"),
                  "serial log": vm.get("serial_log")})


# -- vm ---------------------------------------------------------------------------------
def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().absolute()) if path else None


@vm_app.command("create")
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


@vm_app.command("start")
def vm_start(name: str, as_json: bool = JsonOpt) -> None:
    """Start a stopped (or crashed) VM."""
    _action("start", name, as_json)


@vm_app.command("stop")
def vm_stop(name: str,
            force: bool = typer.Option(False, "--force", help="Skip the ACPI power button."),
            timeout: float | None = typer.Option(None, help="Seconds before forcing (30)."),
            as_json: bool = JsonOpt) -> None:
    """Press the ACPI power button; force the VM off after a timeout."""
    _action("stop", name, as_json, force=str(force).lower(), timeout=timeout)


@vm_app.command("kill")
def vm_kill(name: str, as_json: bool = JsonOpt) -> None:
    """End the VM's QEMU process at once."""
    _action("kill", name, as_json)


@vm_app.command("pause")
def vm_pause(name: str, as_json: bool = JsonOpt) -> None:
    """Freeze the VM's vCPUs."""
    _action("pause", name, as_json)


@vm_app.command("resume")
def vm_resume(name: str, as_json: bool = JsonOpt) -> None:
    """Let a paused VM run again."""
    _action("resume", name, as_json)


@vm_app.command("reboot")
def vm_reboot(name: str, as_json: bool = JsonOpt) -> None:
    """Reset the VM (hard reset, like the reset button)."""
    _action("reboot", name, as_json)


@vm_app.command("delete")
def vm_delete(name: str) -> None:
    """Delete a stopped VM and its run dir (disks given with --disk are kept)."""
    call(Client().delete, f"/vms/{name}")
    sys.stdout.write(f"{name}: deleted\n")


@vm_app.command("list")
def vm_list(as_json: bool = JsonOpt) -> None:
    """List VMs."""
    vms = call(Client().get, "/vms")
    if as_json:
        print_json(vms)
    else:
        print_table(*vm_rows(vms))


@vm_app.command("show")
def vm_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show one VM."""
    show_vm(call(Client().get, f"/vms/{name}"), as_json)


@vm_app.command("console")
def vm_console(name: str) -> None:
    """Attach to the serial console (Ctrl-] detaches)."""
    from kasou.cli.console import attach

    info = call(Client().get, f"/vms/{name}/console")
    if os.isatty(0):
        sys.stderr.write(f"Connected to {name}'s console; Ctrl-] to detach.\r\n")
    try:
        attach(info["socket"])
    except OSError as e:
        fail(f"cannot attach to {name}'s console: {e.strerror or e}")


@vm_app.command("logs")
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


# -- host / image -----------------------------------------------------------------------
@host_app.command("info")
def host_info_cmd(as_json: bool = JsonOpt) -> None:
    """Cores, memory, QEMU, machine types and the accelerator chosen (with why)."""
    from kasou.host.probe import host_info
    from kasou.paths import cache_dir

    info = host_info(cache_dir())
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    data = info.model_dump(mode="json")
    machines = data.pop("machines", {})
    print_fields(data)
    sys.stdout.write("machines     " + ", ".join(f"{m} (≤{n} vCPUs)" for m, n in
                                                 sorted(machines.items())) + "\n")


@image_app.command("list")
def image_list(as_json: bool = JsonOpt) -> None:
    """Images built and cached on this host."""
    from kasou.images.registry import BUILDABLE, list_images

    images = [i.model_dump(mode="json") for i in list_images()]
    if as_json:
        print_json(images)
        return
    built = {i["name"] for i in images}
    rows = [[i["name"], i["os"], i["machine"], i["built_at"]] for i in images]
    rows += [[n, "(not built: kasou image build " + n + ")", "", ""] for n in BUILDABLE
             if n not in built]
    print_table(["NAME", "OS", "MACHINE", "BUILT"], rows)


@image_app.command("build")
def image_build(name: str, force: bool = typer.Option(False, "--force", help="Rebuild.")) -> None:
    """Build a guest image from Debian packages (cached)."""
    from rich.progress import Progress

    from kasou.images.registry import build_image

    with Progress() as progress:
        task = progress.add_task(f"building {name}", total=1.0)

        def report(step: str, fraction: float) -> None:
            progress.update(task, completed=fraction, description=f"{name}: {step}")

        try:
            manifest = build_image(name, force=force, progress=report)
        except KasouError as e:
            fail(e.message)
    sys.stdout.write(f"{manifest.name}: {manifest.os}\n")


# -- daemon -----------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    listen: str | None = typer.Option(None, help="Also listen on tcp:HOST:PORT (token needed)."),
    cpu_overcommit: float = typer.Option(4.0, min=0.1, help="vCPUs per host core."),
    memory_overcommit: float = typer.Option(1.0, min=0.1, help="Guest RAM per host RAM."),
) -> None:
    """Run the daemon in the foreground (API on $KASOU_HOME/kasou.sock)."""
    from kasou.api.server import ServeOptions, parse_listen, serve
    from kasou.daemon import daemon_running

    layout = Layout.default()
    if daemon_running(layout):
        fail(f"a kasou daemon already answers on {layout.socket}")
    try:
        opts = ServeOptions(listen_tcp=parse_listen(listen) if listen else None,
                            cpu_overcommit=cpu_overcommit, memory_overcommit=memory_overcommit)
    except KasouError as e:
        fail(e.message)
    serve(layout, opts)


@daemon_app.command("start")
def daemon_start(listen: str | None = typer.Option(None, help="Also listen on tcp:HOST:PORT.")
                 ) -> None:
    """Start the daemon in the background and wait until it answers."""
    from kasou.daemon import start_background

    try:
        pid = start_background(Layout.default(), listen)
    except KasouError as e:
        fail(e.message)
    sys.stdout.write(f"kasou daemon running (pid {pid}), socket {Layout.default().socket}\n")


@daemon_app.command("stop")
def daemon_stop() -> None:
    """Stop the daemon. Running VMs keep running."""
    from kasou.daemon import stop_background

    stopped = stop_background(Layout.default())
    sys.stdout.write("kasou daemon stopped\n" if stopped else "kasou daemon was not running\n")


@daemon_app.command("status")
def daemon_status() -> None:
    """Say whether the daemon answers."""
    from kasou.daemon import daemon_running

    layout = Layout.default()
    if daemon_running(layout):
        sys.stdout.write(f"running, socket {layout.socket}\n")
    else:
        fail("not running", code=3)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The `kasou` command. A thin front-end: VM commands go to the daemon's API.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import os

import typer

from kasou.cli import (
    daemon,
    desktop_pool,
    guest,
    host,
    image,
    isolation,
    metrics,
    network,
    tenancy,
    vm,
    vm_storage,
    volume,
)

app = typer.Typer(help="kasou (仮想): run many isolated virtual machines.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(host.app, name="host")
app.add_typer(daemon.app, name="daemon")
app.add_typer(network.network_app, name="network")
app.add_typer(network.secgroup_app, name="secgroup")
app.add_typer(tenancy.project_app, name="project")
app.add_typer(tenancy.user_app, name="user")
app.add_typer(tenancy.token_app, name="token")
app.command("audit")(tenancy.audit_cmd)
app.command("serve")(daemon.serve_cmd)
vm.app.command("set")(isolation.vm_set)
app.add_typer(volume.app, name="volume")
app.add_typer(volume.pool_app, name="pool")
app.add_typer(desktop_pool.pool_app, name="desktop-pool")
app.add_typer(desktop_pool.mine_app, name="desktop")
vm.app.add_typer(vm_storage.snapshot_app, name="snapshot")
vm.app.add_typer(vm_storage.disk_app, name="disk")
vm.app.command("suspend")(vm_storage.suspend_cmd)
host.app.add_typer(isolation.ksm_app, name="ksm")
vm.app.command("stats")(metrics.vm_stats)
vm.app.command("exec")(guest.vm_exec)
app.command("top")(metrics.top)


@app.callback()
def _global(project: str | None = typer.Option(
        None, "--project", "-p", envvar="KASOU_PROJECT",
        help="Project to act in (default: your only project, else 'default').")) -> None:
    if project:
        os.environ["KASOU_PROJECT"] = project


def main() -> None:
    app()


if __name__ == "__main__":
    main()

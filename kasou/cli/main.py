"""The `kasou` command. A thin front-end: VM commands go to the daemon's API.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import os

import typer

from kasou.cli import daemon, host, image, tenancy, vm

app = typer.Typer(help="kasou (仮想): run many isolated virtual machines.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(host.app, name="host")
app.add_typer(daemon.app, name="daemon")
app.add_typer(tenancy.project_app, name="project")
app.add_typer(tenancy.user_app, name="user")
app.add_typer(tenancy.token_app, name="token")
app.command("audit")(tenancy.audit_cmd)
app.command("serve")(daemon.serve_cmd)


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

"""The `kasou` command. A thin front-end: VM commands go to the daemon's API.

Each command group lives in its own module and is registered here.
"""

from __future__ import annotations

import typer

from kasou.cli import daemon, host, image, vm

app = typer.Typer(help="kasou (仮想): run many isolated virtual machines.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
app.add_typer(vm.app, name="vm")
app.add_typer(image.app, name="image")
app.add_typer(host.app, name="host")
app.add_typer(daemon.app, name="daemon")
app.command("serve")(daemon.serve_cmd)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

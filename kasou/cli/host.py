"""`kasou host ...`: facts about this host."""

from __future__ import annotations

import sys

import typer

from kasou.cli.common import JsonOpt
from kasou.cli.output import print_fields, print_json

app = typer.Typer(help="This host: accelerator, capacity.", no_args_is_help=True)


@app.command("info")
def host_info_cmd(as_json: bool = JsonOpt) -> None:
    """Cores, memory, QEMU, machine types and the accelerator chosen (with why)."""
    from kasou.cli.isolation import ksm_line
    from kasou.host.ksm import ksm_info
    from kasou.host.probe import host_info
    from kasou.paths import cache_dir

    info = host_info(cache_dir())
    ksm = ksm_info().model_dump()
    if as_json:
        print_json({**info.model_dump(mode="json"), "ksm": ksm})
        return
    data = info.model_dump(mode="json")
    machines = data.pop("machines", {})
    print_fields(data)
    # Versioned aliases (pc-i440fx-7.2, ...) are many and say little; --json has them all.
    main = {m: n for m, n in machines.items() if m in ("microvm", "pc", "q35")}
    sys.stdout.write("machines     " + ", ".join(f"{m} (≤{n} vCPUs)" for m, n in
                                                 sorted(main.items()))
                     + f" and {len(machines) - len(main)} versioned types\n")
    sys.stdout.write(f"ksm          {ksm_line(ksm)}\n")

"""`kasou image ...`: guest images built from Debian packages."""

from __future__ import annotations

import sys

import typer

from kasou.cli.common import JsonOpt, fail
from kasou.cli.output import print_json, print_table
from kasou.errors import KasouError

app = typer.Typer(help="Guest images built from Debian packages.", no_args_is_help=True)


@app.command("list")
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


@app.command("build")
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

"""The `memtest` guest: memtest86+ from Debian, a non-Linux guest booted with -kernel.

memtest86+x64.bin speaks the Linux boot protocol, so QEMU loads it like a kernel on the
`pc` machine (SeaBIOS). `console=ttyS0,115200` makes it draw its screen on the serial
port too (ANSI escapes); its title bar `Memtest86+ v6.10` is the first thing it prints.
"""

from __future__ import annotations

import shutil

from kasou.errors import ImageBuildError
from kasou.images import debs
from kasou.images.manifest import ImageManifest, now_iso
from kasou.images.recipe import BuildContext, Recipe

PACKAGE = "memtest86+"
BINARY = "boot/memtest86+x64.bin"
CMDLINE = "console=ttyS0,115200"
READY_LINE = r"Memtest86\+ v\d+\.\d+"
# Boots with 32 MiB. Under TCG, with more than ~150 MiB it runs a memory bandwidth
# benchmark before drawing anything (≈ 15 s instead of ≈ 3 s); `nobench` does not skip it.
MIN_MEMORY_MIB = 64


def build(ctx: BuildContext) -> ImageManifest:
    ctx.progress(f"fetching {PACKAGE}", 0.05)
    deb = debs.fetch(PACKAGE)
    ctx.progress("unpacking", 0.6)
    root = debs.unpack(deb, ctx.work / "memtest")
    binary = root / BINARY
    if not binary.is_file():
        raise ImageBuildError(f"{PACKAGE} {deb.version} has no {BINARY}")
    shutil.copyfile(binary, ctx.out / "memtest86+x64.bin")
    ctx.progress("done", 1.0)
    return ImageManifest(
        name=ctx.name,
        os=f"memtest86+ {debs.upstream_version(deb.version)}",
        machine="pc",
        kernel=str(ctx.final / "memtest86+x64.bin"),
        initrd=None,
        cmdline=CMDLINE,
        firmware="bios",
        graceful_stop=False,
        ready_line=READY_LINE,
        min_memory_mib=MIN_MEMORY_MIB,
        built_at=now_iso(),
        sources={PACKAGE: deb.version},
    )


RECIPE = Recipe(
    name="memtest",
    description="memtest86+ (non-Linux guest), output on the serial console",
    build=build,
)

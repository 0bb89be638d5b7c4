"""The `tiny` guest: Debian's cloud kernel + a busybox initramfs, up in a few seconds.

Its init mounts the pseudo filesystems, names the host from `kasou.hostname=NAME` on the
kernel command line, loads the virtio and power-button drivers, starts DHCP in the
background and acpid (power button -> poweroff), then prints `KASOU READY <hostname>` once
and keeps a root shell on the serial console.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kasou.errors import ImageBuildError
from kasou.images import debs
from kasou.images.cpio import Archive
from kasou.images.kmod import ModuleTree, format_modules_dep, module_name
from kasou.images.manifest import ImageManifest, now_iso
from kasou.images.recipe import BuildContext, Recipe, data_file

BUSYBOX_PACKAGE = "busybox-static"
DEFAULT_HOSTNAME = "tiny"
READY_LINE = r"KASOU READY \S+"
# Base command line; kasou appends kasou.hostname= and its per-machine timer options.
# panic=-1: a guest kernel panic reboots at once, so QEMU with -no-reboot exits and the
#   crash is noticed instead of a VM hanging forever.
# reboot=t: reset by triple fault. On microvm the default ACPI reset left the guest
#   wandering instead of resetting in 4 of 26 reboots; triple fault worked 30/30 (and
#   QEMU resets on a triple fault on every machine type).
# cryptomgr.notests: the kernel's crypto self-tests cost ≈ 0.5-0.8 s of boot under TCG.
CMDLINE = "console=ttyS0 panic=-1 reboot=t quiet cryptomgr.notests"
# Measured: smallest -m that boots to READY on microvm and pc under TCG, with headroom.
MIN_MEMORY_MIB = 96

# Drivers the guest needs: virtio over PCI (pc, q35) and MMIO (microvm), the usual virtio
# devices, SCSI disks behind virtio-scsi, and the ACPI power button read through evdev.
# Whatever the kernel config builds in (=y) is skipped; the rest is loaded at boot.
DRIVERS = (
    "virtio_pci", "virtio_mmio",
    "virtio_blk", "virtio_net", "virtio_console", "virtio_balloon", "virtio_rng",
    "virtio_scsi", "sd_mod",
    "button", "evdev",
)

# (path in the initramfs, file in kasou/images/files, mode)
_SCRIPTS = (
    ("etc/inittab", "tiny-inittab", 0o644),
    ("etc/init.d/rcS", "tiny-rcS", 0o755),
    ("etc/init.d/rcK", "tiny-rcK", 0o755),
    ("etc/profile", "tiny-profile", 0o644),
    ("sbin/kasou-console", "tiny-console", 0o755),
    ("sbin/kasou-screen", "tiny-screen", 0o755),
    ("sbin/kasou-acpid", "tiny-acpid", 0o755),
    ("sbin/kasou-param", "tiny-param", 0o755),
    ("etc/kasou/udhcpc.script", "tiny-udhcpc", 0o755),
    # busybox acpid's built-in tables map KEY_POWER to the handler ./PWRF/00000080
    # relative to its config dir, and exec it directly when it is a regular file.
    ("etc/acpi/PWRF/00000080", "tiny-power-button", 0o755),
)

_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\ntty:x:5:\n",
    "etc/hostname": f"{DEFAULT_HOSTNAME}\n",
    "etc/resolv.conf": "",
    "etc/os-release": 'NAME="kasou tiny"\nID=kasou-tiny\n',
}


def build(ctx: BuildContext) -> ImageManifest:
    ctx.progress("resolving Debian packages", 0.02)
    kernel_pkg, kernel_ver = debs.resolve_kernel()
    busybox_ver = debs.candidate(BUSYBOX_PACKAGE)
    ctx.progress(f"fetching {kernel_pkg} {kernel_ver}", 0.05)
    kernel_deb = debs.fetch(kernel_pkg, kernel_ver)
    ctx.progress(f"fetching {BUSYBOX_PACKAGE} {busybox_ver}", 0.45)
    busybox_deb = debs.fetch(BUSYBOX_PACKAGE, busybox_ver)

    ctx.progress("unpacking", 0.5)
    kernel_root = debs.unpack(kernel_deb, ctx.work / "kernel")
    busybox_root = debs.unpack(busybox_deb, ctx.work / "busybox")
    kver = kernel_release(kernel_root)

    ctx.progress("building the initramfs", 0.7)
    archive = initramfs(ModuleTree(kernel_root, kver), busybox_root / "bin/busybox")
    archive.write_gzip(ctx.out / "initrd.img")
    shutil.copyfile(kernel_root / f"boot/vmlinuz-{kver}", ctx.out / "vmlinuz")

    ctx.progress("done", 1.0)
    return ImageManifest(
        name=ctx.name,
        os=f"linux (Debian {kver} + busybox {debs.upstream_version(busybox_ver)})",
        machine="microvm",
        kernel=str(ctx.final / "vmlinuz"),
        initrd=str(ctx.final / "initrd.img"),
        cmdline=CMDLINE,
        firmware="bios",
        graceful_stop=True,
        ready_line=READY_LINE,
        min_memory_mib=MIN_MEMORY_MIB,
        built_at=now_iso(),
        sources={kernel_pkg: kernel_ver, BUSYBOX_PACKAGE: busybox_ver},
    )


def kernel_release(kernel_root: Path) -> str:
    """'6.1.0-56-cloud-amd64': the one version dir under lib/modules with a vmlinuz."""
    found = [d.name for d in (kernel_root / "lib/modules").glob("*")
             if (kernel_root / f"boot/vmlinuz-{d.name}").is_file()]
    if len(found) != 1:
        raise ImageBuildError(f"expected one kernel in the package, found {found or 'none'}")
    return found[0]


def initramfs(modules: ModuleTree, busybox: Path) -> Archive:
    archive = Archive()
    for directory in ("proc", "sys", "dev", "run", "mnt", "var/log"):
        archive.dir(directory)
    archive.dir("root", 0o700)
    archive.dir("tmp", 0o1777)
    # The kernel opens /dev/console for init before anything mounts devtmpfs.
    archive.chardev("dev/console", 5, 1)
    _add_busybox(archive, busybox)
    for path, name, mode in _SCRIPTS:
        archive.file(path, data_file(name), mode)
    for path, text in _ETC.items():
        archive.file(path, text.encode())
    archive.symlink("usr/share/udhcpc/default.script", "/etc/kasou/udhcpc.script")
    _add_modules(archive, modules)
    return archive


def _add_busybox(archive: Archive, busybox: Path) -> None:
    archive.copy("bin/busybox", busybox, 0o755)
    for applet in applets(busybox):
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")
    # The kernel runs /init; busybox picks its applet from the name, so this is init.
    archive.symlink("init", "/bin/busybox")


def applets(busybox: Path) -> list[str]:
    """Install paths of every applet ('sbin/acpid', 'usr/bin/[', ...)."""
    # busybox-static is a static x86-64 binary, so it runs on any x86-64 Linux host.
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ImageBuildError(f"cannot list busybox applets: {e}") from e
    names = [line.strip() for line in out.splitlines() if line.strip()]
    if "sbin/init" not in names:
        raise ImageBuildError("this busybox has no init applet")
    return names


def _add_modules(archive: Archive, modules: ModuleTree) -> None:
    order, deps = modules.resolve(DRIVERS)
    base = f"lib/modules/{modules.version}"
    for rel in order:
        archive.copy(f"{base}/{rel}", modules.base / rel, 0o644)
    archive.file(f"{base}/modules.dep", format_modules_dep(order, deps).encode())
    builtin = modules.base / "modules.builtin"
    if builtin.exists():
        archive.copy(f"{base}/modules.builtin", builtin, 0o644)
    names = "".join(f"{module_name(rel)}\n" for rel in order)
    archive.file("etc/kasou/modules", names.encode())


RECIPE = Recipe(
    name="tiny",
    description="Debian cloud kernel + busybox initramfs; serial shell, ACPI power button",
    build=build,
)

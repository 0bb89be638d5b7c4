"""The `debian` guest: a debootstrap'd Debian 12 cloud image (systemd, cloud-init,
qemu-guest-agent, openssh-server), booted with its own kernel and initrd.

How it is built (≈ 3-4 min the first time, then cached):
1. `debootstrap --variant=minbase` from the mirror the host's apt uses, then
   `apt-get install --no-install-recommends` inside the chroot (debootstrap's --include
   does not resolve virtual packages; apt does).
2. Configuration for a cloud guest: DHCP on any NIC through systemd-networkd (cloud-init
   renders its network-config there too), cloud-init limited to NoCloud, no SSH host keys
   and an empty machine-id (made per VM on first boot), a `KASOU READY <hostname>` line on
   the serial console once cloud-init has finished.
3. `mkfs.ext4 -d` copies the tree into a file system on a sparse raw file (no loop device,
   no mount), which `qemu-img convert -c` turns into a compressed qcow2: the read-only base
   every VM gets a copy-on-write overlay of.

Every chroot step runs in private mount and pid namespaces (`unshare`): its /proc, /sys
and /dev are mounted there only, vanish when the step ends, and no daemon a maintainer
script starts can outlive it. So the build dir never holds a mount of the host's /dev
when it is deleted.

Boot: direct kernel boot of the image's own kernel and initrd (copied out of /boot) with
root=/dev/vda, rather than a bootloader in the disk. A bootloader cannot be installed into
a disk image without a loop device or a block device to point grub-install at, and direct
boot skips GRUB's menu and the BIOS disk probe (seconds under TCG). What it costs: a kernel
upgraded inside the guest is not booted (see docs/debian.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from kasou.errors import ImageBuildError
from kasou.images import aptsources
from kasou.images.manifest import ImageManifest, now_iso
from kasou.images.recipe import BuildContext, Recipe
from kasou.paths import cache_dir

SUITE = "bookworm"
PACKAGES = (
    "systemd-sysv", "linux-image-cloud-amd64", "cloud-init", "qemu-guest-agent",
    "openssh-server", "systemd-resolved", "sudo", "ca-certificates",
)
DISK_SIZE = 2 << 30
ROOT_LABEL = "kasou-root"
CMDLINE = "root=/dev/vda ro console=ttyS0 panic=-1 quiet"
READY_LINE = r"KASOU READY \S+"
MIN_MEMORY_MIB = 256
STEP_TIMEOUT_S = 1800

# Device nodes a chroot step sees: a private tmpfs /dev, so nothing run in the chroot can
# touch the host's /dev.
_NS_SETUP = r"""
set -e
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t tmpfs -o mode=0755,size=16m dev "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r name major minor <<EOF
$node
EOF
  mknod -m 0666 "$root/dev/$name" c "$major" "$minor"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
exec chroot "$root" "$@"
"""

_CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}

# Files written into the image, path -> (content, mode).
_FILES: dict[str, tuple[str, int]] = {
    "etc/fstab": ("/dev/vda / ext4 defaults,discard,errors=remount-ro 0 1\n", 0o644),
    "etc/hostname": ("debian\n", 0o644),
    # Any NIC gets DHCP, also with no cloud-init network-config; cloud-init's own files
    # (10-cloud-init-*.network) sort first and win when it writes some.
    "etc/systemd/network/90-kasou-dhcp.network": (
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n", 0o644),
    # The stock wait-online waits 2 min for every link; cloud-init's network stage waits
    # for it, so a VM without a NIC would boot 2 min slower.
    "etc/systemd/system/systemd-networkd-wait-online.service.d/kasou.conf": (
        "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online "
        "--any --timeout=30\n", 0o644),
    # Only NoCloud (kasou's seed) and None: probing EC2, OpenStack... costs minutes.
    "etc/cloud/cloud.cfg.d/90-kasou.cfg": (
        "datasource_list: [NoCloud, None]\n"
        # RSA/DSA host keys take ≈ 10 s to make under TCG; every client speaks ed25519.
        "ssh_genkeytypes: [ed25519, ecdsa]\n"
        # No GRUB to configure: the kernel is booted directly.
        "grub_dpkg: {enabled: false}\n", 0o644),
    # The ready point tests and benchmarks wait for, the same words as the tiny guest.
    "etc/systemd/system/kasou-ready.service": (
        "[Unit]\nDescription=Say KASOU READY on the serial console\n"
        "After=cloud-final.service multi-user.target\n\n"
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"KASOU READY $(hostname)\" "
        "> /dev/ttyS0'\n\n[Install]\nWantedBy=cloud-init.target\n", 0o644),
    # The initramfs only has to find the root disk: virtio-blk. The default (MODULES=most)
    # loads every storage driver, ≈ 10 s of the boot under TCG; the rest of the drivers
    # load from the root file system.
    "etc/initramfs-tools/conf.d/kasou.conf": ("MODULES=list\n", 0o644),
    "usr/share/initramfs-tools/modules.d/kasou": ("virtio_pci\nvirtio_blk\n", 0o644),
    # Docs, man pages and translations: ≈ 60 MB nobody reads in a VM.
    "etc/dpkg/dpkg.cfg.d/90-kasou-nodoc": (
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n",
        0o644),
}

# Needed before the packages go in: the kernel's postinst builds the initramfs.
_BEFORE_INSTALL = ("etc/dpkg/dpkg.cfg.d/90-kasou-nodoc", "etc/initramfs-tools/conf.d/kasou.conf",
                   "usr/share/initramfs-tools/modules.d/kasou")

_ENABLE = ("systemd-networkd.service", "systemd-resolved.service", "kasou-ready.service")
# Timers that download package lists or scan file systems in the background: under TCG
# they take a core for minutes right when a test or a user wants the VM.
_MASK = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
         "e2scrub_reap.service", "fstrim.timer", "man-db.timer")


def build(ctx: BuildContext) -> ImageManifest:
    require_tools()
    sources = aptsources.debian_sources(SUITE, aptsources.host_sources())
    root = ctx.work / "rootfs"
    ctx.progress(f"debootstrap {SUITE} from {sources[0].uri}", 0.02)
    debootstrap(root, sources[0].uri)
    ctx.progress("installing packages", 0.35)
    install_packages(root, sources)
    ctx.progress("configuring", 0.7)
    configure(root)
    versions = package_versions(root, PACKAGES)
    kernel, initrd = kernel_files(root)
    shutil.copyfile(kernel, ctx.out / "vmlinuz")
    shutil.copyfile(initrd, ctx.out / "initrd.img")
    clean(root)
    ctx.progress("making the disk", 0.8)
    raw = ctx.work / "root.raw"
    make_filesystem(root, raw)
    ctx.progress("compressing the disk", 0.9)
    compress(raw, ctx.out / "disk.qcow2")
    ctx.progress("done", 1.0)
    return ImageManifest(
        name=ctx.name,
        os=f"Debian {debian_version(root)} ({kernel.name.removeprefix('vmlinuz-')}, "
           f"cloud-init {versions.get('cloud-init', '?')})",
        machine="pc",
        kernel=str(ctx.final / "vmlinuz"),
        initrd=str(ctx.final / "initrd.img"),
        cmdline=CMDLINE,
        disk=str(ctx.final / "disk.qcow2"),
        firmware="bios",
        graceful_stop=True,
        ready_line=READY_LINE,
        min_memory_mib=MIN_MEMORY_MIB,
        cloud_init=True,
        built_at=now_iso(),
        sources=versions,
    )


def require_tools() -> None:
    missing = [t for t in ("debootstrap", "unshare", "mkfs.ext4", "qemu-img", "chroot")
               if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(f"building the debian image needs {', '.join(missing)} "
                              "(apt-get install debootstrap e2fsprogs qemu-utils)")
    if os.geteuid() != 0:
        raise ImageBuildError("building the debian image needs root (debootstrap, chroot)")


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=STEP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{what} took more than {STEP_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-15:])
        raise ImageBuildError(f"{what} failed ({proc.returncode}): {tail}")
    return proc.stdout


def _isolated(argv: Sequence[str]) -> list[str]:
    """argv in fresh mount and pid namespaces: its mounts and processes die with it."""
    return ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", *argv]


def proxy_env() -> dict[str, str]:
    """http(s)_proxy from apt's own configuration, for debootstrap's downloads."""
    env = {}
    for scheme in ("http", "https"):
        out = subprocess.run(["apt-config", "shell", "P", f"Acquire::{scheme}::Proxy"],
                             capture_output=True, text=True, check=False).stdout.strip()
        if out.startswith("P="):
            value = shlex.split(out[2:])[0] if out[2:] else ""
            if value and value.upper() != "DIRECT":
                env[f"{scheme}_proxy"] = value
    return env


def debootstrap(root: Path, mirror: str) -> None:
    debs = cache_dir() / "debootstrap"
    debs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **proxy_env()}
    _run(_isolated(["debootstrap", "--variant=minbase", f"--cache-dir={debs}", SUITE,
                    str(root), mirror]), "debootstrap", env)


def chroot(root: Path, *argv: str) -> str:
    return _run(_isolated(["sh", "-c", _NS_SETUP, "kasou-chroot", str(root), *argv]),
                " ".join(argv[:3]), _CHROOT_ENV)


def put(root: Path, rel: str, content: str | bytes, mode: int = 0o644) -> None:
    """Write a file inside root without following a symlink out of it (an absolute
    symlink such as /etc/resolv.conf would otherwise lead to the host's file)."""
    path = root / rel
    parent = path.parent
    for p in [parent, *parent.parents]:
        if p == root or root not in p.parents:
            break
        if p.is_symlink():
            raise ImageBuildError(f"{p.relative_to(root)} is a symlink; refusing to write "
                                  f"{rel} through it")
    parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def install_packages(root: Path, sources: list[aptsources.Source]) -> None:
    put(root, "etc/apt/sources.list", "".join(s.line(["main"]) + "\n" for s in sources))
    for rel in _BEFORE_INSTALL:
        put(root, rel, *_FILES[rel])
    # Maintainer scripts must not start daemons in the chroot.
    put(root, "usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)
    put(root, "etc/resolv.conf", Path("/etc/resolv.conf").read_text())
    proxies = proxy_env()
    if proxies:
        put(root, "etc/apt/apt.conf.d/00-kasou-build-proxy", "".join(
            f'Acquire::{k.split("_")[0]}::Proxy "{v}";\n' for k, v in proxies.items()))
    chroot(root, "apt-get", "update", "-q")
    chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES)


def configure(root: Path) -> None:
    for rel, (content, mode) in _FILES.items():
        put(root, rel, content, mode)
    chroot(root, "systemctl", "enable", *_ENABLE)
    chroot(root, "systemctl", "mask", *_MASK)


def clean(root: Path) -> None:
    """Remove what must differ per VM or only served the build."""
    for rel in ("usr/sbin/policy-rc.d", "etc/apt/apt.conf.d/00-kasou-build-proxy",
                "var/lib/dbus/machine-id", "var/lib/systemd/random-seed"):
        (root / rel).unlink(missing_ok=True)
    # Host keys and machine-id are made on first boot (cloud-init / systemd): VMs of one
    # image must not share SSH identities or DHCP client ids.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    put(root, "etc/machine-id", "", 0o444)
    if not (root / "etc/resolv.conf").is_symlink():
        put(root, "etc/resolv.conf", "")
    chroot(root, "apt-get", "clean")
    for directory in ("var/lib/apt/lists", "usr/share/man", "usr/share/info", "tmp"):
        _empty_dir(root / directory, keep=("lock", "partial", "auxfiles"))
    # Logs of the build, not of any VM; the directories stay (apt, journald expect them).
    for log in (root / "var/log").rglob("*"):
        if log.is_file() and not log.is_symlink():
            log.unlink()


def _empty_dir(path: Path, keep: Sequence[str] = ()) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def package_versions(root: Path, packages: Sequence[str]) -> dict[str, str]:
    out = chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages)
    versions = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    kernel = kernel_files(root)[0].name.removeprefix("vmlinuz-")
    versions[f"linux-image-{kernel}"] = versions.get("linux-image-cloud-amd64", "")
    return versions


def kernel_files(root: Path) -> tuple[Path, Path]:
    """(vmlinuz, initrd) of the one kernel installed in the image."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one kernel in the image's /boot, found "
                              f"{[k.name for k in kernels] or 'none'}")
    initrd = root / "boot" / kernels[0].name.replace("vmlinuz-", "initrd.img-", 1)
    if not initrd.is_file():
        raise ImageBuildError(f"the kernel package made no {initrd.name}")
    return kernels[0], initrd


def debian_version(root: Path) -> str:
    return (root / "etc/debian_version").read_text().strip()


def make_filesystem(root: Path, raw: Path) -> None:
    """A sparse raw file holding ext4 with the tree copied in by mke2fs itself."""
    with open(raw, "wb") as f:
        f.truncate(DISK_SIZE)
    # lazy init off: inode tables and journal are zeroed now, in the base (and compress to
    # nothing), instead of by every VM's kernel on its first boot, into its overlay.
    _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(root),
          "-E", "lazy_itable_init=0,lazy_journal_init=0", str(raw)], "mkfs.ext4 -d")


def compress(raw: Path, dest: Path) -> None:
    _run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2",
          "-o", "compression_type=zstd", str(raw), str(dest)], "qemu-img convert")


RECIPE = Recipe(
    name="debian",
    description="Debian 12 cloud image: systemd, cloud-init, qemu-guest-agent, openssh",
    build=build,
)

"""Pure parts of the image builder: parsers, module closure, cpio, manifest, registry errors."""

from __future__ import annotations

import gzip
import json
import stat
import struct
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from kasou.errors import ImageBuildError, InvalidSpec, NotFound
from kasou.images import debs, kmod
from kasou.images.cpio import Archive
from kasou.images.manifest import ImageManifest, read_manifest, write_manifest
from kasou.images.recipe import data_file
from kasou.images.registry import BUILDABLE, build_image, get_image, list_images

# A slice of a real modules.dep (depmod's convention: all deps, last-loaded first).
MODULES_DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko \
kernel/drivers/scsi/scsi_common.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/input/evdev.ko:
"""


def short(path: str) -> str:
    return kmod.module_name(path)


# --- modules.dep closure ---------------------------------------------------------------

def test_module_names_follow_the_kernel() -> None:
    assert kmod.module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert kmod.module_name("kernel/fs/ext4/ext4.ko.xz") == "ext4"


def test_parse_modules_dep() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    assert deps["kernel/drivers/virtio/virtio_ring.ko"] == []
    assert deps["kernel/drivers/net/net_failover.ko"] == ["kernel/net/core/failover.ko"]
    assert len(deps) == 10


def test_load_order_puts_every_dependency_first() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    wanted = ["kernel/drivers/scsi/virtio_scsi.ko", "kernel/drivers/net/virtio_net.ko"]
    order = kmod.load_order(wanted, deps)
    assert sorted(order) == sorted({*wanted, *(d for w in wanted for d in deps[w])})
    for position, mod in enumerate(order):
        for dep in deps[mod]:
            assert order.index(dep) < position, f"{dep} must load before {mod}"
    assert len(order) == len(set(order))


def test_load_order_of_independent_modules_keeps_the_request_order() -> None:
    deps = kmod.parse_modules_dep(MODULES_DEP)
    order = kmod.load_order(["kernel/drivers/input/evdev.ko",
                             "kernel/drivers/char/hw_random/virtio-rng.ko"], deps)
    assert [short(m) for m in order] == ["evdev", "virtio_ring", "virtio", "virtio_rng"]


def test_load_order_names_a_missing_dependency() -> None:
    deps = {"a.ko": ["b.ko"]}
    with pytest.raises(ImageBuildError, match=r"b\.ko not found \(needed by a\.ko\)"):
        kmod.load_order(["a.ko"], deps)


def test_load_order_refuses_a_cycle() -> None:
    deps = {"a.ko": ["b.ko"], "b.ko": ["a.ko"]}
    with pytest.raises(ImageBuildError, match=r"cycle: a\.ko -> b\.ko -> a\.ko"):
        kmod.load_order(["a.ko"], deps)


def test_modules_dep_round_trips_in_depmod_convention() -> None:
    deps = {"ring.ko": [], "virtio.ko": ["ring.ko"], "net.ko": ["virtio.ko"]}
    order = kmod.load_order(["net.ko"], deps)
    text = kmod.format_modules_dep(order, deps)
    assert text == "ring.ko:\nvirtio.ko: ring.ko\nnet.ko: virtio.ko ring.ko\n"
    assert kmod.load_order(["net.ko"], kmod.parse_modules_dep(text)) == order


def _elf_module(modinfo: bytes) -> bytes:
    """A minimal ELF64 file with a .modinfo section, as the kernel build writes it."""
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    modinfo_off = body_off
    shstr_off = modinfo_off + len(modinfo)
    shoff = shstr_off + len(shstrtab)
    shoff += -shoff % 8
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)

    def section(name: int, offset: int, size: int) -> bytes:
        sh = bytearray(64)
        struct.pack_into("<I", sh, 0, name)
        struct.pack_into("<QQ", sh, 0x18, offset, size)
        return bytes(sh)

    data = bytearray(header) + modinfo + shstrtab
    data += b"\0" * (shoff - len(data))
    data += section(0, 0, 0) + section(1, modinfo_off, len(modinfo))
    data += section(10, shstr_off, len(shstrtab))
    return bytes(data)


def test_read_modinfo_from_an_elf_module() -> None:
    blob = b"license=GPL\0depends=virtio,virtio_ring,net_failover\0alias=virtio:d00000001v*\0"
    info = kmod.read_modinfo(_elf_module(blob))
    assert info["depends"] == ["virtio,virtio_ring,net_failover"]
    assert info["alias"] == ["virtio:d00000001v*"]


def test_read_modinfo_refuses_a_non_elf_file() -> None:
    with pytest.raises(ImageBuildError, match="not an ELF64"):
        kmod.read_modinfo(b"#!/bin/sh\n")


def test_module_tree_resolves_wanted_drivers(tmp_path: Path) -> None:
    base = tmp_path / "lib/modules/6.1.0-test"
    files = {
        "kernel/drivers/virtio/virtio_ring.ko": b"depends=\0",
        "kernel/drivers/virtio/virtio.ko": b"depends=virtio_ring\0",
        "kernel/drivers/char/hw_random/virtio-rng.ko": b"depends=virtio,virtio_ring\0",
    }
    for rel, modinfo in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(_elf_module(modinfo))
    (base / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    tree = kmod.ModuleTree(tmp_path, "6.1.0-test")
    order, _ = tree.resolve(["virtio_rng", "ext4"])  # ext4 is built in: no file needed
    assert [short(m) for m in order] == ["virtio_ring", "virtio", "virtio_rng"]
    with pytest.raises(ImageBuildError, match="has no driver nosuch"):
        tree.resolve(["nosuch"])


# --- apt output parsing ----------------------------------------------------------------

def test_candidate_from_apt_cache_policy() -> None:
    text = ("busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"
            "  Version table:\n     1:1.35.0-4+deb12u1+b1 500\n")
    assert debs.parse_candidate(text) == "1:1.35.0-4+deb12u1+b1"
    assert debs.parse_candidate("x:\n  Installed: (none)\n  Candidate: (none)\n") is None
    assert debs.parse_candidate("") is None  # apt-cache policy of an unknown package


def test_kernel_package_behind_the_metapackage() -> None:
    show = ("Package: linux-image-cloud-amd64\nSource: linux-signed-amd64\n"
            "Version: 6.1.192-2\n"
            "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n"
            "Description: Linux for x86-64 cloud (meta-package)\n continued line\n\n"
            "Package: linux-image-cloud-amd64\nVersion: 6.1.176-1\n"
            "Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\n")
    fields = debs.parse_control(show)
    assert fields["Version"] == "6.1.192-2"  # first stanza only
    assert fields["Description"].endswith("\ncontinued line")
    assert debs.kernel_package_from_depends(fields["Depends"]) == \
        "linux-image-6.1.0-56-cloud-amd64"
    with pytest.raises(ImageBuildError, match="no versioned kernel"):
        debs.kernel_package_from_depends("initramfs-tools | linux-initramfs-tool")


def test_upstream_version() -> None:
    assert debs.upstream_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert debs.upstream_version("6.10-4") == "6.10"
    assert debs.upstream_version("2.0") == "2.0"


def test_no_apt_lists_says_to_run_apt_get_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debs, "_run", lambda argv, cwd=None: "")
    with pytest.raises(ImageBuildError, match="apt-get update"):
        debs.candidate("busybox-static")


# --- cpio ------------------------------------------------------------------------------

def parse_newc(data: bytes) -> dict[str, tuple[int, int, int, bytes, int, int]]:
    """path -> (mode, uid, gid, data, rdevmajor, rdevminor), independent of the writer."""
    out: dict[str, tuple[int, int, int, bytes, int, int]] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_start = pos + 110
        name = data[name_start: name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos: pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (f[1], f[2], f[3], body, f[9], f[10])


def test_cpio_entries_are_root_owned_with_parents_and_devices() -> None:
    archive = Archive()
    archive.file("etc/init.d/rcS", b"#!/bin/sh\n", 0o755)
    archive.symlink("init", "/bin/busybox")
    archive.chardev("dev/console", 5, 1)
    entries = parse_newc(archive.to_bytes())
    assert list(entries) == sorted(entries)
    assert {"etc", "etc/init.d", "etc/init.d/rcS", "init", "dev", "dev/console"} <= set(entries)
    assert all(uid == 0 and gid == 0 for _, uid, gid, *_ in entries.values())
    mode, _, _, body, _, _ = entries["etc/init.d/rcS"]
    assert stat.S_ISREG(mode) and mode & 0o777 == 0o755 and body == b"#!/bin/sh\n"
    assert stat.S_ISDIR(entries["etc/init.d"][0])
    assert stat.S_ISLNK(entries["init"][0]) and entries["init"][3] == b"/bin/busybox"
    console = entries["dev/console"]
    assert stat.S_ISCHR(console[0]) and console[4:] == (5, 1)


def test_cpio_is_reproducible_and_readable_by_cpio(tmp_path: Path) -> None:
    def make() -> Archive:
        a = Archive()
        a.file("b/x", b"1" * 5)
        a.file("a", b"")
        return a
    one, two = tmp_path / "1.gz", tmp_path / "2.gz"
    make().write_gzip(one)
    make().write_gzip(two)
    assert one.read_bytes() == two.read_bytes()
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=gzip.decompress(one.read_bytes()),
                             capture_output=True, check=True, timeout=30).stdout.decode()
    assert listing.split() == ["a", "b", "b/x"]


def test_cpio_refuses_escaping_paths() -> None:
    with pytest.raises(ValueError, match="bad archive path"):
        Archive().file("../etc/passwd", b"")


# --- guest scripts ---------------------------------------------------------------------

@pytest.mark.parametrize(("cmdline", "expected"), [
    ("console=ttyS0 quiet kasou.hostname=web-1 tsc=reliable", "web-1"),
    ("console=ttyS0 quiet", "tiny"),
    ("kasou.hostname= quiet", "tiny"),                     # empty: the default
    ("kasou.hostname=a * kasou.hostname=b", "b"),          # last wins, no globbing
    ("xkasou.hostname=no kasou.hostnames=no", "tiny"),     # exact parameter name only
])
def test_guest_reads_its_hostname_from_the_kernel_cmdline(
        tmp_path: Path, cmdline: str, expected: str) -> None:
    script = tmp_path / "kasou-param"
    script.write_bytes(data_file("tiny-param"))
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    (tmp_path / "glob-bait").write_text("")
    out = subprocess.run(["sh", str(script), "kasou.hostname", "tiny"], cwd=tmp_path,
                         env={"KASOU_CMDLINE": str(tmp_path / "cmdline"), "PATH": "/bin:/usr/bin"},
                         capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == f"{expected}\n"


def test_guest_scripts_are_valid_sh() -> None:
    files = resources.files("kasou.images").joinpath("files")
    scripts = [f.name for f in files.iterdir()
               if f.name.startswith("tiny-") and f.name != "tiny-inittab"]
    assert {"tiny-rcS", "tiny-console", "tiny-param", "tiny-power-button"} <= set(scripts)
    for name in scripts:
        subprocess.run(["sh", "-n"], input=data_file(name), check=True, timeout=10)


# --- manifest --------------------------------------------------------------------------

def manifest(root: Path, name: str = "tiny") -> ImageManifest:
    return ImageManifest(
        name=name, os="linux (test)", machine="microvm",
        kernel=str(root / name / "vmlinuz"), initrd=str(root / name / "initrd.img"),
        cmdline="console=ttyS0", graceful_stop=True, ready_line=r"KASOU READY \S+",
        min_memory_mib=96, built_at="2026-01-01T00:00:00+00:00",
        sources={"busybox-static": "1:1.35.0-4"},
    )


def test_manifest_round_trip(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    original = manifest(tmp_path)
    path = write_manifest(original, tmp_path / "tiny")
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["disk"] is None and data["firmware"] == "bios"
    assert read_manifest(tmp_path / "tiny") == original


def test_manifest_follows_a_moved_image_dir(tmp_path: Path) -> None:
    (tmp_path / "old/tiny").mkdir(parents=True)
    write_manifest(manifest(tmp_path / "old"), tmp_path / "old/tiny")
    (tmp_path / "old/tiny").rename(tmp_path / "moved")
    loaded = read_manifest(tmp_path / "moved")
    assert loaded.kernel == str(tmp_path / "moved/vmlinuz")
    assert loaded.initrd == str(tmp_path / "moved/initrd.img")


def test_manifest_of_another_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    data = manifest(tmp_path).model_dump()
    data["version"] = 2
    (tmp_path / "tiny/manifest.json").write_text(json.dumps(data))
    with pytest.raises(ImageBuildError, match="version 2 is not supported"):
        read_manifest(tmp_path / "tiny")


def test_manifest_validates_fields() -> None:
    with pytest.raises(ValueError, match="machine"):
        ImageManifest.model_validate({**manifest(Path("/x")).model_dump(), "machine": "isapc"})


# --- registry --------------------------------------------------------------------------

def buildable() -> str:
    return ", ".join(sorted(BUILDABLE))


def test_buildable_images() -> None:
    assert {"tiny", "memtest"} <= set(BUILDABLE)
    assert all(name == recipe.name for name, recipe in BUILDABLE.items())


def test_unknown_image_to_build_lists_buildable_names(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        build_image("nosuch", tmp_path)
    assert err.value.message == f"no recipe for image 'nosuch'; buildable images: {buildable()}"


def test_missing_image_names_what_exists_and_how_to_build(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    write_manifest(manifest(tmp_path), tmp_path / "tiny")
    for f in ("vmlinuz", "initrd.img"):
        (tmp_path / "tiny" / f).write_bytes(b"x")
    with pytest.raises(NotFound) as err:
        get_image("memtest", tmp_path)
    assert "built: tiny" in err.value.message
    assert "`kasou image build memtest`" in err.value.message
    with pytest.raises(NotFound) as err:
        get_image("other", tmp_path)
    assert f"`kasou image build NAME` (buildable: {buildable()})" in err.value.message
    assert get_image("tiny", tmp_path).kernel == str(tmp_path / "tiny/vmlinuz")


def test_incomplete_image_is_not_found_with_a_rebuild_hint(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    write_manifest(manifest(tmp_path), tmp_path / "tiny")
    with pytest.raises(NotFound, match=r"incomplete.*--force"):
        get_image("tiny", tmp_path)


def test_list_images_skips_unreadable_ones(tmp_path: Path) -> None:
    assert list_images(tmp_path / "nothing-here") == []
    (tmp_path / "tiny").mkdir()
    write_manifest(manifest(tmp_path), tmp_path / "tiny")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/manifest.json").write_text("{not json")
    (tmp_path / ".tiny.build-x").mkdir()
    assert [m.name for m in list_images(tmp_path)] == ["tiny"]


def test_image_names_cannot_escape_the_image_dir(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec):
        get_image("../etc", tmp_path)
    with pytest.raises(InvalidSpec):
        build_image("a/b", tmp_path)


def test_cached_image_is_returned_without_building(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny").mkdir()
    write_manifest(manifest(tmp_path), tmp_path / "tiny")
    for f in ("vmlinuz", "initrd.img"):
        (tmp_path / "tiny" / f).write_bytes(b"x")

    def no_apt(*args: object, **kwargs: object) -> str:
        raise AssertionError("a cached image must not run apt")

    monkeypatch.setattr(debs, "_run", no_apt)
    seen: list[tuple[str, float]] = []
    got = build_image("tiny", tmp_path, progress=lambda m, f: seen.append((m, f)))
    assert got == manifest(tmp_path)
    assert seen == [("cached", 1.0)]


def test_failed_build_leaves_nothing_behind(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_apt(argv: list[str], cwd: Path | None = None) -> str:
        raise ImageBuildError("apt-cache policy failed (100): E: broken lists")

    monkeypatch.setattr(debs, "_run", broken_apt)
    monkeypatch.setattr(debs, "require_tools", lambda: None)
    with pytest.raises(ImageBuildError, match="broken lists"):
        build_image("tiny", tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock"]

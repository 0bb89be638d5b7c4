"""Pure parts of the debian image: the host's apt sources, writing into the tree without
leaving it, and the per-VM overlay on the image's disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kasou.errors import Conflict, EngineError, ImageBuildError, NotFound
from kasou.images import aptsources, debian, overlay
from kasou.images.manifest import ImageManifest
from kasou.spec import parse_spec

ONE_LINE = """\
# a comment
deb http://mirror.example/debian/ bookworm main contrib
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://sec.example/debian-security bookworm-security main
deb http://other.example/ubuntu jammy main   # not Debian 12
"""

DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def test_one_line_sources() -> None:
    got = aptsources.parse_one_line(ONE_LINE)
    assert got[0] == aptsources.Source("http://mirror.example/debian", "bookworm",
                                       ("main", "contrib"))
    assert got[1].uri == "http://sec.example/debian-security"
    assert len(got) == 3   # deb-src and comments skipped


def test_deb822_sources() -> None:
    got = aptsources.parse_deb822(DEB822)
    assert [(s.uri, s.suite) for s in got] == [
        ("http://deb.debian.org/debian", "bookworm"),
        ("http://deb.debian.org/debian", "bookworm-updates"),
        ("http://deb.debian.org/debian-security", "bookworm-security"),
    ]


def test_debian_sources_pick_the_release_first(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    picked = aptsources.debian_sources("bookworm", aptsources.host_sources(tmp_path))
    assert picked[0].suite == "bookworm"
    assert {s.suite for s in picked} == {"bookworm", "bookworm-updates", "bookworm-security"}
    assert picked[0].line(["main"]) == "deb http://mirror.example/debian bookworm main"


def test_no_debian_source_is_a_clear_error() -> None:
    only_ubuntu = aptsources.parse_one_line("deb http://x/ubuntu jammy main\n")
    with pytest.raises(ImageBuildError, match="no source for Debian bookworm main"):
        aptsources.debian_sources("bookworm", only_ubuntu)


def test_put_never_writes_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "resolv.conf").symlink_to(outside / "resolv.conf")
    debian.put(root, "etc/resolv.conf", "nameserver 10.0.2.3\n")
    assert not (outside / "resolv.conf").exists()
    assert (root / "etc" / "resolv.conf").read_text() == "nameserver 10.0.2.3\n"
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to(outside)
    with pytest.raises(ImageBuildError, match="is a symlink"):
        debian.put(root, "var/run/x", "no")
    assert list(outside.iterdir()) == []


def _manifest(disk: str | None) -> ImageManifest:
    return ImageManifest(name="debian", os="Debian", machine="pc", kernel="/k", initrd="/i",
                         cmdline="root=/dev/vda", disk=disk, graceful_stop=True,
                         ready_line=None, min_memory_mib=256, cloud_init=True,
                         built_at="now", sources={})


def test_which_vms_boot_the_image_disk() -> None:
    image = _manifest("/cache/debian/disk.qcow2")
    assert overlay.uses_image_disk(parse_spec({"name": "a", "image": "debian"}), image)
    assert not overlay.uses_image_disk(parse_spec({"name": "a", "image": "debian",
                                                   "disks": ["/srv/d.qcow2"]}), image)
    assert not overlay.uses_image_disk(parse_spec({"name": "a", "image": "tiny"}),
                                       _manifest(None))


def test_overlay_is_backed_by_the_image_disk_which_stays_untouched(tmp_path: Path) -> None:
    base = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    before = base.read_bytes()
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    image = _manifest(str(base))
    with pytest.raises(NotFound, match="lost its disk"):
        overlay.require_overlay(run_dir, "a", image)
    made = overlay.create_overlay(str(base), overlay.overlay_path(run_dir), image.built_at)
    assert overlay.require_overlay(run_dir, "a", image) == made
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(made)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 64 << 20
    # writing through the overlay leaves the base as it was
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M", str(made)],
                   check=True, capture_output=True)
    assert base.read_bytes() == before
    with pytest.raises(EngineError, match="already exists"):
        overlay.create_overlay(str(base), made, image.built_at)
    # a rebuilt image is another base: the old overlay must not be read over it
    rebuilt = image.model_copy(update={"built_at": "later"})
    with pytest.raises(Conflict, match="was rebuilt"):
        overlay.require_overlay(run_dir, "a", rebuilt)

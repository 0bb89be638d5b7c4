"""Each VM of an image with a disk (debian) writes to its own qcow2 overlay.

The image's disk in the cache is shared by every VM made from it and must never change:
a VM gets `<run dir>/root.qcow2`, a copy-on-write overlay whose backing file is the
image's disk (backing format stated, so QEMU never probes it), made when the VM is
created and deleted with the VM's run dir. QEMU opens a backing file read-only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kasou.errors import Conflict, EngineError, NotFound
from kasou.images.manifest import ImageManifest
from kasou.spec import VMSpec

OVERLAY_FILE = "root.qcow2"
STAMP_FILE = "root.base"       # which build of the image the overlay was made on
QEMU_IMG_TIMEOUT_S = 60


def uses_image_disk(spec: VMSpec, image: ImageManifest | None) -> bool:
    """The VM boots the image's disk: it has one and no other root disk was asked for
    (--disk replaces it, --from TEMPLATE brings a clone of its own)."""
    return bool(image is not None and image.disk and not spec.disks and not spec.template)


def overlay_path(run_dir: Path) -> Path:
    return run_dir / OVERLAY_FILE


def create_overlay(base: str, dest: Path, build: str) -> Path:
    """A new qcow2 at dest backed by base; refuses to replace an existing file. `build`
    (the image's built_at) is kept next to it: an overlay only makes sense on the very
    base it was made on."""
    if dest.exists():
        raise EngineError(f"{dest} already exists; not replacing a VM's disk")
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format(base),
            "-b", base, str(dest)]
    _qemu_img(argv, f"cannot create the overlay {dest} on {base}")
    dest.with_name(STAMP_FILE).write_text(build + "\n")
    return dest


def backing_format(path: str) -> str:
    out = _qemu_img(["qemu-img", "info", "--output=json", "-U", path],
                    f"cannot read the image disk {path}")
    fmt = str(json.loads(out).get("format", ""))
    if fmt not in ("qcow2", "raw"):
        raise EngineError(f"image disk {path} is {fmt or 'of unknown format'}, not qcow2/raw")
    return fmt


def backing_file(path: Path) -> str | None:
    """The backing file an overlay points at (None for a stand-alone image)."""
    out = _qemu_img(["qemu-img", "info", "--output=json", "-U", str(path)],
                    f"cannot read {path}")
    value = json.loads(out).get("full-backing-filename") or json.loads(out).get(
        "backing-filename")
    return str(value) if value else None


def require_overlay(run_dir: Path, vm_name: str, image: ImageManifest) -> Path:
    """The VM's overlay; a clear error if it is gone (never silently a fresh one) or if the
    image was rebuilt since (its blocks would be read over a different base: corruption)."""
    path = overlay_path(run_dir)
    if not path.is_file():
        raise NotFound(f"VM {vm_name!r} has lost its disk {path}; it cannot boot. Delete "
                       "and create it again", field="image")
    stamp = run_dir / STAMP_FILE
    made_on = stamp.read_text().strip() if stamp.is_file() else None
    if made_on is not None and made_on != image.built_at:
        raise Conflict(f"image {image.name!r} was rebuilt ({image.built_at}) after VM "
                       f"{vm_name!r} was created on the build of {made_on}; its disk is a "
                       "copy-on-write overlay of the old build and cannot be used on the new "
                       "one. Delete and create the VM again", field="image")
    return path


def _qemu_img(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              timeout=QEMU_IMG_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineError(f"{what}: {e}") from e
    if proc.returncode != 0:
        raise EngineError(f"{what}: {proc.stderr.strip()}")
    return proc.stdout

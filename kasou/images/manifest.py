"""What a built image is: its files, how to boot it, what it was built from.

Saved as <images_dir>/<name>/manifest.json. The file is versioned so a later kasou can
tell an old layout from a broken one.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pydantic

from kasou.errors import ImageBuildError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1

Machine = Literal["microvm", "pc", "q35"]
Firmware = Literal["bios", "uefi", "none"]

# Fields holding paths of files inside the image dir.
_FILE_FIELDS = ("kernel", "initrd", "disk")


class ImageManifest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    version: int = MANIFEST_VERSION
    name: str
    os: str
    machine: Machine
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    disk: str | None = None
    firmware: Firmware = "bios"
    graceful_stop: bool
    ready_line: str | None
    min_memory_mib: int = pydantic.Field(ge=1)
    cloud_init: bool = False          # reads a NoCloud seed (user-data, keys, host name)
    built_at: str
    sources: dict[str, str]

    @pydantic.field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != MANIFEST_VERSION:
            raise ValueError(f"manifest version {value} is not supported "
                             f"(this kasou reads version {MANIFEST_VERSION})")
        return value

    def files(self) -> list[str]:
        """The image's own files, as absolute paths."""
        return [p for p in (self.kernel, self.initrd, self.disk) if p]

    def relocated(self, image_dir: Path) -> ImageManifest:
        """The same manifest with file paths inside image_dir.

        Paths are stored absolute for the engine's sake, but an image dir may be moved
        or copied (another KASOU_IMAGES); the files always sit next to the manifest.
        """
        changes: dict[str, str] = {}
        for field in _FILE_FIELDS:
            value = getattr(self, field)
            if value and Path(value).parent != image_dir:
                changes[field] = str(image_dir / Path(value).name)
        return self.model_copy(update=changes) if changes else self


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_manifest(manifest: ImageManifest, directory: Path) -> Path:
    """Write manifest.json atomically (a reader never sees half a file)."""
    path = directory / MANIFEST_FILE
    tmp = directory / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_manifest(image_dir: Path) -> ImageManifest:
    """Load <image_dir>/manifest.json, with its file paths pointing into image_dir."""
    path = image_dir / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
        manifest = ImageManifest.model_validate(data)
    except (OSError, ValueError) as e:  # pydantic.ValidationError is a ValueError
        raise ImageBuildError(f"image manifest {path} is unreadable ({_reason(e)}); "
                              f"rebuild it with `kasou image build {image_dir.name} --force`"
                              ) from e
    return manifest.relocated(image_dir)


def _reason(error: Exception) -> str:
    if isinstance(error, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}"
                         for e in error.errors())
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

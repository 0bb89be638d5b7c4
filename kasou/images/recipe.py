"""What every image recipe gets and gives: a build context in, a manifest out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kasou.images.manifest import ImageManifest

# (what is happening, fraction done in 0..1)
Progress = Callable[[str, float], None]


def no_progress(message: str, fraction: float) -> None:
    """The default progress callback: says nothing."""


@dataclass(frozen=True)
class BuildContext:
    """Where a recipe works.

    Files go into out, which is renamed to final once the build succeeded; paths written
    into the manifest must therefore point into final, not out.
    """

    name: str
    work: Path      # scratch space, deleted after the build
    out: Path       # the image dir being filled
    final: Path     # where out will live
    progress: Progress


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    build: Callable[[BuildContext], ImageManifest]


def data_file(name: str) -> bytes:
    """A file shipped in kasou/images/files (init scripts and the like)."""
    return resources.files("kasou.images").joinpath("files", name).read_bytes()

"""The image cache: which images are built, looking one up, building one.

Layout: <images_dir>/<name>/manifest.json plus the image's files. A build fills a hidden
temp dir next to it and renames it into place, so readers never see half an image, and a
per-image lock file makes concurrent builds of one image wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from kasou.errors import ImageBuildError, KasouError, NotFound
from kasou.images import debian, debs, memtest, tiny
from kasou.images.manifest import MANIFEST_FILE, ImageManifest, read_manifest, write_manifest
from kasou.images.recipe import BuildContext, Progress, Recipe, no_progress
from kasou.paths import check_name, images_dir

log = logging.getLogger(__name__)

BUILDABLE: dict[str, Recipe] = {r.name: r for r in (tiny.RECIPE, memtest.RECIPE,
                                                     debian.RECIPE)}


def _root(root: Path | None) -> Path:
    return root if root is not None else images_dir()


def list_images(root: Path | None = None) -> list[ImageManifest]:
    """Every built image under root, by name. Unreadable ones are logged and left out."""
    base = _root(root)
    if not base.is_dir():
        return []
    images = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith(".") or not (entry / MANIFEST_FILE).is_file():
            continue
        try:
            images.append(read_manifest(entry))
        except ImageBuildError as e:
            log.warning("skipping image %s: %s", entry.name, e.message)
    return images


def _buildable_names() -> str:
    return ", ".join(sorted(BUILDABLE))


def _not_built(name: str, base: Path) -> NotFound:
    available = ", ".join(m.name for m in list_images(base)) or "none"
    if name in BUILDABLE:
        hint = f"build it with `kasou image build {name}`"
    else:
        hint = f"build one with `kasou image build NAME` (buildable: {_buildable_names()})"
    return NotFound(f"image {name!r} is not built in {base} (built: {available}); {hint}",
                    field="image")


def get_image(name: str, root: Path | None = None) -> ImageManifest:
    """The manifest of a built image; NotFound (naming what exists) if there is none."""
    check_name(name, "image")
    base = _root(root)
    image_dir = base / name
    if not (image_dir / MANIFEST_FILE).is_file():
        raise _not_built(name, base)
    manifest = read_manifest(image_dir)
    missing = [p for p in manifest.files() if not Path(p).is_file()]
    if missing:
        raise NotFound(f"image {name!r} is incomplete (missing {', '.join(missing)}); "
                       f"rebuild it with `kasou image build {name} --force`", field="image")
    return manifest


def build_image(name: str, root: Path | None = None, *, force: bool = False,
                progress: Progress | None = None) -> ImageManifest:
    """Build image name from Debian packages, or return the cached one (unless force)."""
    check_name(name, "image")
    recipe = BUILDABLE.get(name)
    if recipe is None:
        raise NotFound(f"no recipe for image {name!r}; buildable images: {_buildable_names()}",
                       field="image")
    base = _root(root)
    base.mkdir(parents=True, exist_ok=True)
    report = progress or no_progress
    with _locked(base / f".{name}.lock"):
        if not force:
            cached = _cached(name, base)
            if cached is not None:
                report("cached", 1.0)
                return cached
        _remove_stale_builds(base, name)
        debs.require_tools()
        return _build(recipe, base, report)


def _cached(name: str, base: Path) -> ImageManifest | None:
    try:
        return get_image(name, base)
    except (NotFound, ImageBuildError):
        return None  # absent or broken: build it (again)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(base: Path, name: str) -> None:
    # We hold the image's lock, so any temp dir of it is left over from a killed build.
    for stale in base.glob(f".{name}.build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(recipe: Recipe, base: Path, report: Progress) -> ImageManifest:
    temp = Path(tempfile.mkdtemp(dir=base, prefix=f".{recipe.name}.build-"))
    try:
        final = base / recipe.name
        out = temp / "image"
        (temp / "work").mkdir()
        out.mkdir(mode=0o755)
        ctx = BuildContext(recipe.name, temp / "work", out, final, report)
        manifest = _run_recipe(recipe.build, ctx)
        _check_outputs(manifest, ctx)
        write_manifest(manifest, out)
        _swap_into_place(out, final, temp)
        return manifest
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _run_recipe(build: Callable[[BuildContext], ImageManifest],
                ctx: BuildContext) -> ImageManifest:
    try:
        return build(ctx)
    except KasouError:
        raise
    except (OSError, ValueError) as e:  # a bug or a full disk: still say which image
        raise ImageBuildError(f"building image {ctx.name!r} failed: {e}") from e


def _check_outputs(manifest: ImageManifest, ctx: BuildContext) -> None:
    if manifest.name != ctx.name:
        raise ImageBuildError(f"recipe {ctx.name!r} produced an image named {manifest.name!r}")
    for path in manifest.files():
        if Path(path).parent != ctx.final or not (ctx.out / Path(path).name).is_file():
            raise ImageBuildError(f"recipe {ctx.name!r} did not produce {path}")


def _swap_into_place(out: Path, final: Path, temp: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old image into the
    # temp dir (deleted afterwards), then rename the new one in.
    if final.exists():
        os.rename(final, temp / "old")
    os.rename(out, final)

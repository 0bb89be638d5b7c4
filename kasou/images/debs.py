"""Debian packages as build inputs: resolved with apt-cache, fetched with apt-get download.

Nothing is installed on the host: packages are downloaded into a cache (so rebuilds reuse
them) and unpacked with dpkg-deb -x into a work dir. Mirrors are whatever apt is
configured with; kasou never names one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kasou.errors import ImageBuildError
from kasou.paths import cache_dir

APT_TIMEOUT_S = 600
KERNEL_META = "linux-image-cloud-amd64"
_UPDATE_HINT = "run `apt-get update` (as root) to refresh apt's package lists, then build again"


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    path: Path


def debs_dir() -> Path:
    return cache_dir() / "debs"


def parse_candidate(policy_output: str) -> str | None:
    """The candidate version from `apt-cache policy PKG` output, None if there is none."""
    m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", policy_output, re.MULTILINE)
    if not m or m.group(1) == "(none)":
        return None
    return m.group(1)


def parse_control(text: str) -> dict[str, str]:
    """Fields of the first stanza of deb822 text (apt-cache show, dpkg-deb -f)."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def kernel_package_from_depends(depends: str) -> str:
    """linux-image-<abi>-cloud-amd64 from the metapackage's Depends field."""
    for alternative in re.split(r"[,|]", depends):
        name = alternative.strip().split(" ", 1)[0]
        if re.fullmatch(r"linux-image-\d[\w.+-]*", name):
            return name
    raise ImageBuildError(f"{KERNEL_META} depends on no versioned kernel package "
                          f"(Depends: {depends!r})")


def upstream_version(version: str) -> str:
    """'1:1.35.0-4+deb12u1+b1' -> '1.35.0': no epoch, no Debian revision."""
    without_epoch = version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise ImageBuildError(f"{argv[0]} is not installed: building images needs apt and "
                              "dpkg (Debian or Ubuntu host)") from e
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{' '.join(argv)} took more than {APT_TIMEOUT_S} s") from e
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed ({proc.returncode}): "
                              f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def candidate(package: str) -> str:
    """The version apt would fetch for package; a clear error if apt does not know it."""
    version = parse_candidate(_run(["apt-cache", "policy", package]))
    if version is None:
        raise ImageBuildError(f"apt knows no installable version of {package}: {_UPDATE_HINT}")
    return version


def resolve_kernel(meta: str = KERNEL_META) -> tuple[str, str]:
    """(package, version) of the real kernel behind a metapackage such as linux-image-cloud-amd64.

    The metapackage is only a Depends on today's ABI; its Depends names the package with
    the vmlinuz and modules, pinned to the same version.
    """
    meta_version = candidate(meta)
    fields = parse_control(_run(["apt-cache", "show", f"{meta}={meta_version}"]))
    package = kernel_package_from_depends(fields.get("Depends", ""))
    return package, candidate(package)


def _apt_download_argv(spec: str) -> list[str]:
    argv = ["apt-get", "download", "-q"]
    if os.geteuid() == 0:
        # apt drops to the _apt user for downloads, which cannot write into root's cache
        # dir; it then warns and downloads as root anyway. Say so up front, quietly.
        argv += ["-o", "APT::Sandbox::User=root"]
    return [*argv, spec]


def _cached(package: str, version: str, directory: Path) -> Path | None:
    for path in sorted(directory.glob(f"{package}_*.deb")):
        fields = parse_control(_run(["dpkg-deb", "-f", str(path), "Package", "Version"]))
        if fields.get("Package") == package and fields.get("Version") == version:
            return path
    return None


def fetch(package: str, version: str | None = None, directory: Path | None = None) -> Deb:
    """The .deb of package (candidate version unless given), downloaded once into the cache."""
    version = version or candidate(package)
    directory = directory or debs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    hit = _cached(package, version, directory)
    if hit is not None:
        return Deb(package, version, hit)
    # Download into a private dir, then move: a concurrent build never sees half a .deb.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        try:
            _run(_apt_download_argv(f"{package}={version}"), cwd=Path(tmp))
        except ImageBuildError as e:
            # Usually stale lists: the mirror has moved on to a newer version.
            raise ImageBuildError(f"{e.message}; if the mirror no longer has {package} "
                                  f"{version}, {_UPDATE_HINT}") from e
        got = list(Path(tmp).glob("*.deb"))
        if len(got) != 1:
            raise ImageBuildError(f"apt-get download {package}={version} produced {len(got)} "
                                  "files, expected one .deb")
        target = directory / got[0].name
        os.replace(got[0], target)
    return Deb(package, version, target)


def unpack(deb: Deb, dest: Path) -> Path:
    """dpkg-deb -x: the package's files under dest, no maintainer scripts run."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb.path), str(dest)])
    return dest


def require_tools() -> None:
    missing = [t for t in ("apt-get", "apt-cache", "dpkg-deb") if shutil.which(t) is None]
    if missing:
        raise ImageBuildError(f"building images needs {', '.join(missing)} (a Debian host)")

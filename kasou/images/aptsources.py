"""The Debian mirrors this host's apt uses, read from its sources files.

kasou never names a mirror: an image is built from the same mirror (and proxy, through
apt's own configuration) the host already installs from, so a machine behind a local
mirror or with only a snapshot mirror builds images too. Both formats are read: one-line
`/etc/apt/sources.list(.d/*.list)` and deb822 `/etc/apt/sources.list.d/*.sources`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kasou.errors import ImageBuildError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class Source:
    uri: str
    suite: str
    components: tuple[str, ...]

    def line(self, components: Iterable[str] | None = None) -> str:
        """This source as a sources.list line (deb only), limited to components if given."""
        comps = self.components if components is None else tuple(
            c for c in self.components if c in set(components))
        return f"deb {self.uri} {self.suite} {' '.join(comps)}"


def parse_one_line(text: str) -> list[Source]:
    """`deb [opts] URI SUITE COMP...` lines; deb-src, comments and blanks are skipped."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        words = line[4:].strip()
        if words.startswith("["):
            close = words.find("]")
            if close < 0:
                continue
            words = words[close + 1:]
        parts = words.split()
        if len(parts) >= 2:
            out.append(Source(parts[0].rstrip("/"), parts[1], tuple(parts[2:])))
    return out


def parse_deb822(text: str) -> list[Source]:
    """deb822 stanzas (Types/URIs/Suites/Components); `Enabled: no` ones are skipped."""
    out = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in stanza.get("types", "").split():
            continue
        components = tuple(stanza.get("components", "").split())
        for uri in stanza.get("uris", "").split():
            for suite in stanza.get("suites", "").split():
                out.append(Source(uri.rstrip("/"), suite, components))
    return out


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            current[key] += " " + raw.strip()
            continue
        name, sep, value = raw.partition(":")
        if sep:
            key = name.strip().lower()
            current[key] = value.strip()
    return stanzas


def host_sources(apt_dir: Path = APT_DIR) -> list[Source]:
    """Every enabled deb source of this host, in the order apt reads them."""
    found: list[Source] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text())
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                found += parse_one_line(path.read_text())
            elif path.suffix == ".sources":
                found += parse_deb822(path.read_text())
    return found


def debian_sources(suite: str, sources: list[Source]) -> list[Source]:
    """The host's sources for a Debian release: the suite and its -updates/-security, with
    component main. The first one is the release itself (what debootstrap needs)."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    picked = [s for s in sources if s.suite in wanted and "main" in s.components]
    picked.sort(key=lambda s: wanted.index(s.suite))
    if not picked or picked[0].suite != suite:
        raise ImageBuildError(
            f"apt on this host has no source for Debian {suite} main (read "
            f"{APT_DIR}/sources.list and {APT_DIR}/sources.list.d/); add one, run apt-get "
            "update, then build again")
    return picked

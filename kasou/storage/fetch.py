"""Getting bytes for an import: download an http(s) URL into a file, or hash a local file,
reporting progress and checking an optional sha256 as the bytes go by.

Runs in a worker thread (urllib and file reads block); progress is published through a
callback the service reads when the CLI polls.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kasou import __version__
from kasou.errors import InvalidSpec, UserError

CHUNK = 1 << 20
TIMEOUT = 60.0

Report = Callable[[int, int | None], None]


class FetchError(UserError):
    """The source could not be read (HTTP error, unreachable host, hash mismatch)."""

    status = 422
    code = "invalid"


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def download(url: str, dest: Path, sha256: str | None, report: Report) -> None:
    """Stream url into dest; FetchError naming the reason when it cannot."""
    req = urllib.request.Request(url, headers={"User-Agent": f"kasou/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp, dest.open("wb") as out:
            total = _length(resp.headers.get("Content-Length"))
            digest = _copy(resp.read, out.write, total, report)
    except urllib.error.HTTPError as e:
        raise FetchError(f"source: {url} answered HTTP {e.code} {e.reason}",
                         field="source") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"source: cannot download {url}: {reason}", field="source") from None
    if total is not None and dest.stat().st_size != total:
        raise FetchError(f"source: download of {url} stopped at {dest.stat().st_size} of "
                         f"{total} bytes", field="source")
    check_digest(digest, sha256)


def hash_file(path: Path, sha256: str, report: Report) -> None:
    total = path.stat().st_size
    with path.open("rb") as f:
        digest = _copy(f.read, None, total, report)
    check_digest(digest, sha256)


def _copy(read: Callable[[int], bytes], write: Callable[[bytes], object] | None,
          total: int | None, report: Report) -> str:
    h = hashlib.sha256()
    done = 0
    while chunk := read(CHUNK):
        h.update(chunk)
        if write is not None:
            write(chunk)
        done += len(chunk)
        report(done, total)
    return h.hexdigest()


def check_digest(got: str, want: str | None) -> None:
    if want is not None and got != want.lower():
        raise FetchError(f"sha256: the source's sha256 is {got}, not {want.lower()}",
                         field="sha256")


def _length(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise InvalidSpec("sha256: must be 64 hex digits", field="sha256")
    return v

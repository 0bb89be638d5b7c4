"""The audit log's hash chain: each entry hashes its content and the previous entry's hash,
so an edited, removed or reordered entry breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64
FIELDS = ("seq", "ts", "actor", "source", "project", "action", "target", "outcome", "status",
          "detail", "prev")


def entry_hash(entry: dict[str, Any]) -> str:
    # seq is assigned by the database after hashing, so it is not part of the hash; order
    # is protected by `prev`.
    body = {k: entry.get(k) for k in FIELDS if k != "seq"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def verify(entries: list[dict[str, Any]]) -> tuple[bool, int | None, str]:
    """(ok, first bad seq, why). Entries must be the whole log, in order."""
    prev = GENESIS
    for e in entries:
        if e["prev"] != prev:
            return False, e["seq"], f"entry {e['seq']} does not follow the entry before it"
        if entry_hash(e) != e["hash"]:
            return False, e["seq"], f"entry {e['seq']} was changed after it was written"
        prev = e["hash"]
    return True, None, f"{len(entries)} entries, chain intact"

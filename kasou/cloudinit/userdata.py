"""Checks of what a user hands cloud-init, done before a VM is created.

Each check raises ValueError with a reason a user can act on; the spec's validators turn
it into an error naming the field (user_data, ssh_keys, hostname).

user-data is accepted in the two forms people write by hand: a cloud-config (first line
`#cloud-config`, the rest a YAML mapping) or a script (first line `#!`). cloud-init's other
forms (MIME multipart, #include, gzip) are refused rather than passed on unchecked. The
keys of a cloud-config are not all checked (cloud-init has hundreds, and more each
release); the ones whose mistakes are common and silent are (write_files, runcmd...).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import yaml

MAX_USER_DATA = 256 << 10     # NoCloud has no limit, but the spec travels in API bodies
MAX_SSH_KEYS = 32

_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
})
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_LIST_KEYS = ("runcmd", "bootcmd", "packages", "ssh_authorized_keys", "users", "groups",
              "write_files", "mounts")


def check_user_data(text: str) -> str:
    if len(text.encode()) > MAX_USER_DATA:
        raise ValueError(f"is {len(text.encode())} bytes; at most {MAX_USER_DATA} are allowed")
    if "\x00" in text:
        raise ValueError("contains a NUL byte; give a text file")
    first = text.split("\n", 1)[0].strip()
    if first.startswith("#!"):
        return text
    if first != "#cloud-config":
        raise ValueError("must start with '#cloud-config' (a YAML cloud-config) or '#!' "
                         f"(a script); it starts with {first[:40]!r}")
    check_cloud_config(text)
    return text


def check_cloud_config(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"a cloud-config must be a YAML mapping (key: value), not a "
                         f"{_kind(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ValueError(f"cloud-config keys must be strings, got {key!r}")
    for key in _LIST_KEYS:
        if key in data and not isinstance(data[key], list):
            raise ValueError(f"{key} must be a list, not a {_kind(data[key])}")
    for i, entry in enumerate(data.get("write_files") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"write_files[{i}] must be a mapping with a path")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def _kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number",
            bool: "boolean"}.get(type(value), type(value).__name__)


def parse_ssh_keys(text: str) -> list[str]:
    """Public keys from an authorized_keys-style text (one per line, # comments)."""
    if "PRIVATE KEY" in text:
        raise ValueError("this is a private key; give the public key (the .pub file)")
    keys = [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ValueError("no public key in it")
    return [check_ssh_key(k) for k in keys]


def check_ssh_key(key: str) -> str:
    """One OpenSSH public key line: type, base64 blob naming the same type, comment."""
    if "PRIVATE KEY" in key:
        raise ValueError("this is a private key; give the public key (the .pub file)")
    if "\n" in key.strip():
        raise ValueError("one key per entry")
    parts = key.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise ValueError(f"{key[:40]!r}... is not an OpenSSH public key (expected e.g. "
                         "'ssh-ed25519 AAAA... comment')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {parts[0]} key's data is not base64") from None
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else 0
    if blob[4:4 + length].decode(errors="replace") != parts[0]:
        raise ValueError(f"the key's data is not a {parts[0]} key")
    return key.strip()


def check_ssh_keys(keys: list[str]) -> list[str]:
    if len(keys) > MAX_SSH_KEYS:
        raise ValueError(f"at most {MAX_SSH_KEYS} keys")
    return [check_ssh_key(k) for k in keys]


def check_hostname(name: str) -> str:
    """An RFC 1123 host name: dot-separated labels of letters, digits and inner '-'."""
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{name!r} is not a valid host name: use letters, digits and '-' "
                         "(not first or last), labels of at most 63 separated by '.'")
    return name


def hostname_for(vm_name: str) -> str:
    """A valid host name from a VM name ('web_1' -> 'web-1')."""
    labels = []
    for label in vm_name.replace("_", "-").split("."):
        label = label.strip("-")[:63].strip("-")
        if label:
            labels.append(label)
    candidate = ".".join(labels)
    try:
        return check_hostname(candidate)
    except ValueError:
        return "vm"

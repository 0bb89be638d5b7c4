"""Kernel modules for an initramfs: which files, in which load order.

Debian's kernel package ships no modules.dep (depmod makes it at install time, and the
kernel is never installed on the host), so dependencies are read from each module's own
.modinfo section, the same data depmod uses. A modules.dep for just the chosen modules is
written into the initramfs so `modprobe` works inside the guest too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kasou.errors import ImageBuildError

_ELF_MAGIC = b"\x7fELF"


def module_name(path: str) -> str:
    """'kernel/drivers/char/hw_random/virtio-rng.ko' -> 'virtio_rng' (as the kernel names it)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep -> {module path: [paths it needs]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if sep and path.strip():
            deps[path.strip()] = rest.split()
    return deps


def load_order(wanted: Iterable[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Every module in wanted plus what it needs, each after all of its dependencies.

    Keys of deps are module ids (paths or names); a dependency missing from deps is an
    error, since insmod of its dependant would fail at boot.
    """
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" | "done"

    def visit(mod: str, chain: tuple[str, ...]) -> None:
        if state.get(mod) == "done":
            return
        if state.get(mod) == "visiting":
            raise ImageBuildError(f"module dependency cycle: {' -> '.join((*chain, mod))}")
        if mod not in deps:
            needer = f" (needed by {chain[-1]})" if chain else ""
            raise ImageBuildError(f"kernel module {mod} not found{needer}")
        state[mod] = "visiting"
        for dep in deps[mod]:
            visit(dep, (*chain, mod))
        state[mod] = "done"
        order.append(mod)

    for mod in wanted:
        visit(mod, ())
    return order


def format_modules_dep(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> str:
    """modules.dep lines in kmod's convention: all transitive deps, last-loaded first."""
    lines = []
    for mod in order:
        needed = load_order([mod], deps)[:-1]
        lines.append(f"{mod}: {' '.join(reversed(needed))}".rstrip())
    return "\n".join(lines) + "\n"


def read_modinfo(data: bytes) -> dict[str, list[str]]:
    """key -> values of an ELF64 kernel module's .modinfo section ("depends", "alias", ...)."""
    if data[:4] != _ELF_MAGIC or data[4] != 2:
        raise ImageBuildError("not an ELF64 kernel module")
    endian = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(endian + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, = struct.unpack_from(endian + "I", data, base)
        offset, size = struct.unpack_from(endian + "QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for index in range(shnum):
        name_off, offset, size = section(index)
        name = data[str_off + name_off: data.index(b"\0", str_off + name_off)]
        if name == b".modinfo":
            return _parse_modinfo(data[offset: offset + size])
    return {}


def _parse_modinfo(blob: bytes) -> dict[str, list[str]]:
    info: dict[str, list[str]] = {}
    for entry in blob.split(b"\0"):
        key, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


@dataclass(frozen=True)
class ModuleTree:
    """The modules of one kernel: <root>/lib/modules/<version>/."""

    root: Path
    version: str

    @property
    def base(self) -> Path:
        return self.root / "lib/modules" / self.version

    def builtin(self) -> set[str]:
        path = self.base / "modules.builtin"
        text = path.read_text() if path.exists() else ""
        return {module_name(line) for line in text.split()}

    def paths(self) -> dict[str, str]:
        """module name -> path relative to the version dir."""
        found = {}
        for path in self.base.rglob("*.ko*"):
            found[module_name(path.name)] = str(path.relative_to(self.base))
        return found

    def resolve(self, wanted: Iterable[str]) -> tuple[list[str], dict[str, list[str]]]:
        """(load order of module paths, their direct deps) for the wanted drivers.

        A wanted driver built into the kernel (=y) needs no file and is skipped; one that
        is neither a module nor built in is an error (the kernel config changed).
        """
        paths = self.paths()
        builtin = self.builtin()
        deps: dict[str, list[str]] = {}
        todo = []
        for name in (module_name(w) for w in wanted):
            if name in paths:
                todo.append(paths[name])
            elif name not in builtin:
                raise ImageBuildError(f"kernel {self.version} has no driver {name}, neither "
                                      "as a module nor built in")
        pending = list(todo)
        while pending:
            rel = pending.pop()
            if rel in deps:
                continue
            info = read_modinfo((self.base / rel).read_bytes())
            needed = [n for d in info.get("depends", []) for n in d.split(",") if n]
            missing = [n for n in needed if module_name(n) not in paths]
            if missing:
                raise ImageBuildError(f"{rel} needs {', '.join(missing)}, not in the kernel")
            deps[rel] = [paths[module_name(n)] for n in needed]
            pending.extend(deps[rel])
        return load_order(todo, deps), deps

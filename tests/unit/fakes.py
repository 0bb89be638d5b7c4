"""Fakes standing in for a real host, shared by the unit tests of the API.

Nothing here probes the machine or starts QEMU: `fake_host` is a made-up HostInfo (2 cores,
TCG), `fake_home` a data dir and SQLite store in a temporary directory, `fake_platform` a
Platform over them with only the hooks and routes a test asks for (build_platform would
probe the real host and add every area), and `api_client` a TestClient over its app,
carrying a bearer token (TestClient connects as a TCP peer, so every request needs one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter
from fastapi.testclient import TestClient

from kasou.api.app import create_app
from kasou.host.capacity import HostCapacity
from kasou.host.probe import HostInfo
from kasou.paths import Layout
from kasou.service.hooks import VMHook
from kasou.service.platform import Platform
from kasou.service.vms import VMService
from kasou.store.sqlite import SQLiteStore
from kasou.store.tenancy import TenancyStore
from kasou.tenancy.hook import TenancyHook
from kasou.tenancy.models import UserSpec
from kasou.tenancy.ratelimit import RateLimiter
from kasou.tenancy.service import TenancyService


def fake_host(*, memory_mib: int = 4096, qemu_version: str = "7.2.0",
              accelerator_reason: str = "test") -> HostInfo:
    """A 2-core host with QEMU's usual machine types and TCG (no KVM needed)."""
    return HostInfo(cores=2, memory_mib=memory_mib, qemu_binary="qemu-system-x86_64",
                    qemu_version=qemu_version,
                    machines={"microvm": 288, "pc": 255, "q35": 288}, accelerator="tcg",
                    accelerator_reason=accelerator_reason, tsc_khz=None,
                    cgroup_version="v2", kernel_release="6.1")


@dataclass(frozen=True)
class FakeHome:
    """A kasou data dir and its store under a temporary directory, on a fake host."""

    root: Path          # the temporary directory
    layout: Layout      # root / "home"
    store: SQLiteStore
    host: HostInfo

    @property
    def images(self) -> Path:
        """Where images would be built: never created, so no image exists."""
        return self.root / "images"


def fake_home(root: Path, host: HostInfo | None = None) -> FakeHome:
    layout = Layout(root / "home")
    layout.ensure()
    return FakeHome(root=root, layout=layout, store=SQLiteStore(layout.db),
                    host=fake_host() if host is None else host)


def fake_platform(home: FakeHome, *, hooks: Sequence[VMHook] = (),
                  routers: Sequence[APIRouter] = (),
                  tenancy: TenancyService | None = None) -> Platform:
    """A Platform on the fake host, its capacity all of the host's cores and memory.

    Only the hooks and routers given are added; `tenancy` defaults to a new service over the
    home's store.
    """
    vms = VMService(home.layout, home.store, home.host,
                    HostCapacity(home.host.cores, home.host.memory_mib),
                    images_root=home.images, hooks=hooks)
    if tenancy is None:
        tenancy = TenancyService(TenancyStore(home.store))
    return Platform(layout=home.layout, store=home.store, vms=vms, tenancy=tenancy,
                    routers=list(routers))


def fake_platform_with_quotas(home: FakeHome) -> Platform:
    """A fake_platform whose VMs count against their project's quota (TenancyHook)."""
    tenancy = TenancyService(TenancyStore(home.store))
    return fake_platform(home, hooks=[TenancyHook(tenancy, home.store)], tenancy=tenancy)


def admin_token(tenancy: TenancyService, name: str = "root", *,
                expires_days: float | None = 30) -> str:
    """Creates admin user `name` and returns a new token of theirs."""
    tenancy.create_user(UserSpec(name=name, admin=True))
    return tenancy.create_token(name, expires_days=expires_days).token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def api_client(platform: Platform, token: str | None = None,
               limiter: RateLimiter | None = None) -> Iterator[TestClient]:
    """A started TestClient over the platform's app; with `token`, every request carries it."""
    headers = bearer(token) if token is not None else None
    with TestClient(create_app(platform, limiter), headers=headers) as client:
        yield client


def fake_kernel(directory: Path, content: bytes = b"not really a kernel") -> str:
    """A file named like a kernel (`vmlinuz`): enough to create a VM, which is never started."""
    path = directory / "vmlinuz"
    path.write_bytes(content)
    return str(path)

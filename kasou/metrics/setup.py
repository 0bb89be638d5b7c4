"""How the metrics area joins the platform (called from service/platform.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kasou.metrics.service import MetricsHook, MetricsService
from kasou.store.metrics import MetricsStore
from kasou.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from kasou.service.platform import Platform


def prepare(store: SQLiteStore, interval: float) -> MetricsService:
    return MetricsService(MetricsStore(store), interval)


def hook(svc: MetricsService) -> MetricsHook:
    return MetricsHook(svc)


def join(svc: MetricsService, platform: Platform) -> None:
    from kasou.api.routes import metrics as routes

    platform.routers.append(routes.router(svc, platform.vms))
    platform.root_routers.append(routes.root_router(svc))
    platform.background.append((svc.start, svc.stop))

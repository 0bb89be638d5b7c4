"""/api/v1/vms/{name}/stats, /api/v1/metrics/current (for `kasou top`), and /metrics in the
Prometheus text format. /metrics covers every project's VMs, so like any route that
declares no verb it is for administrators (the Unix socket, or an admin token on TCP)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Response

from kasou.api.security import Ctx, require
from kasou.errors import InvalidSpec
from kasou.metrics.prometheus import exposition
from kasou.metrics.service import CurrentView, MetricsService, StatsView
from kasou.service.vms import VMService
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)
_SPAN = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SINCE_S = 400 * 86400
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_since(text: str) -> int:
    """'90s', '15m', '1h', '2d', '1w' (or seconds) -> seconds."""
    m = _SPAN.match(text)
    if not m or int(m.group(1)) <= 0:
        raise InvalidSpec(f"since: {text!r} is not a span such as 15m, 1h or 2d", field="since")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_SINCE_S:
        raise InvalidSpec("since: metrics are kept for 400 days at most", field="since")
    return seconds


def router(svc: MetricsService, vms: VMService) -> APIRouter:
    r = APIRouter()

    @r.get("/vms/{name}/stats")
    def vm_stats(name: str, since: str = Query(default="1h", description="e.g. 15m, 1h, 2d"),
                 ctx: Ctx = READ) -> StatsView:
        seconds = parse_since(since)
        rec = vms.store.get_vm(name, ctx.project)
        return svc.stats(rec.id, rec.name, seconds)

    @r.get("/metrics/current")
    def current(ctx: Ctx = READ) -> CurrentView:
        return svc.current(ctx.project)

    return r


def root_router(svc: MetricsService) -> APIRouter:
    r = APIRouter()

    @r.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        return Response(exposition(svc), media_type=PROMETHEUS_TYPE)

    return r

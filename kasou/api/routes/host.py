"""/api/v1/host and /api/v1/images."""

from __future__ import annotations

from fastapi import APIRouter

from kasou.api.security import authenticated
from kasou.host.probe import HostInfo
from kasou.images.manifest import ImageManifest
from kasou.images.registry import list_images
from kasou.service.vms import VMService


def router(svc: VMService) -> APIRouter:
    r = APIRouter()

    @r.get("/host", dependencies=[authenticated()])
    def host() -> HostInfo:
        return svc.host

    @r.get("/images", dependencies=[authenticated()])
    def images() -> list[ImageManifest]:
        return list_images(svc.images_root)

    return r

"""NetworkHook: the network's part in a VM's life.

    validate    forwards not taken, networks exist, requested MAC/IP free  (nothing made)
    created     each host-network NIC gets its MAC and address, kept until delete
    plan        NICs into the launch plan: user-mode NAT (default) or TAPs
    prepare     networks up, the VM's rules in force, TAPs on the bridge (undone on failure)
    reattached  the daemon restarted: bridge, dnsmasq, rules, TAP on its bridge, limits
    stopped     TAPs and IFBs removed
    deleted     reservations, leases, security group attachments and rules removed
    describe    NICs, forwards, addresses, limits, security groups for `kasou vm show`
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from qemu.qmp import QMPClient

from kasou.engine.plan import LaunchPlan, NicPlan
from kasou.engine.runtime import Runtime
from kasou.network.addressing import tap_name, user_mac
from kasou.network.service import NetworkService
from kasou.network.spec import parse_forward
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.store.base import VMRecord

log = logging.getLogger(__name__)


class NetworkHook(VMHook):
    name = "network"

    def __init__(self, svc: NetworkService) -> None:
        self.svc = svc

    def validate(self, rec: VMRecord) -> None:
        self.svc.check_vm(rec)

    async def created(self, rec: VMRecord, revert: Reverter) -> None:
        if rec.spec.nics:
            revert.add(lambda: self.svc.unreserve(rec))
            self.svc.reserve(rec)

    def plan(self, rec: VMRecord, plan: LaunchPlan) -> LaunchPlan:
        return dataclasses.replace(plan, nics=(*plan.nics, *self.nic_plans(rec, plan)))

    def nic_plans(self, rec: VMRecord, plan: LaunchPlan) -> list[NicPlan]:
        if not rec.spec.nics:
            forwards = tuple(parse_forward(f).hostfwd() for f in rec.spec.forwards)
            return [NicPlan(mac=user_mac(rec.id), kind="user", forwards=forwards)]
        # vhost-net moves the datapath into the host kernel, which needs KVM's ioeventfds;
        # under TCG QEMU keeps it in userspace.
        vhost = plan.accel == "kvm" and os.path.exists("/dev/vhost-net")
        return [NicPlan(mac=n.mac, kind="tap", ifname=tap_name(rec.id, n.idx), vhost=vhost)
                for n in self.svc.db.nics(vm_id=rec.id)]

    async def prepare(self, rec: VMRecord, plan: LaunchPlan, revert: Reverter) -> None:
        await self.svc.prepare_vm(rec, revert)

    async def reattached(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        lost = await self.svc.restore_vm(rec)
        for tap in lost:
            log.warning("VM %s: TAP %s is gone; its NIC stays down until the VM restarts",
                        rec.name, tap)

    async def stopped(self, rec: VMRecord) -> None:
        await self.svc.release_vm(rec)

    async def deleted(self, rec: VMRecord) -> None:
        await self.svc.forget_vm(rec)

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        return self.svc.describe_vm(rec)

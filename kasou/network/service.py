"""NetworkService: the one command set for networks, NICs, security groups and limits.

Host state is always derived from the store: a network is its bridge + dnsmasq; the whole
nftables ruleset is rebuilt from every network, NIC and rule and applied atomically. So
every "ensure" here is idempotent and serves creation, a daemon restart and a host reboot
alike. Host calls (netlink, nft, dnsmasq) are blocking and run in a worker thread; one lock
keeps two changes from interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kasou.errors import Conflict, InvalidSpec, KasouError, NotFound
from kasou.network import dnsmasq, host, nft, tc
from kasou.network.addressing import (
    USER_GUEST_IP,
    allocate_ip,
    check_ip,
    gateway_of,
    ifb_name,
    random_mac,
    tap_name,
    user_mac,
    vm_id_of_tap,
)
from kasou.network.spec import (
    LimitsSpec,
    NetworkSpec,
    RuleSpec,
    SecGroupSpec,
    format_rate,
    parse_forward,
    parse_rate,
)
from kasou.network.usernet import check_free
from kasou.network.views import NetworkView, NicView, RuleView, SecGroupView
from kasou.paths import Layout
from kasou.service.revert import Reverter
from kasou.state import LIVE
from kasou.store.base import DEFAULT_PROJECT, VMRecord, now_iso
from kasou.store.network import NetworkRow, NetworkStore, NicRow, RuleRow, SecGroupRow
from kasou.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate user input, or raise InvalidSpec naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "body"
            msg = "unknown field" if err["type"] == "extra_forbidden" else \
                str(err["msg"]).removeprefix("Value error, ")
            errors.append({"field": where, "message": msg})
        first = errors[0]
        raise InvalidSpec(f"{first['field']}: {first['message']}", field=first["field"],
                          errors=errors) from None


class NetworkService:
    def __init__(self, layout: Layout, store: SQLiteStore, table: str = nft.TABLE) -> None:
        self.layout = layout
        self.vm_store = store
        self.db = NetworkStore(store)
        self.table = table
        self._lock = asyncio.Lock()

    @staticmethod
    async def _host(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def net_dir(self, net: NetworkRow) -> Path:
        return self.layout.root / "networks" / net.id

    def files(self, net: NetworkRow) -> dnsmasq.Files:
        return dnsmasq.Files(self.net_dir(net))

    # -- networks -------------------------------------------------------------------------
    async def create_network(self, data: dict[str, Any],
                             project: str = DEFAULT_PROJECT) -> NetworkView:
        spec = parse(NetworkSpec, data)
        host.require_root()
        async with self._lock:
            row = NetworkRow(id=uuid.uuid4().hex[:12], project=project, name=spec.name,
                             subnet=spec.subnet, gateway=gateway_of(spec.subnet),
                             mode=spec.mode, bridge=spec.name, created_at=now_iso())
            await self._host(self._check_new_network, row)
            async with Reverter() as revert:
                self.db.add_network(row)
                # Undone newest first: the row goes, then the host state, then the rules and
                # forwarding are rebuilt without it.
                revert.add(lambda: self._host(self._apply_firewall))
                revert.add(lambda: self._host(self._update_forwarding))
                revert.add(lambda: self._host(self._remove_network_host, row))
                revert.add(lambda: self.db.delete_network(row.id))
                await self._host(self._ensure_network, row)
                await self._host(self._apply_firewall)
                revert.success()
        return self._network_view(row)

    def _check_new_network(self, row: NetworkRow) -> None:
        subnet = ipaddress.IPv4Network(row.subnet)
        for other in self.db.networks(None):
            if other.bridge == row.bridge:
                raise Conflict(f"name: a network named {row.name!r} already exists",
                               field="name")
            if subnet.overlaps(ipaddress.IPv4Network(other.subnet)):
                raise InvalidSpec(f"subnet: {row.subnet} overlaps network {other.name!r} "
                                  f"({other.subnet})", field="subnet")
        if host.link_exists(row.bridge):
            raise Conflict(f"name: a host interface named {row.bridge!r} already exists; "
                           "a network is a bridge of the same name", field="name")
        for dev, used in host.host_networks():
            if subnet.overlaps(used):
                raise InvalidSpec(f"subnet: {row.subnet} overlaps {used} on host interface "
                                  f"{dev}", field="subnet")

    def list_networks(self, project: str | None = DEFAULT_PROJECT) -> list[NetworkView]:
        return [self._network_view(n) for n in self.db.networks(project)]

    def show_network(self, name: str, project: str = DEFAULT_PROJECT) -> NetworkView:
        return self._network_view(self.db.network(name, project))

    async def delete_network(self, name: str, project: str = DEFAULT_PROJECT) -> None:
        async with self._lock:
            row = self.db.network(name, project)
            users = self._vm_names(n.vm_id for n in self.db.nics(network_id=row.id))
            if users:
                raise Conflict(f"network {name!r} is used by VM(s) {', '.join(users)}: "
                               "delete them first")
            await self._host(self._remove_network_host, row)
            self.db.delete_network(row.id)
            await self._host(self._update_forwarding)
            await self._host(self._apply_firewall)

    def _remove_network_host(self, row: NetworkRow) -> None:
        dnsmasq.stop(self.files(row))
        host.delete_link(row.bridge)
        shutil.rmtree(self.net_dir(row), ignore_errors=True)

    def _ensure_network(self, row: NetworkRow) -> None:
        host.require_root()
        host.ensure_br_netfilter()
        net = ipaddress.IPv4Network(row.subnet)
        host.ensure_bridge(row.bridge, row.gateway, net.prefixlen)
        dnsmasq.ensure(row, self._dhcp_hosts(row), self.files(row))
        self._update_forwarding()

    def _dhcp_hosts(self, row: NetworkRow) -> list[dnsmasq.Host]:
        out = []
        for nic in self.db.nics(network_id=row.id):
            name = ""
            with contextlib.suppress(NotFound):
                name = self.vm_store.get_vm_by_id(nic.vm_id).name
            out.append(dnsmasq.Host(mac=nic.mac, ip=nic.ip, hostname=name))
        return out

    def _forward_marker(self) -> Path:
        return self.layout.root / "networks" / "ip_forward.kasou"

    def _update_forwarding(self) -> None:
        """NAT needs IPv4 forwarding. kasou turns it on for its first NAT network and back
        off after its last one, only if it was kasou that turned it on."""
        marker = self._forward_marker()
        want = any(n.mode == "nat" for n in self.db.networks(None))
        if want and not host.ip_forward():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("kasou turned net.ipv4.ip_forward on\n")
            host.set_ip_forward(True)
        elif not want and marker.exists():
            host.set_ip_forward(False)
            marker.unlink()

    def _network_view(self, row: NetworkRow) -> NetworkView:
        users = self._vm_names(n.vm_id for n in self.db.nics(network_id=row.id))
        return NetworkView(name=row.name, project=row.project, subnet=row.subnet,
                           gateway=row.gateway, mode=row.mode, bridge=row.bridge,
                           created_at=row.created_at, vms=users,
                           bridge_up=Path(f"/sys/class/net/{row.bridge}").exists(),
                           dnsmasq_pid=dnsmasq.running_pid(self.files(row)))

    def _vm_names(self, vm_ids: Any) -> list[str]:
        names = set()
        for vm_id in vm_ids:
            with contextlib.suppress(NotFound):
                names.add(self.vm_store.get_vm_by_id(vm_id).name)
        return sorted(names)

    # -- the firewall ---------------------------------------------------------------------
    def ports(self) -> list[nft.Port]:
        nets = {n.id: n for n in self.db.networks(None)}
        ports = []
        rules: dict[str, tuple[RuleRow, ...]] = {}
        for nic in self.db.nics():
            if nic.vm_id not in rules:
                rules[nic.vm_id] = tuple(self.db.vm_rules(nic.vm_id))
            ports.append(nft.Port(nic=nic, tap=tap_name(nic.vm_id, nic.idx),
                                  network=nets[nic.network_id], rules=rules[nic.vm_id]))
        return ports

    def _apply_firewall(self) -> None:
        nets = self.db.networks(None)
        if nets:
            host.ensure_br_netfilter()
        nft.apply(nft.build(nets, self.ports(), self.table))

    async def apply_firewall(self) -> None:
        async with self._lock:
            await self._host(self._apply_firewall)

    # -- reconcile ------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """After a daemon restart or a host reboot: every network's bridge and dnsmasq, the
        rules, limits of live VMs; TAPs of VMs that are no longer running go away."""
        nets = self.db.networks(None)
        if not nets:
            return
        async with self._lock:
            for row in nets:
                try:
                    await self._host(self._ensure_network, row)
                except KasouError as e:
                    log.error("cannot restore network %s: %s", row.name, e.message)
            try:
                await self._host(self._apply_firewall)
                await self._host(self._sweep_taps)
            except KasouError as e:   # the daemon still serves; the kernel keeps the old rules
                log.error("cannot restore the network rules: %s", e.message)

    def _sweep_taps(self) -> None:
        for name in host.link_names():
            vm_id = vm_id_of_tap(name)
            if vm_id is None:
                continue
            try:
                rec = self.vm_store.get_vm_by_id(vm_id)
            except NotFound:
                continue   # not this data dir's VM: never touch what kasou here did not make
            if rec.state not in LIVE:
                host.delete_link(name)

    # -- VMs: validate, reserve, run, forget ---------------------------------------------------
    def check_vm(self, rec: VMRecord) -> None:
        """Refuse what cannot be honoured, before the VM exists (no host change)."""
        spec = rec.spec
        if spec.forwards and spec.nics:
            raise InvalidSpec("forwards: port forwards belong to user-mode NAT; a VM on a host "
                              "network is reached at its own address", field="forwards")
        if spec.forwards:
            self._check_forwards_unclaimed(rec)
            check_free([parse_forward(f) for f in spec.forwards])
        if spec.nics:
            host.require_root()
        for i, nic in enumerate(spec.nics):
            net = self._network_for(nic.network, rec.project, f"nics.{i}.network")
            if nic.ip:
                check_ip(net.subnet, net.gateway, nic.ip, f"nics.{i}.ip")
                taken = {n.ip for n in self.db.nics(network_id=net.id)}
                if nic.ip in taken:
                    raise Conflict(f"nics.{i}.ip: {nic.ip} is already reserved on network "
                                   f"{net.name!r}", field=f"nics.{i}.ip")
            if nic.mac and self.db.nic_with_mac(nic.mac):
                raise Conflict(f"nics.{i}.mac: {nic.mac} is already used by another NIC",
                               field=f"nics.{i}.mac")
        ips = [(n.network, n.ip) for n in spec.nics if n.ip]
        if len(set(ips)) != len(ips):
            raise InvalidSpec("nics: the same address is given twice", field="nics")

    def _check_forwards_unclaimed(self, rec: VMRecord) -> None:
        """Another VM's forward on the same host port would fail its start (or this one's)."""
        mine = {(f.proto, f.host_addr, f.host_port): f for f in map(parse_forward,
                                                                    rec.spec.forwards)}
        for other in self.vm_store.list_vms(None):
            if other.id == rec.id:
                continue
            for text in other.spec.forwards:
                f = parse_forward(text)
                if (f.proto, f.host_addr, f.host_port) in mine:
                    raise Conflict(f"forwards: host port {f.host_addr}:{f.host_port}/{f.proto} "
                                   f"is already forwarded to VM {other.name!r}",
                                   field="forwards")

    def _network_for(self, name: str, project: str, field: str) -> NetworkRow:
        try:
            return self.db.network(name, project)
        except NotFound:
            raise InvalidSpec(f"{field}: no network named {name!r}", field=field) from None

    def reserve(self, rec: VMRecord) -> None:
        """Give each NIC its MAC and address, kept until the VM is deleted. The store's
        UNIQUE constraints refuse a racing create that took the same ones."""
        for i, nic in enumerate(rec.spec.nics):
            net = self._network_for(nic.network, rec.project, f"nics.{i}.network")
            taken = {n.ip for n in self.db.nics(network_id=net.id)}
            ip = nic.ip or allocate_ip(net.subnet, net.gateway, taken)
            mac = nic.mac or self._free_mac()
            self.db.add_nic(NicRow(id=uuid.uuid4().hex[:12], project=rec.project, vm_id=rec.id,
                                   idx=i, network_id=net.id, mac=mac, ip=ip))

    def _free_mac(self) -> str:
        while True:
            mac = random_mac()
            if self.db.nic_with_mac(mac) is None:
                return mac

    def unreserve(self, rec: VMRecord) -> None:
        self.db.delete_nics(rec.id)

    async def prepare_vm(self, rec: VMRecord, revert: Reverter) -> None:
        """Before QEMU starts: networks up, the VM's rules in force, its TAPs on the bridge."""
        if rec.spec.forwards:
            check_free([parse_forward(f) for f in rec.spec.forwards])
        nics = self.db.nics(vm_id=rec.id)
        if not nics:
            return
        async with self._lock:
            for net_id in sorted({n.network_id for n in nics}):
                await self._host(self._ensure_network, self.db.network_by_id(net_id))
            await self._host(self._apply_firewall)
            for nic in nics:
                revert.add(lambda nic=nic: self._host(self._remove_tap, nic))
                await self._host(self._add_tap, nic)

    def _add_tap(self, nic: NicRow) -> None:
        net = self.db.network_by_id(nic.network_id)
        tap = tap_name(nic.vm_id, nic.idx)
        host.ensure_tap(tap, net.bridge)
        tc.apply(tap, ifb_name(nic.vm_id, nic.idx), nic.rate_in, nic.rate_out)

    @staticmethod
    def _remove_tap(nic: NicRow) -> None:
        host.delete_link(ifb_name(nic.vm_id, nic.idx))
        host.delete_link(tap_name(nic.vm_id, nic.idx))

    async def restore_vm(self, rec: VMRecord) -> list[str]:
        """The daemon found this VM running: re-create what is missing around it. Returns
        the TAPs that are gone for good (their NIC stays down until the VM restarts)."""
        nics = self.db.nics(vm_id=rec.id)
        lost: list[str] = []
        if not nics:
            return lost
        async with self._lock:
            for net_id in sorted({n.network_id for n in nics}):
                await self._host(self._ensure_network, self.db.network_by_id(net_id))
            await self._host(self._apply_firewall)
            for nic in nics:
                net = self.db.network_by_id(nic.network_id)
                tap = tap_name(nic.vm_id, nic.idx)
                if await self._host(host.reattach_tap, tap, net.bridge):
                    await self._host(tc.apply, tap, ifb_name(nic.vm_id, nic.idx), nic.rate_in,
                                     nic.rate_out)
                else:
                    lost.append(tap)
        return lost

    async def release_vm(self, rec: VMRecord) -> None:
        """QEMU exited: its TAPs and IFBs go (the rules and reservations stay)."""
        for nic in self.db.nics(vm_id=rec.id):
            await self._host(self._remove_tap, nic)

    async def forget_vm(self, rec: VMRecord) -> None:
        """The VM is deleted: its reservations, leases, group attachments and rules go."""
        nics = self.db.nics(vm_id=rec.id)
        for nic in nics:
            await self._host(self._remove_tap, nic)
        self.db.detach_all(rec.id)
        if not nics:
            return
        self.db.delete_nics(rec.id)
        async with self._lock:
            for net_id in sorted({n.network_id for n in nics}):
                net = self.db.network_by_id(net_id)
                await self._host(dnsmasq.ensure, net, self._dhcp_hosts(net), self.files(net))
            await self._host(self._apply_firewall)

    def describe_vm(self, rec: VMRecord) -> dict[str, Any]:
        nics = self.nic_views(rec)
        out: dict[str, Any] = {"nics": [n.model_dump(exclude_none=True) for n in nics]}
        if rec.spec.nics:
            out["secgroups"] = [g.name for g in self.db.groups_of(rec.id)]
        return out

    def nic_views(self, rec: VMRecord) -> list[NicView]:
        if not rec.spec.nics:
            forwards = [str(parse_forward(f)) for f in rec.spec.forwards]
            return [NicView(index=0, kind="user", mac=user_mac(rec.id), ip=USER_GUEST_IP,
                            forwards=forwards)]
        nets = {n.id: n for n in self.db.networks(None)}
        return [NicView(index=n.idx, kind="bridge", mac=n.mac, ip=n.ip,
                        network=nets[n.network_id].name if n.network_id in nets else None,
                        tap=tap_name(n.vm_id, n.idx), inbound=format_rate(n.rate_in),
                        outbound=format_rate(n.rate_out))
                for n in self.db.nics(vm_id=rec.id)]

    # -- bandwidth --------------------------------------------------------------------------
    async def set_limits(self, vm: str, index: int, data: dict[str, Any],
                         project: str = DEFAULT_PROJECT) -> NicView:
        limits = parse(LimitsSpec, data)
        rec = self.vm_store.get_vm(vm, project)
        nic = next((n for n in self.db.nics(vm_id=rec.id) if n.idx == index), None)
        if nic is None:
            raise NotFound(f"VM {rec.name!r} has no NIC {index} on a host network (limits "
                           "apply to host-network NICs)")
        rate_in, rate_out = parse_rate(limits.inbound), parse_rate(limits.outbound)
        async with self._lock:
            await self._host(tc.apply, tap_name(rec.id, index), ifb_name(rec.id, index),
                             rate_in, rate_out)
            self.db.set_rates(nic.id, rate_in, rate_out)
        return next(v for v in self.nic_views(rec) if v.index == index)

    # -- security groups ----------------------------------------------------------------------
    async def create_secgroup(self, data: dict[str, Any],
                              project: str = DEFAULT_PROJECT) -> SecGroupView:
        spec = parse(SecGroupSpec, data)
        row = SecGroupRow(id=uuid.uuid4().hex[:12], project=project, name=spec.name,
                          description=spec.description, created_at=now_iso())
        self.db.add_secgroup(row)
        for rule in spec.rules:
            self.db.add_rule(row, _rule_fields(rule))
        return self._secgroup_view(row)

    def list_secgroups(self, project: str | None = DEFAULT_PROJECT) -> list[SecGroupView]:
        return [self._secgroup_view(g) for g in self.db.secgroups(project)]

    def show_secgroup(self, name: str, project: str = DEFAULT_PROJECT) -> SecGroupView:
        return self._secgroup_view(self.db.secgroup(name, project))

    async def delete_secgroup(self, name: str, project: str = DEFAULT_PROJECT) -> None:
        row = self.db.secgroup(name, project)
        users = self._vm_names(self.db.vms_with(row.id))
        if users:
            raise Conflict(f"security group {name!r} is attached to VM(s) {', '.join(users)}: "
                           "detach it first")
        self.db.delete_secgroup(row.id)

    async def add_rule(self, name: str, data: dict[str, Any],
                       project: str = DEFAULT_PROJECT) -> SecGroupView:
        rule = parse(RuleSpec, data)
        row = self.db.secgroup(name, project)
        rule_id = self.db.add_rule(row, _rule_fields(rule))
        try:
            await self._refresh_if_attached(row)
        except BaseException:
            self.db.delete_rule(row.id, rule_id)
            raise
        return self._secgroup_view(row)

    async def delete_rule(self, name: str, rule_id: int,
                          project: str = DEFAULT_PROJECT) -> SecGroupView:
        row = self.db.secgroup(name, project)
        if not self.db.delete_rule(row.id, rule_id):
            raise NotFound(f"security group {name!r} has no rule {rule_id}")
        await self._refresh_if_attached(row)
        return self._secgroup_view(row)

    async def attach(self, name: str, vm: str, project: str = DEFAULT_PROJECT) -> SecGroupView:
        row = self.db.secgroup(name, project)
        rec = self.vm_store.get_vm(vm, project)
        if not rec.spec.nics:
            raise InvalidSpec(f"vm: VM {rec.name!r} has no NIC on a host network; security "
                              "groups filter host-network NICs", field="vm")
        self.db.attach(project, rec.id, row.id)
        try:
            await self.apply_firewall()
        except BaseException:
            self.db.detach(rec.id, row.id)
            raise
        return self._secgroup_view(row)

    async def detach(self, name: str, vm: str, project: str = DEFAULT_PROJECT) -> SecGroupView:
        row = self.db.secgroup(name, project)
        rec = self.vm_store.get_vm(vm, project)
        if not self.db.detach(rec.id, row.id):
            raise NotFound(f"security group {name!r} is not attached to VM {rec.name!r}")
        await self.apply_firewall()
        return self._secgroup_view(row)

    async def _refresh_if_attached(self, row: SecGroupRow) -> None:
        if self.db.vms_with(row.id):
            await self.apply_firewall()

    def _secgroup_view(self, row: SecGroupRow) -> SecGroupView:
        rules = [RuleView(id=r.id, direction=r.direction, protocol=r.protocol,
                          ports=_ports_text(r), cidr=r.cidr, action=r.action,
                          priority=r.priority) for r in self.db.rules(row.id)]
        return SecGroupView(name=row.name, project=row.project, description=row.description,
                            created_at=row.created_at, rules=rules,
                            vms=self._vm_names(self.db.vms_with(row.id)))


def _rule_fields(rule: RuleSpec) -> dict[str, Any]:
    ports = rule.port_range()
    return {"direction": rule.direction, "protocol": rule.protocol,
            "port_min": ports[0] if ports else None, "port_max": ports[1] if ports else None,
            "cidr": rule.cidr, "action": rule.action, "priority": rule.priority}


def _ports_text(rule: RuleRow) -> str | None:
    if rule.port_min is None:
        return None
    if rule.port_max is None or rule.port_max == rule.port_min:
        return str(rule.port_min)
    return f"{rule.port_min}-{rule.port_max}"

"""Tables for networking: networks, NICs on them, security groups, their rules and which
VMs they are attached to.

Shares the SQLiteStore's connection and lock. UNIQUE constraints settle races: one bridge
name per host, one MAC per host, one address per network, one name per project.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kasou.errors import NotFound
from kasou.store.base import DEFAULT_PROJECT, batch_memo
from kasou.store.sqlite import rows_of_vm
from kasou.store.tables import Tables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL,
    subnet TEXT NOT NULL, gateway TEXT NOT NULL, mode TEXT NOT NULL, bridge TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project, name), UNIQUE (bridge));
CREATE TABLE IF NOT EXISTS net_nics (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', vm_id TEXT NOT NULL,
    idx INTEGER NOT NULL, network_id TEXT NOT NULL REFERENCES networks(id),
    mac TEXT NOT NULL, ip TEXT NOT NULL, rate_in INTEGER, rate_out INTEGER,
    UNIQUE (mac), UNIQUE (network_id, ip), UNIQUE (vm_id, idx));
CREATE TABLE IF NOT EXISTS secgroups (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL,
    description TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS secgroup_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL DEFAULT 'default',
    secgroup_id TEXT NOT NULL REFERENCES secgroups(id) ON DELETE CASCADE,
    direction TEXT NOT NULL, protocol TEXT NOT NULL, port_min INTEGER, port_max INTEGER,
    cidr TEXT NOT NULL, action TEXT NOT NULL, priority INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vm_secgroups (
    project TEXT NOT NULL DEFAULT 'default', vm_id TEXT NOT NULL,
    secgroup_id TEXT NOT NULL REFERENCES secgroups(id), position INTEGER NOT NULL,
    PRIMARY KEY (vm_id, secgroup_id));
"""


class NetworkRow(BaseModel):
    id: str
    project: str = DEFAULT_PROJECT
    name: str
    subnet: str
    gateway: str
    mode: str            # "nat" | "isolated"
    bridge: str
    created_at: str


class NicRow(BaseModel):
    id: str
    project: str = DEFAULT_PROJECT
    vm_id: str
    idx: int
    network_id: str
    mac: str
    ip: str
    rate_in: int | None = None      # bits/s to the guest
    rate_out: int | None = None     # bits/s from the guest


class SecGroupRow(BaseModel):
    id: str
    project: str = DEFAULT_PROJECT
    name: str
    description: str
    created_at: str


class RuleRow(BaseModel):
    id: int
    secgroup_id: str
    direction: str
    protocol: str
    port_min: int | None
    port_max: int | None
    cidr: str
    action: str
    priority: int


class NetworkStore(Tables):
    SCHEMA = _SCHEMA

    # -- networks -------------------------------------------------------------------------
    def add_network(self, row: NetworkRow) -> None:
        self._exec("INSERT INTO networks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (row.id, row.project, row.name, row.subnet, row.gateway, row.mode,
                    row.bridge, row.created_at),
                   f"a network named {row.name!r} already exists")

    def networks(self, project: str | None = None) -> list[NetworkRow]:
        return list(batch_memo(("networks", project), lambda: self._networks(project)))

    def _networks(self, project: str | None) -> list[NetworkRow]:
        if project is None:
            rows = self._all("SELECT * FROM networks ORDER BY project, name")
        else:
            rows = self._all("SELECT * FROM networks WHERE project = ? ORDER BY name", (project,))
        return [NetworkRow(**dict(r)) for r in rows]

    def network(self, name: str, project: str = DEFAULT_PROJECT) -> NetworkRow:
        rows = self._all("SELECT * FROM networks WHERE project = ? AND name = ?", (project, name))
        if not rows:
            raise NotFound(f"no network named {name!r} in project {project!r}")
        return NetworkRow(**dict(rows[0]))

    def network_by_id(self, net_id: str) -> NetworkRow:
        rows = self._all("SELECT * FROM networks WHERE id = ?", (net_id,))
        if not rows:
            raise NotFound(f"no network with id {net_id!r}")
        return NetworkRow(**dict(rows[0]))

    def delete_network(self, net_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM networks WHERE id = ?", (net_id,))

    # -- NICs -----------------------------------------------------------------------------
    def add_nic(self, row: NicRow) -> None:
        self._exec("INSERT INTO net_nics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (row.id, row.project, row.vm_id, row.idx, row.network_id, row.mac, row.ip,
                    row.rate_in, row.rate_out),
                   f"MAC {row.mac} or address {row.ip} is already taken")

    def nics(self, *, vm_id: str | None = None, network_id: str | None = None) -> list[NicRow]:
        if vm_id is not None and network_id is None:
            return [NicRow(**dict(r)) for r in rows_of_vm(
                self._db, self._lock, vm_id, "SELECT * FROM net_nics", "vm_id, idx")]
        sql, args = "SELECT * FROM net_nics", []
        where = []
        if vm_id is not None:
            where.append("vm_id = ?")
            args.append(vm_id)
        if network_id is not None:
            where.append("network_id = ?")
            args.append(network_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [NicRow(**dict(r)) for r in self._all(sql + " ORDER BY vm_id, idx", tuple(args))]

    def nic_with_mac(self, mac: str) -> NicRow | None:
        rows = self._all("SELECT * FROM net_nics WHERE mac = ?", (mac,))
        return NicRow(**dict(rows[0])) if rows else None

    def set_rates(self, nic_id: str, rate_in: int | None, rate_out: int | None) -> None:
        with self._lock:
            self._db.execute("UPDATE net_nics SET rate_in = ?, rate_out = ? WHERE id = ?",
                             (rate_in, rate_out, nic_id))

    def delete_nics(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM net_nics WHERE vm_id = ?", (vm_id,))

    # -- security groups ------------------------------------------------------------------
    def add_secgroup(self, row: SecGroupRow) -> None:
        self._exec("INSERT INTO secgroups VALUES (?, ?, ?, ?, ?)",
                   (row.id, row.project, row.name, row.description, row.created_at),
                   f"a security group named {row.name!r} already exists")

    def secgroups(self, project: str | None = None) -> list[SecGroupRow]:
        if project is None:
            rows = self._all("SELECT * FROM secgroups ORDER BY project, name")
        else:
            rows = self._all("SELECT * FROM secgroups WHERE project = ? ORDER BY name",
                             (project,))
        return [SecGroupRow(**dict(r)) for r in rows]

    def secgroup(self, name: str, project: str = DEFAULT_PROJECT) -> SecGroupRow:
        rows = self._all("SELECT * FROM secgroups WHERE project = ? AND name = ?",
                         (project, name))
        if not rows:
            raise NotFound(f"no security group named {name!r} in project {project!r}")
        return SecGroupRow(**dict(rows[0]))

    def delete_secgroup(self, sg_id: str) -> None:
        # Explicit, not ON DELETE CASCADE: foreign keys are only enforced once a
        # connection turns them on.
        with self._lock:
            self._db.execute("DELETE FROM secgroup_rules WHERE secgroup_id = ?", (sg_id,))
            self._db.execute("DELETE FROM vm_secgroups WHERE secgroup_id = ?", (sg_id,))
            self._db.execute("DELETE FROM secgroups WHERE id = ?", (sg_id,))

    def add_rule(self, sg: SecGroupRow, rule: dict[str, Any]) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO secgroup_rules (project, secgroup_id, direction, protocol, "
                "port_min, port_max, cidr, action, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sg.project, sg.id, rule["direction"], rule["protocol"], rule["port_min"],
                 rule["port_max"], rule["cidr"], rule["action"], rule["priority"]))
            return int(cur.lastrowid or 0)

    def rules(self, sg_id: str) -> list[RuleRow]:
        rows = self._all("SELECT * FROM secgroup_rules WHERE secgroup_id = ? "
                         "ORDER BY priority, id", (sg_id,))
        return [RuleRow(**{k: r[k] for k in RuleRow.model_fields}) for r in rows]

    def delete_rule(self, sg_id: str, rule_id: int) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM secgroup_rules WHERE secgroup_id = ? AND id = ?",
                                   (sg_id, rule_id))
            return cur.rowcount > 0

    def attach(self, project: str, vm_id: str, sg_id: str) -> None:
        with self._lock:
            pos = self._db.execute("SELECT COALESCE(MAX(position), 0) + 1 FROM vm_secgroups "
                                   "WHERE vm_id = ?", (vm_id,)).fetchone()[0]
            self._db.execute("INSERT OR IGNORE INTO vm_secgroups VALUES (?, ?, ?, ?)",
                             (project, vm_id, sg_id, pos))

    def detach(self, vm_id: str, sg_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM vm_secgroups WHERE vm_id = ? AND secgroup_id = ?",
                                   (vm_id, sg_id))
            return cur.rowcount > 0

    def detach_all(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM vm_secgroups WHERE vm_id = ?", (vm_id,))

    def groups_of(self, vm_id: str) -> list[SecGroupRow]:
        rows = rows_of_vm(self._db, self._lock, vm_id,
                          "SELECT s.*, v.vm_id FROM secgroups s JOIN vm_secgroups v "
                          "ON v.secgroup_id = s.id", "v.vm_id, v.position", vm_col="v.vm_id")
        return [SecGroupRow(**{k: r[k] for k in SecGroupRow.model_fields}) for r in rows]

    def vms_with(self, sg_id: str) -> list[str]:
        return [r["vm_id"] for r in self._all("SELECT vm_id FROM vm_secgroups WHERE "
                                              "secgroup_id = ?", (sg_id,))]

    def vm_rules(self, vm_id: str) -> list[RuleRow]:
        """Every rule that applies to a VM, in evaluation order (priority, then group
        attach order, then rule order)."""
        rows = self._all(
            "SELECT r.* FROM secgroup_rules r JOIN vm_secgroups v "
            "ON v.secgroup_id = r.secgroup_id WHERE v.vm_id = ? "
            "ORDER BY r.priority, v.position, r.id", (vm_id,))
        return [RuleRow(**{k: r[k] for k in RuleRow.model_fields}) for r in rows]


"""What the network service answers: one view per resource for the API, CLI and web UI."""

from __future__ import annotations

from pydantic import BaseModel


class NetworkView(BaseModel):
    name: str
    project: str
    subnet: str
    gateway: str
    mode: str                  # nat | isolated
    bridge: str
    created_at: str
    vms: list[str] = []        # VMs with a NIC on it
    bridge_up: bool = False    # host state seen now
    dnsmasq_pid: int | None = None


class RuleView(BaseModel):
    id: int
    direction: str
    protocol: str
    ports: str | None = None
    cidr: str
    action: str
    priority: int


class SecGroupView(BaseModel):
    name: str
    project: str
    description: str
    created_at: str
    rules: list[RuleView] = []
    vms: list[str] = []


class NicView(BaseModel):
    index: int
    kind: str                  # user | bridge
    mac: str
    ip: str | None = None
    network: str | None = None
    tap: str | None = None
    forwards: list[str] = []
    inbound: str | None = None     # bandwidth limit to the guest, e.g. "10mbit"
    outbound: str | None = None    # from the guest

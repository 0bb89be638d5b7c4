"""What users ask of the network, validated before anything is touched (pure: no host).

    forward   "[ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]"   (ADDR defaults to 127.0.0.1)
    NicSpec   {"network": NAME, "ip": ADDR?, "mac": MAC?}
    NetworkSpec, RuleSpec, SecGroupSpec, LimitsSpec (rates such as "10mbit")
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kasou.errors import InvalidSpec
from kasou.names import Name
from kasou.paths import check_name

MAX_NICS = 8
# Linux interface names are at most 15 bytes; the bridge is named after the network.
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_FORWARD = re.compile(r"^(?:(?P<addr>[0-9.]+):)?(?P<host>\d+):(?P<guest>\d+)(?:/(?P<proto>\w+))?$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|tbit)?\s*$", re.IGNORECASE)
_RATE_FACTOR = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
MIN_RATE = 8_000          # bits/s: below this tbf's buffer maths stops making sense


@dataclass(frozen=True)
class Forward:
    proto: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int

    def hostfwd(self) -> str:
        """QEMU's hostfwd value: tcp:127.0.0.1:2222-:22."""
        return f"{self.proto}:{self.host_addr}:{self.host_port}-:{self.guest_port}"

    def canonical(self) -> str:
        return f"{self.host_addr}:{self.host_port}:{self.guest_port}/{self.proto}"

    def __str__(self) -> str:
        return f"{self.host_addr}:{self.host_port} -> {self.guest_port}/{self.proto}"


def parse_forward(text: str) -> Forward:
    """'2222:22', '8080:80/tcp', '0.0.0.0:5353:53/udp'; ValueError says what is wrong."""
    m = _FORWARD.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not HOSTPORT:GUESTPORT[/tcp|udp] "
                         "(optionally ADDR:HOSTPORT:GUESTPORT)")
    proto = (m.group("proto") or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise ValueError(f"{text!r}: protocol must be tcp or udp, not {proto!r}")
    addr = m.group("addr") or "127.0.0.1"
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise ValueError(f"{text!r}: {addr!r} is not an IPv4 address") from None
    host, guest = int(m.group("host")), int(m.group("guest"))
    for what, port in (("host", host), ("guest", guest)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: {what} port {port} is not in 1-65535")
    return Forward(proto=proto, host_addr=addr, host_port=host,  # type: ignore[arg-type]
                   guest_port=guest)


def normalize_mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address such as 52:54:00:12:34:56")
    first = int(mac[:2], 16)
    if first & 1:
        raise ValueError(f"{value!r} is a multicast address; a NIC needs a unicast one")
    if mac == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC address")
    return mac


def check_network_name(name: str, field: str = "name") -> str:
    check_name(name, field)
    if not IFNAME.match(name):
        raise InvalidSpec(f"{field} {name!r} is not allowed: a network is a Linux bridge of "
                          "the same name, so use 1-15 letters, digits, '-' or '_'", field=field)
    return name


class NicSpec(BaseModel):
    """One NIC on a host network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str
    ip: str | None = None
    mac: str | None = None

    @field_validator("network")
    @classmethod
    def _network(cls, v: str) -> str:
        try:
            return check_network_name(v, "network")
        except InvalidSpec as e:
            raise ValueError(e.message) from None

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return str(ipaddress.IPv4Address(v.strip()))
        except ValueError:
            raise ValueError(f"{v!r} is not an IPv4 address") from None

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str | None) -> str | None:
        return None if v is None else normalize_mac(v)


def check_forwards(values: list[str]) -> list[str]:
    """Validate and normalise a VM's forwards; refuse the same host port twice."""
    seen: dict[tuple[str, str, int], str] = {}
    out = []
    for text in values:
        fwd = parse_forward(text)
        key = (fwd.proto, fwd.host_addr, fwd.host_port)
        if key in seen:
            raise ValueError(f"{text!r} uses the same host port as {seen[key]!r}")
        seen[key] = text
        out.append(fwd.canonical())
    return out


def check_nics(nics: list[NicSpec]) -> list[NicSpec]:
    if len(nics) > MAX_NICS:
        raise ValueError(f"at most {MAX_NICS} NICs, got {len(nics)}")
    macs = [n.mac for n in nics if n.mac]
    if len(set(macs)) != len(macs):
        raise ValueError("the same MAC is given to two NICs")
    return nics


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    subnet: str
    mode: Literal["nat", "isolated"] = "nat"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_network_name(v)
        except InvalidSpec as e:
            raise ValueError(e.message) from None

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        try:
            net = ipaddress.IPv4Network(v.strip(), strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IPv4 subnet such as 10.10.0.0/24 ({e})") from None
        if not 8 <= net.prefixlen <= 29:
            raise ValueError(f"{v!r}: the prefix must be /8 to /29 (room for the gateway "
                             "and VMs)")
        if net.is_loopback or net.is_multicast or net.is_link_local or net.is_reserved \
                or net.is_unspecified:
            raise ValueError(f"{v!r} is a special-purpose range, not usable for VMs")
        return str(net)

    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)


Direction = Literal["in", "out"]
Protocol = Literal["tcp", "udp", "icmp", "any"]
Action = Literal["allow", "deny"]


class RuleSpec(BaseModel):
    """One firewall rule. `cidr` is the other side: the source of inbound traffic, the
    destination of outbound traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Direction
    protocol: Protocol = "any"
    ports: str | None = None        # "80" or "8000-8100", tcp/udp only
    cidr: str = "0.0.0.0/0"
    action: Action = "allow"
    priority: int = Field(default=1000, ge=1, le=65535)   # lower first; first match wins

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Network(v.strip(), strict=True))
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IPv4 network such as 10.0.0.0/8 ({e})") from None

    @model_validator(mode="after")
    def _ports(self) -> RuleSpec:
        if self.ports is None:
            return self
        if self.protocol not in ("tcp", "udp"):
            raise ValueError("ports: only tcp and udp rules take ports")
        port_range(self.ports)
        return self

    def port_range(self) -> tuple[int, int] | None:
        return None if self.ports is None else port_range(self.ports)


def port_range(text: str) -> tuple[int, int]:
    lo_s, _, hi_s = text.strip().partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s or lo_s)
    except ValueError:
        raise ValueError(f"ports: {text!r} is not a port or a range such as 8000-8100") from None
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"ports: {text!r} must be 1-65535, low to high")
    return lo, hi


class SecGroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    description: str = ""
    rules: list[RuleSpec] = Field(default_factory=list)


    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        if len(v) > 200 or "\n" in v:
            raise ValueError("must be one line of at most 200 characters")
        return v


def parse_rate(value: str | int | None) -> int | None:
    """Bits per second from '10mbit', '1.5gbit', '800kbit' or a plain number of bits/s;
    None, 0, '' or 'none' mean unlimited."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        rate = value
    else:
        if value.strip().lower() in ("", "0", "none", "unlimited"):
            return None
        m = _RATE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a rate such as 10mbit, 500kbit or 1gbit")
        rate = int(float(m.group(1)) * _RATE_FACTOR[(m.group(2) or "bit").lower()])
    if rate == 0:
        return None
    if rate < MIN_RATE:
        raise ValueError(f"{value!r}: the smallest limit is {MIN_RATE} bit/s (8kbit)")
    return rate


def format_rate(bits: int | None) -> str | None:
    if bits is None:
        return None
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= factor and bits % factor == 0:
            return f"{bits // factor}{unit}"
    return f"{bits}bit"


class LimitsSpec(BaseModel):
    """Bandwidth limits of one NIC, as the guest sees them: `inbound` to it, `outbound`
    from it. Unset or "none" is unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbound: str | int | None = None
    outbound: str | int | None = None

    @field_validator("inbound", "outbound")
    @classmethod
    def _rate(cls, v: str | int | None) -> str | int | None:
        parse_rate(v)
        return v

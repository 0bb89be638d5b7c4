"""`kasou vm stats NAME` and `kasou top`: what each VM uses, from the daemon's sampler."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

import typer

from kasou.cli.client import Client
from kasou.cli.common import JsonOpt, call
from kasou.cli.output import print_fields, print_json

SORTS = {
    "cpu": lambda v: -(v["point"].get("cpu_pct") or 0),
    "mem": lambda v: -(v["point"].get("rss_mib") or 0),
    "disk": lambda v: -((v["point"].get("disk_read_bps") or 0)
                        + (v["point"].get("disk_write_bps") or 0)),
    "net": lambda v: -((v["point"].get("net_rx_bps") or 0) + (v["point"].get("net_tx_bps") or 0)),
    "name": lambda v: v["name"],
}
KEYS = {"c": "cpu", "m": "mem", "d": "disk", "n": "net", "a": "name"}
BARS = " ▁▂▃▄▅▆▇█"


def _fmt(v: Any, unit: str = "", digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}{unit}"


def _rate(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if v >= size:
            return f"{v / size:.1f}{unit}/s"
    return f"{v:.0f}B/s"


def sparkline(values: list[float | None], width: int = 40) -> str:
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    top = max(max(vals), 1e-9)
    return "".join(BARS[min(len(BARS) - 1, round(v / top * (len(BARS) - 1)))] for v in vals)


def vm_stats(name: str,
             since: str = typer.Option("1h", help="How far back: 15m, 1h, 2d, 1w..."),
             as_json: bool = JsonOpt) -> None:
    """CPU, memory, disk and network of one VM over a span (sampled every few seconds)."""
    view = call(Client().get, f"/vms/{name}/stats", since=since)
    if as_json:
        print_json(view)
        return
    s, points = view["summary"], view["points"]
    print_fields({
        "vm": view["vm"],
        "span": f"{since} at {view['resolution_s']:g} s resolution, {len(points)} points",
        "cpu": f"avg {_fmt(s['cpu_pct_avg'], '%')}  max {_fmt(s['cpu_pct_max'], '%')}  "
               f"{sparkline([p['cpu_pct'] for p in points])}",
        "rss": f"{_fmt(s['rss_mib_last'], ' MiB')}  "
               f"{sparkline([p['rss_mib'] for p in points])}",
        "balloon": _fmt(s["balloon_mib_last"], " MiB"),
        "guest available": _fmt(s["guest_available_mib_last"], " MiB"),
        "disk": f"read {_rate(s['disk_read_bps_avg'])}  write {_rate(s['disk_write_bps_avg'])}",
        "network": f"rx {_rate(s['net_rx_bps_avg'])}  tx {_rate(s['net_tx_bps_avg'])}",
    })


def _table(view: dict[str, Any], sort: str) -> Any:
    from rich.table import Table

    host = view["host"]
    title = (f"kasou top — host CPU {_fmt(host.get('cpu_pct'), '%')}, memory available "
             f"{_fmt(host.get('mem_available_mib'), ' MiB', 0)} of "
             f"{_fmt(host.get('mem_total_mib'), ' MiB', 0)}, KSM saves "
             f"{_fmt(host.get('ksm_saved_mib'), ' MiB')}, {host.get('vms_running', 0)} VMs — "
             f"sorted by {sort} (c)pu (m)em (d)isk (n)et n(a)me (q)uit")
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for col in ("NAME", "CPU%", "RSS MiB", "BALLOON MiB", "AVAIL MiB", "DISK R", "DISK W",
                "NET RX", "NET TX"):
        table.add_column(col, justify="left" if col == "NAME" else "right")
    for vm in sorted(view["vms"], key=SORTS[sort]):
        p = vm["point"]
        table.add_row(vm["name"], _fmt(p.get("cpu_pct")), _fmt(p.get("rss_mib")),
                      _fmt(p.get("balloon_mib")), _fmt(p.get("guest_available_mib")),
                      _rate(p.get("disk_read_bps")), _rate(p.get("disk_write_bps")),
                      _rate(p.get("net_rx_bps")), _rate(p.get("net_tx_bps")))
    return table


@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single key presses without Enter, when stdin is a terminal."""
    if not os.isatty(0):
        yield False
        return
    old = termios.tcgetattr(0)
    try:
        tty.setcbreak(0)
        yield True
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, old)


def top(sort: str = typer.Option("cpu", help="cpu, mem, disk, net or name."),
        interval: float = typer.Option(2.0, min=0.5, help="Seconds between refreshes."),
        once: bool = typer.Option(False, "--once", help="Print one screen and exit."),
        as_json: bool = JsonOpt) -> None:
    """A live view of every running VM; keys c/m/d/n/a sort, q quits."""
    if sort not in SORTS:
        call(_bad_sort, sort)
    c = Client()
    if once or as_json:
        view = call(c.get, "/metrics/current")
        if as_json:
            print_json(view)
        else:
            from rich.console import Console
            Console().print(_table(view, sort))
        return
    _live(c, sort, interval)


def _bad_sort(sort: str) -> None:
    from kasou.errors import InvalidSpec
    raise InvalidSpec(f"sort: {sort!r} is not one of {', '.join(SORTS)}", field="sort")


def _live(c: Client, sort: str, interval: float) -> None:
    from rich.live import Live

    with _keys() as interactive, Live(auto_refresh=False, screen=False) as live:
        try:
            while True:
                live.update(_table(call(c.get, "/metrics/current"), sort), refresh=True)
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if not interactive:
                        time.sleep(left)
                        break
                    ready, _, _ = select.select([sys.stdin], [], [], left)
                    if not ready:
                        break
                    key = sys.stdin.read(1).lower()
                    if key == "q":
                        return
                    if key in KEYS:
                        sort = KEYS[key]
                        live.update(_table(call(c.get, "/metrics/current"), sort),
                                    refresh=True)
        except KeyboardInterrupt:
            return

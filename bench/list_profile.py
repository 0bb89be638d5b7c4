#!/usr/bin/env python3
"""Where the time of a VM list goes: VMService.list and GET /api/v1/vms over the real
platform (build_platform: every area's hook, real SQLite), with no QEMU and no host changes.

    python bench/list_profile.py                  # in-process timings
    python bench/list_profile.py --profile 30     # plus cProfile (top 30) of list(None)
                                                  # and of one API request, server side
    python bench/list_profile.py --http 10        # plus 10 s of 8 keep-alive clients
                                                  # against a uvicorn server (as bench/tenancy.py)
    python bench/list_profile.py --vms 20 --projects 1 --image tiny --cli 10
                                                  # plus `kasou vm list` (the CLI, over the
                                                  # Unix socket) 10 times, as bench/run.py

VMs: --vms N (default 100) in --projects P (10), made through VMService.create from a
kernel file (or --image tiny); every other one gets its own 16 MiB disk, every third a
port forward. --running K marks K of them live with a fake supervisor whose runtime points
at this process, so each hook's running-VM branch of `describe` runs too (in-process only;
the --http server sees them without a process). The app runs without its lifespan: no
background tasks, no sweeps, no network reconcile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import http.client
import io
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from kasou.api.app import create_app  # noqa: E402
from kasou.engine.runtime import Runtime  # noqa: E402
from kasou.paths import Layout  # noqa: E402
from kasou.service.platform import Platform, Settings, build_platform  # noqa: E402
from kasou.state import VMState  # noqa: E402
from kasou.store.base import now_iso  # noqa: E402
from kasou.tenancy.models import ProjectSpec, Role, UserSpec  # noqa: E402
from kasou.tenancy.ratelimit import RateLimiter  # noqa: E402

CLIENTS = 8


def populate(platform: Platform, home: Path, vms: int, projects: int, running: int,
             image: str | None) -> list[tuple[str, str]]:
    """VMs spread over projects; returns (token, project) of one member per project."""
    ten = platform.tenancy
    kernel = home / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    tokens = []
    for p in range(projects):
        ten.create_project(ProjectSpec(name=f"p{p}"))
        ten.create_user(UserSpec(name=f"u{p}"))
        ten.add_member(f"p{p}", f"u{p}", Role.MEMBER)
        tokens.append((ten.create_token(f"u{p}").token, f"p{p}"))

    async def create_all() -> None:
        for i in range(vms):
            spec: dict[str, Any] = {"name": f"vm{i}", "memory": "128M"}
            spec.update({"image": image} if image else {"kernel": str(kernel)})
            if i % 2 == 0:
                spec["disk_size"] = "16M"
            if i % 3 == 0:
                spec["forwards"] = [f"127.0.0.1:{20000 + i}:22"]
            await platform.vms.create(spec, f"p{i % projects}")

    asyncio.run(create_all())
    svc = platform.vms
    for rec in svc.store.list_vms(None)[:running]:
        run_dir = platform.layout.vm_dir(rec.id)
        rt = Runtime(vm_id=rec.id, pid=os.getpid(), proc_start=0, argv=["qemu"],
                     qmp=str(run_dir / "qmp.sock"), console=str(run_dir / "console.sock"),
                     serial_log=str(run_dir / "serial.log"), accel="tcg", machine="microvm",
                     started_at=now_iso())
        svc._sups[rec.id] = SimpleNamespace(rt=rt)  # type: ignore[assignment]
        svc.store.set_state(rec.id, VMState.RUNNING)
    return tokens


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def fmt(name: str, lat: list[float], elapsed: float | None = None) -> str:
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rate = len(lat) / (elapsed if elapsed else sum(lat))
    return (f"{name:<46} median {1000 * statistics.median(lat):8.2f} ms   "
            f"p99 {1000 * p99:8.2f} ms   {rate:7.1f}/s ({len(lat)})")


# -- cProfile ----------------------------------------------------------------------------
def inline_api(platform: Platform, limiter: RateLimiter) -> Any:
    """Requests on this thread (sync routes and dependencies not handed to a worker
    thread), so cProfile sees the server's side of a request."""
    import fastapi.dependencies.utils as dep_utils
    import fastapi.routing as routing
    import httpx

    async def inline(func: Any, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    routing.run_in_threadpool = inline  # type: ignore[assignment]
    dep_utils.run_in_threadpool = inline  # type: ignore[assignment]
    app = create_app(platform, limiter)

    async def get(headers: dict[str, str]) -> None:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://kasou") as c:
            r = await c.get("/api/v1/vms", headers=headers)
            assert r.status_code == 200, r.text
    return get


def profile(name: str, fn: Any, top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(10):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    print(f"cProfile of {name}:")
    print(out.getvalue())


# -- over HTTP, as bench/tenancy.py ------------------------------------------------------
def serve(data: str, port: int) -> None:
    """The child: the platform on an existing data dir, served like `kasou serve`'s TCP
    listener (lifespan off); port 0: on the data dir's Unix socket instead."""
    import uvicorn

    layout = Layout(Path(data))
    platform = build_platform(layout, Settings(sandbox=False))
    app = create_app(platform, RateLimiter(rate=1e9, burst=1e9))
    where: dict[str, Any] = {"uds": str(layout.socket)} if port == 0 else \
        {"host": "127.0.0.1", "port": port}
    uvicorn.run(app, **where, log_level="warning", access_log=False, lifespan="off")


def _worker(port: int, path: str, headers: dict[str, str], count: int | None, stop: float,
            lat: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < stop:
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or (count is not None and len(json.loads(body)) != count):
            raise SystemExit(f"unexpected answer {resp.status}: {body[:200]!r}")
        lat.append(time.perf_counter() - t)
    conn.close()


def hammer(port: int, path: str, tokens: list[tuple[str, str]], count: int | None,
           seconds: float) -> tuple[list[float], float]:
    lat: list[float] = []
    stop = time.monotonic() + seconds
    threads = []
    for i in range(CLIENTS):
        token, project = tokens[i % len(tokens)]
        headers = {"Authorization": f"Bearer {token}", "X-Kasou-Project": project}
        threads.append(threading.Thread(target=_worker,
                                        args=(port, path, headers, count, stop, lat)))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.monotonic() - t0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(port: int, pid: int, name: str, path: str, tokens: list[tuple[str, str]],
             count: int | None, seconds: float) -> None:
    """Latency and rate as the clients see them, and the server's CPU time per request:
    on a shared, busy machine the latter moves far less with the neighbours' load."""
    c0 = cpu_seconds(pid)
    lat, elapsed = hammer(port, path, tokens, count, seconds)
    cpu = cpu_seconds(pid) - c0
    print(f"{fmt(name, lat, elapsed)}   server CPU {1000 * cpu / len(lat):.2f} ms/request")


def over_http(layout: Layout, tokens: list[tuple[str, str]], per_project: int,
              seconds: float) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(layout.root),
                              str(port)], start_new_session=True)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        hammer(port, "/api/v1/vms", tokens, per_project, 1.0)   # warm up
        measured(port, child.pid, f"HTTP GET /api/v1/vms, {CLIENTS} clients, {per_project} VMs",
                 "/api/v1/vms", tokens, per_project, seconds)
        measured(port, child.pid, f"HTTP GET /healthz, {CLIENTS} clients (floor)",
                 "/healthz", tokens, None, seconds)
    finally:
        child.terminate()
        child.wait(15)


def cli_list(layout: Layout, runs: int) -> None:
    """`kasou vm list` end to end (CLI start-up, Unix socket, the list, the table)."""
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(layout.root), "0"],
                             start_new_session=True)
    exe = Path(sys.executable).with_name("kasou")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "kasou"]
    env = {**os.environ, "KASOU_HOME": str(layout.root), "KASOU_PROJECT": "p0"}
    try:
        for _ in range(300):
            if layout.socket.exists():
                break
            time.sleep(0.1)
        bare = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), runs)
        run = [*cli, "vm", "list"]
        subprocess.run(run, env=env, check=True, capture_output=True)    # warm up
        lat = timed(lambda: subprocess.run(run, env=env, check=True, capture_output=True),
                    runs)
        print(fmt("`kasou vm list` (CLI, Unix socket)", lat))
        print(fmt("  of which Python start-up (python -c pass)", bare))
    finally:
        child.terminate()
        child.wait(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--projects", type=int, default=10)
    ap.add_argument("--running", type=int, default=20)
    ap.add_argument("--image", default=None, help="e.g. tiny (must be built already)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="print cProfile's top TOP functions of list(None) and one request")
    ap.add_argument("--http", type=float, default=0, metavar="SECONDS",
                    help="also load a uvicorn server with 8 clients for SECONDS")
    ap.add_argument("--cli", type=int, default=0, metavar="RUNS",
                    help="also time `kasou vm list` RUNS times (the VMs of project p0)")
    ap.add_argument("--serve", nargs=2, metavar=("DATA", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return

    home = Path(tempfile.mkdtemp(prefix="kasou-list-profile-"))
    try:
        layout = Layout(home / "data")
        platform = build_platform(layout, Settings(sandbox=False))
        t = time.perf_counter()
        tokens = populate(platform, home, args.vms, args.projects, args.running, args.image)
        print(f"made {args.vms} VMs in {args.projects} projects ({args.running} marked "
              f"running) in {time.perf_counter() - t:.1f} s")
        svc = platform.vms
        per_project = len(svc.store.list_vms(tokens[0][1]))
        limiter = RateLimiter(rate=1e9, burst=1e9)
        client = TestClient(create_app(platform, limiter))   # no lifespan: nothing started
        token, project = tokens[0]
        headers = {"Authorization": f"Bearer {token}", "X-Kasou-Project": project}
        admin = platform.tenancy
        admin.create_user(UserSpec(name="root", admin=True))
        root_headers = {"Authorization": f"Bearer {admin.create_token('root').token}"}

        def api_project() -> None:
            r = client.get("/api/v1/vms", headers=headers)
            assert r.status_code == 200 and len(r.json()) == per_project, r.text

        def api_all() -> None:
            r = client.get("/api/v1/vms", params={"all_projects": "true"}, headers=root_headers)
            assert r.status_code == 200 and len(r.json()) == args.vms, r.text

        for f in (api_project, api_all):
            f()     # warm up (token verification is cached after the first)
        print(fmt(f"VMService.list(None), {args.vms} VMs",
                  timed(lambda: svc.list(None), args.runs)))
        print(fmt(f"VMService.list({project!r}), {per_project} VMs",
                  timed(lambda: svc.list(project), args.runs)))
        print(fmt("VMService.show (one VM)", timed(lambda: svc.show("vm0", "p0"), args.runs)))
        print(fmt(f"TestClient GET /api/v1/vms, {per_project} VMs",
                  timed(api_project, args.runs)))
        print(fmt(f"TestClient GET /api/v1/vms?all_projects, {args.vms} VMs",
                  timed(api_all, args.runs)))

        if args.profile:
            profile("10 x VMService.list(None)", lambda: svc.list(None), args.profile)
            app_client = inline_api(platform, limiter)
            asyncio.run(app_client(headers))     # warm up: FastAPI builds routes lazily
            profile(f"10 x GET /api/v1/vms (project {project}), server side in-thread",
                    lambda: asyncio.run(app_client(headers)), args.profile)
        platform.store.close()
        if args.http:
            over_http(layout, tokens, per_project, args.http)
        if args.cli:
            cli_list(layout, args.cli)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

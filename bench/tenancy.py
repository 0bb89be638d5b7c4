"""API throughput with auth on: GET /api/v1/vms, 100 VMs in 10 projects, each caller a
project member with its own token, over TCP (the path tokens take)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DURATION = float(os.environ.get("BENCH_API_SECONDS", "10"))
CLIENTS = 8


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "kasou", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def _worker(port: int, token: str, project: str, stop: float, lat: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "X-Kasou-Project": project}
    while time.monotonic() < stop:
        t = time.perf_counter()
        conn.request("GET", "/api/v1/vms", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or len(json.loads(body)) != 10:
            raise SystemExit(f"unexpected answer {resp.status}: {body[:200]!r}")
        lat.append(time.perf_counter() - t)
    conn.close()


def run() -> str:
    home = Path(tempfile.mkdtemp(prefix="kasou-bench-api-"))
    env = {**os.environ, "KASOU_HOME": str(home)}
    port = _port()
    # The per-token rate limit is lifted so the figure is the server's, not the limiter's.
    daemon = subprocess.Popen([sys.executable, "-m", "kasou", "serve", "--listen",
                               f"tcp:127.0.0.1:{port}", "--rate", "1000000", "--burst",
                               "1000000"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(300):
            if (home / "api.token").exists():
                break
            time.sleep(0.1)
        kernel = home / "vmlinuz"
        kernel.write_bytes(b"x")
        tokens = []
        for p in range(10):
            proj, user = f"p{p}", f"u{p}"
            _cli(env, "project", "create", proj)
            _cli(env, "user", "create", user)
            _cli(env, "project", "add-member", proj, user, "--role", "member")
            tokens.append((_cli(env, "token", "create", user).strip(), proj))
            for v in range(10):
                _cli(env, "--project", proj, "vm", "create", f"vm{v}", "--kernel", str(kernel))
        lat: list[float] = []
        stop = time.monotonic() + DURATION
        threads = [threading.Thread(target=_worker, args=(port, *tokens[i % 10], stop, lat))
                   for i in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        shutil.rmtree(home, ignore_errors=True)
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1] * 1000
    return "\n".join([
        "## API with auth (GET /api/v1/vms)", "",
        f"100 VMs in 10 projects; {CLIENTS} keep-alive clients over TCP on loopback, each a "
        f"member with its own token (scrypt-hashed; verified once, then cached); {DURATION:.0f} s; "
        "rate limit lifted for the run. Each answer is the caller's project's 10 VMs.", "",
        "| requests/s | median (ms) | p99 (ms) | requests |", "|---|---|---|---|",
        f"| {len(lat) / elapsed:.0f} | {statistics.median(lat) * 1000:.1f} | {p99:.1f} | "
        f"{len(lat)} |", ""])


if __name__ == "__main__":
    print(run())

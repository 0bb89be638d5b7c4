"""A small HTTP client for the daemon's API, over the Unix socket or TCP.

Built on the standard library's http.client rather than httpx: httpx costs ≈ 210 ms of
imports on every CLI call, a tenth of a tiny guest's boot, and the CLI needs only JSON
requests to one server.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit

from kasou.paths import Layout


class DaemonUnavailable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", f"HTTP {status}"))
        self.status = status
        self.body = body


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("kasou", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Client:
    """KASOU_URL=http(s)://HOST:PORT (+ KASOU_TOKEN, KASOU_CA) selects TCP; else the data
    dir's socket. KASOU_PROJECT picks the project."""

    def __init__(self, layout: Layout | None = None, timeout: float = 300.0) -> None:
        self.layout = layout or Layout.default()
        self.url = os.environ.get("KASOU_URL")
        self.token = os.environ.get("KASOU_TOKEN")
        self.project = os.environ.get("KASOU_PROJECT")
        self.timeout = timeout

    def where(self) -> str:
        return self.url or str(self.layout.socket)

    def _conn(self) -> http.client.HTTPConnection:
        if self.url:
            u = urlsplit(self.url)
            if u.scheme == "https":
                import ssl

                ctx = ssl.create_default_context(cafile=os.environ.get("KASOU_CA"))
                return http.client.HTTPSConnection(u.hostname or "localhost", u.port,
                                                   timeout=self.timeout, context=ctx)
            return http.client.HTTPConnection(u.hostname or "localhost", u.port,
                                              timeout=self.timeout)
        return _UnixConnection(str(self.layout.socket), self.timeout)

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        if params:
            path += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.project:
            headers["X-Kasou-Project"] = self.project
        conn = self._conn()
        try:
            conn.request(method, "/api/v1" + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DaemonUnavailable(
                f"the kasou daemon is not running ({self.where()}): start it with "
                "`kasou daemon start`") from e
        except OSError as e:
            raise DaemonUnavailable(f"cannot reach the kasou daemon at {self.where()}: {e}") from e
        finally:
            conn.close()
        payload = json.loads(raw) if raw else None
        if resp.status >= 400:
            raise ApiError(resp.status, payload if isinstance(payload, dict) else {})
        return payload

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("POST", path, body=body, params=params or None)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

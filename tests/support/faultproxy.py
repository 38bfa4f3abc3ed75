"""A small reverse proxy in front of the real docker-registry that can misbehave on cue.

The GitLab emulator injects faults on GitLab's API and /jwt/auth; the registry itself is a
real docker-registry that cannot be told to fail. `FaultProxy` sits in front of it on a free
loopback port (point REGISTRY_URL at `proxy.url`) and forwards every request unchanged:
method, path and query, headers (Authorization included) and body. The answer comes back
streamed, with its status and headers (WWW-Authenticate, Docker-Content-Digest, Location,
Link...). Absolute Locations and Links that point at the registry are rewritten to point
at the proxy, so a client following them stays behind it. The token realm in
WWW-Authenticate is left alone: tokens still come from the emulator's /jwt/auth.

`inject_fault` works like the emulator's: the next `times` requests matching a method
('*' = any) and a path regex (re.search on the path, without the query) answer `status`
with `headers` after sleeping `delay`; times=-1 until `clear_faults()`. status=None with a
delay is a slow registry: it hangs, then forwards the request (which is then done, late).
drop=True closes the connection without answering (nothing is forwarded); drop="after"
forwards the request, then closes the connection before the answer, so the client never
learns that it worked.

`requests` is the log of (method, path, status) in the order the proxy answered (logged as
the answer starts, so a client never has an answer the log does not show yet); a dropped
request has status 0. `entries` has the same with the arrival time and which fault, if any,
was served; `faults_served` lists only those.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

from tests.support import faults
from tests.support.faults import Fault

# Not forwarded in either direction: they describe one hop, or requests/urllib3 set them.
HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                 "upgrade", "proxy-authorization", "proxy-authenticate", "content-length"})
UPSTREAM_TIMEOUT = (5, 30)  # (connect, read) for every forwarded request
STATUS_CODES = {429: "TOOMANYREQUESTS", 500: "UNKNOWN", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                504: "UNAVAILABLE"}


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    status: int  # 0: the connection was dropped
    arrived: float  # time.monotonic() when the request arrived
    fault: str | None  # Fault.describe() of the fault served, if any


class _Dropped(Exception):
    """The handler closed the connection on purpose."""


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1"):
        self.upstream = upstream.rstrip("/")
        scheme, netloc = urlsplit(self.upstream)[:2]
        self._upstream_origin = f"{scheme}://{netloc}"
        self.lock = threading.Lock()
        self._faults: list[Fault] = []
        self._entries: list[Entry] = []
        self._stopping = threading.Event()
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._server = ThreadingHTTPServer((host, 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # stop() does not wait for hung handlers
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    # -- test controls ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def inject_fault(self, method: str, path_regex: str, status: int | None = None, times: int = 1,
                     headers: dict | None = None, delay: float = 0.0, drop: bool | str = False) -> None:
        if status is None and not delay and not drop:
            raise ValueError("a fault needs a status, a delay or drop")
        with self.lock:
            self._faults.append(Fault(method.upper(), re.compile(path_regex), status, times,
                                      dict(headers or {}), delay, drop))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    @property
    def entries(self) -> list[Entry]:
        with self.lock:
            return list(self._entries)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return [(e.method, e.path, e.status) for e in self.entries]

    @property
    def faults_served(self) -> list[tuple[str, str, str]]:
        return [(e.method, e.path, e.fault) for e in self.entries if e.fault]

    def count(self, method: str | None = None, path_regex: str | None = None) -> int:
        return sum(1 for m, p, _ in self.requests
                   if (method is None or m == method) and (path_regex is None or re.search(path_regex, p)))

    def reset(self) -> None:
        with self.lock:
            self._faults.clear()
            self._entries.clear()

    def stop(self) -> None:
        self._stopping.set()  # hung handlers wake up and give up
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._session.close()

    # -- plumbing ---------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            return faults.take(self._faults, method, path)

    def _log(self, method: str, path: str, status: int, arrived: float, fault: Fault | None) -> None:
        with self.lock:
            self._entries.append(Entry(method, path, status, arrived, fault.describe() if fault else None))

    def _rewrite(self, value: str) -> str:
        """An absolute URL on the registry, pointed at the proxy instead."""
        return value.replace(self._upstream_origin, self.url)

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

            def log_message(self, *args):  # the proxy keeps its own log
                pass

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    data = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(data)
                        data += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _settle(self, status: int) -> None:
                """Log the answer before the client can have it: once a client has its answer, the
                log already shows it (a test reading the log right after is never early)."""
                self._answered = status
                if not self._logged:
                    self._logged = True
                    proxy._log(self.command, self._path, status, self._arrived, self._fault)

            def _drop(self) -> None:
                self._settle(0)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                raise _Dropped()

            def _answer_fault(self, fault: Fault) -> None:
                code = STATUS_CODES.get(fault.status, "UNKNOWN")
                body = json.dumps({"errors": [{"code": code, "message": f"injected fault: HTTP {fault.status}",
                                               "detail": None}]}).encode()
                self._settle(fault.status)
                self.send_response_only(fault.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for k, v in fault.headers.items():
                    self.send_header(k, str(v))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes, drop_after: bool) -> None:
                sent = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                up = proxy._session.request(self.command, proxy.upstream + self.path, headers=sent,
                                            data=body if body or self.command in ("PUT", "POST", "PATCH") else None,
                                            allow_redirects=False, stream=True, timeout=UPSTREAM_TIMEOUT)
                try:
                    if drop_after:
                        _ = up.content  # the registry did the work; the client never hears of it
                        self._drop()
                    self._settle(up.status_code)
                    self.send_response_only(up.status_code, up.reason)
                    length = up.headers.get("Content-Length")
                    no_body = self.command == "HEAD" or up.status_code in (204, 304) or up.status_code < 200
                    for k, v in up.raw.headers.items():
                        if k.lower() in HOP:
                            continue
                        if k.lower() in ("location", "link", "content-location"):
                            v = proxy._rewrite(v)
                        self.send_header(k, v)
                    chunked = length is None and not no_body
                    if length is not None:
                        self.send_header("Content-Length", length)
                    elif chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    elif no_body:
                        self.send_header("Content-Length", "0")
                    self.end_headers()
                    if not no_body:
                        # Raw bytes as the registry sent them (Content-Encoding stays true).
                        for chunk in up.raw.stream(64 * 1024, decode_content=False):
                            if not chunk:
                                continue
                            if chunked:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            else:
                                self.wfile.write(chunk)
                        if chunked:
                            self.wfile.write(b"0\r\n\r\n")
                finally:
                    up.close()

            def _handle(self) -> None:
                self._arrived = time.monotonic()
                self._path = self.path.split("?", 1)[0]
                self._answered, self._fault, self._logged = 0, None, False  # 0: dropped
                try:
                    body = self._read_body()
                    fault = proxy._take_fault(self.command, self._path)
                    self._fault = fault
                    if fault is not None:
                        if fault.delay and proxy._stopping.wait(fault.delay):
                            self._drop()  # stopping: give up
                        if fault.drop is True:
                            self._drop()
                        if fault.status is not None and not fault.drop:
                            self._answer_fault(fault)
                            return
                    self._forward(body, drop_after=bool(fault and fault.drop == "after"))
                except _Dropped:
                    self._answered = 0
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    # The client gave up (a hang past its timeout): what it would have got is logged.
                    self.close_connection = True
                except requests.RequestException as exc:
                    self._settle(502)
                    self.close_connection = True
                    try:
                        msg = f"proxy: upstream failed: {type(exc).__name__}".encode()
                        self.send_response_only(502)
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                    except OSError:
                        pass
                finally:
                    self._settle(self._answered)  # a client that gave up: what it would have got

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _handle

        return Handler

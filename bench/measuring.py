"""gunicorn servers and a lean HTTP load generator for the benchmarks on loopback.

The same client drives every endpoint measured: one connection per client thread, kept alive
when the server keeps it (gthread), else one connection per request (sync workers close it
after every response). Requests are written as bytes and answers read by Content-Length, so the
client spends little of the machine's CPU that the servers need.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Client", "Figures", "Server", "ServerConfig", "gunicorn", "load", "parse_servers"]

WARM_UP_SECONDS = 0.5


@dataclass
class Figures:
    label: str
    count: int
    seconds: float
    latencies_ns: list[int]
    failures: int = 0
    cpu_seconds: float | None = None  # the server's CPU time (all its processes) while timed
    window: tuple[float, float] | None = None  # epoch seconds when the timing began and ended

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in microseconds (nearest rank)."""
        ordered = sorted(self.latencies_ns)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] / 1000

    def row(self, unit: str) -> str:
        line = (f"  {self.label:<48} {self.rate:>9,.0f} {unit:<5}"
                f" p50 {self.percentile(50):>8,.0f} µs   p99 {self.percentile(99):>8,.0f} µs"
                f"   (n={self.count:,})")
        if self.cpu_seconds is not None and self.count:
            line += f"   server CPU {self.cpu_per_request:,.0f} µs/req"
        if self.failures:
            line += f"   {self.failures} FAILED"
        return line

    @property
    def cpu_per_request(self) -> float:
        """Server CPU time per request in microseconds (steadier than rates on a busy machine)."""
        return self.cpu_seconds * 1e6 / self.count if self.cpu_seconds and self.count else 0.0


@dataclass(frozen=True)
class ServerConfig:
    """How gunicorn runs: `sync` workers, or `gthread` workers with `threads` threads each."""

    worker_class: str
    workers: int
    threads: int = 1

    @property
    def keep_alive(self) -> bool:
        return self.worker_class != "sync"  # sync workers close every connection

    @property
    def name(self) -> str:
        if self.worker_class == "sync":
            return f"sync:{self.workers}"
        return f"gthread:{self.workers}x{self.threads}"

    def describe(self) -> str:
        if self.worker_class == "sync":
            return f"{self.workers} sync workers, a new connection per request"
        return (f"{self.workers} gthread workers x {self.threads} threads, "
                f"keep-alive connections")

    def arguments(self) -> list[str]:
        args = ["--workers", str(self.workers), "--worker-class", self.worker_class]
        if self.worker_class == "gthread":
            args += ["--threads", str(self.threads), "--keep-alive", "5"]
        return args


def parse_servers(text: str) -> list[ServerConfig]:
    """'sync:2,gthread:2x4' -> the configurations, in that order."""
    configs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, size = part.partition(":")
        try:
            if kind == "sync":
                configs.append(ServerConfig("sync", int(size or 2)))
            elif kind == "gthread":
                workers, _, threads = (size or "2x4").partition("x")
                configs.append(ServerConfig("gthread", int(workers), int(threads or 4)))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"unknown server configuration {part!r}: use sync:W or "
                             "gthread:WxT") from None
        if configs[-1].workers < 1 or configs[-1].threads < 1:
            raise ValueError(f"{part!r}: workers and threads must be at least 1")
    if not configs:
        raise ValueError("no server configuration given")
    return configs


# -- servers --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_control_socket() -> list[str]:
    """gunicorn >= 24 opens a control socket at one fixed path; two servers would share it."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(
        s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` and its child processes (gunicorn's workers), from
    /proc; 0 where there is none."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


@dataclass(frozen=True)
class Server:
    port: int
    pid: int

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)


@contextmanager
def gunicorn(app: str, log_path: Path, *, cwd: Path, env: dict, config: ServerConfig
             ) -> Iterator[Server]:
    """A gunicorn server on a free loopback port for the duration of the block."""
    port = _free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *config.arguments(), "--bind",
             f"127.0.0.1:{port}", "--graceful-timeout", "5", *_no_control_socket(), app],
            cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start in 30 s") from None
                time.sleep(0.1)
        yield Server(port, process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        text = log_path.read_text(errors="replace")
        if "Traceback" in text or "database is locked" in text:
            print(f"  !! the server log {log_path.name} shows errors:\n{text}", file=sys.stderr)


# -- the client -----------------------------------------------------------------------------------

class Client:
    """One client connection to 127.0.0.1:`port`, reopened whenever the server closes it."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def request(self, method: str, path: str, body=None, headers: dict | None = None
                ) -> tuple[int, bytes]:
        payload = b"" if body is None else (
            body if isinstance(body, bytes) else json.dumps(body).encode())
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        message = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._sock.sendall(message)
            return self._response()
        except BaseException:
            self.close()
            raise

    def _read(self) -> bytes:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        return chunk

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._read()
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length, close = None, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        if length is None:  # no length: the body runs to the end of the connection
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self.close()
            return status, rest
        while len(rest) < length:
            rest += self._read()
        body, self._buffer = rest[:length], rest[length:]
        if close:
            self.close()
        return status, body


# -- load -----------------------------------------------------------------------------------------

def load(label: str, server: Server, threads: int, seconds: float,
         request: Callable[[int, int], tuple[str, str, object, dict]],
         ok: Callable[[int, bytes], bool]) -> Figures:
    """`threads` clients each sending `request(client, i)` -> (method, path, body, headers)
    back to back on a connection of its own; a warm-up, then `seconds` timed."""
    latencies: list[list[int]] = [[] for _ in range(threads)]
    failures = [0] * threads
    timed = threading.Event()
    stop = threading.Event()
    problems: list[BaseException] = []

    def client(n: int) -> None:
        connection = Client(server.port)
        i = 0
        try:
            while not stop.is_set():
                method, path, body, headers = request(n, i)
                i += 1
                t0 = time.perf_counter_ns()
                status, raw = connection.request(method, path, body, headers)
                elapsed = time.perf_counter_ns() - t0
                if timed.is_set() and not stop.is_set():
                    latencies[n].append(elapsed)
                    failures[n] += not ok(status, raw)
                elif not ok(status, raw):
                    raise RuntimeError(f"warm-up request failed: {status} {raw[:300]!r}")
        except Exception as error:  # reported by the caller
            problems.append(error)
            stop.set()
        finally:
            connection.close()

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(WARM_UP_SECONDS)
    timed.set()
    start, cpu, began = time.perf_counter(), server.cpu_seconds(), time.time()
    stop.wait(seconds)
    stop.set()
    elapsed, cpu, ended = time.perf_counter() - start, server.cpu_seconds() - cpu, time.time()
    for worker in workers:
        worker.join(timeout=70)
    if problems:
        raise RuntimeError(f"{label}: {problems[0]!r}") from problems[0]
    merged = [x for part in latencies for x in part]
    return Figures(label, len(merged), elapsed, merged, sum(failures), cpu, (began, ended))

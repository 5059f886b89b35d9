"""Callback delivery benchmark: prints figures, asserts nothing about time.

Usage (from the repository root, with the project's environment):

    python bench/delivery.py [--events N]

Writes N events (creates of vehicles with a callback to a loopback receiver, default 500) in
process, then runs one dispatcher until every callback has arrived, and prints deliveries per
second and the latency from each event's commit to its arrival at the receiver (p50, p99; the
dispatcher starts right after the last commit, so this is a backlog-drain figure). A second pass
writes events one at a time while a dispatcher thread runs, for the commit-to-delivery latency of
a quiet system.
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webapp import create_app  # noqa: E402


class _Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        self.arrivals: dict[str, float] = {}
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.arrivals.setdefault(self.headers["webhook-id"], time.time())
        del body
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def _percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def _write(client, n: int, url: str, prefix: str) -> dict[str, float]:
    committed = {}
    for i in range(n):
        reply = client.post("/core/api/v2/participants/vehicles", json={
            "uniqueCode": f"{prefix}-{i}", "callback": {"url": url},
            "properties": {"registrationNumber": "KA01AB1234", "payloadCapacityKg": 900}},
            headers={"X-COREOS-REQUEST-ID": f"{prefix}-{i}", "X-COREOS-TID": "bench",
                     "X-COREOS-ACCESS": "bench-token",
                     "X-COREOS-CALLBACK-SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
        committed[reply.json["data"]["event"]["id"]] = time.time()
    return committed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="delivery-bench-"))
    receiver = _Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    try:
        app = create_app({"PARTICIPANTS_DATABASE": str(folder / "p.db"),
                          "PARTICIPANTS_MACHINES": str(ROOT / "machines"),
                          "PARTICIPANTS_ACCESS_TOKENS": json.dumps({"bench-token": "bench"}),
                          "PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS": "1",
                          "PARTICIPANTS_DISPATCHER": "off"})  # the dispatchers below only
        state = app.extensions["participants"]
        client = app.test_client()

        committed = _write(client, args.events, url, "backlog")
        dispatcher = state.dispatcher()
        started = time.time()
        while len(receiver.arrivals) < len(committed):
            if not dispatcher.run_once():
                time.sleep(0.01)
        elapsed = time.time() - started
        latency = [(receiver.arrivals[k] - committed[k]) * 1000 for k in committed]
        print(f"Backlog of {len(committed)} signed callbacks, one dispatcher, loopback receiver:")
        print(f"  {len(committed) / elapsed:,.0f} deliveries/s; commit-to-arrival p50 "
              f"{_percentile(latency, 0.5):,.1f} ms, p99 {_percentile(latency, 0.99):,.1f} ms")

        receiver.arrivals.clear()
        stop = threading.Event()
        thread = threading.Thread(target=state.dispatcher().run, args=(stop, 0.01))
        thread.start()
        quiet = {}
        for i in range(100):
            quiet.update(_write(client, 1, url, f"quiet{i}"))
            time.sleep(0.02)
        while len(receiver.arrivals) < len(quiet):
            time.sleep(0.01)
        stop.set()
        thread.join()
        latency = [(receiver.arrivals[k] - quiet[k]) * 1000 for k in quiet]
        print("One event at a time, dispatcher thread polling every 10 ms when idle:")
        print(f"  commit-to-arrival p50 {_percentile(latency, 0.5):,.1f} ms, "
              f"p99 {_percentile(latency, 0.99):,.1f} ms (n={len(latency)})")
        state.storage.close()
    finally:
        receiver.shutdown()
        receiver.server_close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

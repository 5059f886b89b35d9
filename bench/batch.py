"""Batch benchmark: prints figures, asserts nothing about time.

Usage (from the repository root, with the project's environment):

    python bench/batch.py [--items N] [--rate R] [--seconds S] [--dir PATH]

In process, on the shipped machines/ and a fresh SQLite file (synchronous=FULL):

1. Baseline: single combined updates (`Service.execute` of attributes plus a stateTransition on
   one vehicle, alternating E-104 "assigned to a trip" and E-107 "trip closed", as in
   bench/benchmark.py), R per second (default 100; 0 = back to back) for S seconds (default 5)
   with nothing else running: p50, p99 and max latency.
2. Accepting a batch of N vehicle creates (default 10,000): the one transaction that stores the
   batch, its items and the idempotency answer, i.e. how long acceptance holds the write lock.
3. The batch applied by one BatchWorker with nothing else running: items/s.
4. Another such batch applied by a BatchWorker thread while another thread of the same process
   sends the single updates (the shape of `make run`, whose dispatcher is a thread): items/s of
   the batch, and p50/p99/max of the single updates meanwhile, against the baseline.
5. The same with the single updates sent from another process (the production shape: a
   dispatcher process beside gunicorn workers).

Latency is measured from each update's call to its return; with a rate, calls are paced from a
fixed schedule and one that is late starts at once. Every batch item and every update must
succeed, or the run says so.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.jobs.batchworker import BatchWorker  # noqa: E402
from engine.loading.registry import load_registry  # noqa: E402
from engine.model.commands import build  # noqa: E402
from engine.model.conventions import now_ms  # noqa: E402
from engine.service import batches, idempotency  # noqa: E402
from engine.service.batches import Item  # noqa: E402
from engine.service.participants import Service, participant_id_for  # noqa: E402
from engine.storage.sqlite import SqliteStorage  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from benchmark import TO_AVAILABLE, trip_update  # noqa: E402  (one scenario for both benchmarks)

MACHINES = ROOT / "machines"
TENANT = "bench"
VEHICLE = {
    "vin": "1HGCM82633A004352", "payloadCapacityKg": 9000, "gpsDeviceImei": "356938035643809",
    "insuranceValidUntil": "2030-01-31", "inspectionPassed": True,
    "documents": [{"docType": "registrationCertificate", "docNumber": "RC-0001"},
                  {"docType": "insurance", "docNumber": "INS-0001"},
                  {"docType": "pollutionCertificate", "docNumber": "PUC-0001"}],
}
def _render(participant_id, record, state):
    return 202, ("ok" if record["payloadValidated"] else "failed")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _write(service: Service, ptype, kind: str, body: dict, participant_id=None) -> None:
    request_id = str(uuid.uuid4())
    command = build(kind, body, tenant_id=TENANT, request_id=request_id,
                    fingerprint=idempotency.fingerprint("PUT", request_id, body),
                    participant_id=participant_id)
    if service.execute(ptype, command, _render).body != "ok":
        raise RuntimeError(f"{kind} {body} failed")


def available_vehicle(service: Service, ptype) -> str:
    """A vehicle in active:available, ready for trip updates."""
    _write(service, ptype, "create", {"uniqueCode": "SINGLE", "properties": {
        **VEHICLE, "registrationNumber": "KA01ZZ0001"}})
    participant_id = participant_id_for(TENANT, "vehicles", "SINGLE")
    for event, reason in TO_AVAILABLE:
        _write(service, ptype, "update", {"properties": {}, "stateTransition": {
            "eventCode": event, "reasonCode": reason}}, participant_id)
    return participant_id


def single_updates(path: Path, participant_id: str, first: int, rate: float,
                   until: threading.Event | None, seconds: float | None) -> list[float]:
    """Paced single updates until `until` is set (or for `seconds`); latencies in ms.

    `first` must be even: the vehicle is left in active:available, as it was found.
    """
    ptype = load_registry(MACHINES)["vehicles"]
    store = SqliteStorage(path, synchronous="FULL")
    service = Service(store)
    latencies = []
    started = time.perf_counter()
    i = first
    try:
        while True:
            if until is not None and until.is_set():
                break
            if seconds is not None and time.perf_counter() - started >= seconds:
                break
            if rate:
                due = started + (i - first) / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            t0 = time.perf_counter()
            _write(service, ptype, "update", trip_update(i), participant_id)
            latencies.append((time.perf_counter() - t0) * 1000)
            i += 1
        if (i - first) % 2:  # close the trip, so the next run starts from active:available
            _write(service, ptype, "update", trip_update(i), participant_id)
    finally:
        store.close()
    return latencies


def _in_process(path, participant_id, first, rate, done, results):
    results.put(single_updates(path, participant_id, first, rate, done, None))


def accept(store: SqliteStorage, n: int, prefix: str) -> float:
    """Accept an n-item create batch; the transaction's duration in ms."""
    items = [Item({"uniqueCode": f"{prefix}-{i:05d}", "name": f"Vehicle {i}",
                   "owner": "operators:bench", "category": "truck", "subCategory": "lcv",
                   "properties": {**VEHICLE, "registrationNumber": f"KA{prefix}AB{i:04d}"}})
             for i in range(n)]
    started = time.perf_counter()
    batches.accept(store, tenant_id=TENANT, plural="vehicles", kind="create",
                   request_id=f"bench-{prefix}", fingerprint=prefix, items=items, user_info=None,
                   callback=None, callback_secret=None, token=None, now=now_ms(),
                   render=lambda batch_id: (202, batch_id))
    return (time.perf_counter() - started) * 1000


def apply_all(worker: BatchWorker) -> tuple[int, float]:
    """Run the worker until no item is left: (items applied, seconds)."""
    applied, started = 0, time.perf_counter()
    while True:
        done = worker.run_once(limit=500)
        applied += done
        if not done:
            return applied, time.perf_counter() - started


def line(label: str, latencies: list[float], seconds: float) -> str:
    return (f"   {label:<38} {len(latencies) / seconds:7,.0f} ops/s   p50 "
            f"{percentile(latencies, 50):6.2f} ms   p99 {percentile(latencies, 99):6.2f} ms"
            f"   max {max(latencies):7.1f} ms   (n={len(latencies):,})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0,
                        help="single updates per second (0: back to back)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    print(f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    folder = Path(tempfile.mkdtemp(prefix="batch-bench-", dir=args.dir))
    path = folder / "participants.db"
    try:
        ptype = load_registry(MACHINES)["vehicles"]
        store = SqliteStorage(path, synchronous="FULL")
        service = Service(store)
        worker = BatchWorker({"vehicles": ptype}, service)
        print(f"SQLite {store.sqlite_version}, synchronous=FULL, {args.items:,} items per batch,"
              f" single updates {'back to back' if not args.rate else f'{args.rate:g}/s'}")
        vehicle = available_vehicle(service, ptype)
        single_updates(path, vehicle, 0, 0, None, 0.5)  # warm-up

        alone = single_updates(path, vehicle, 10**6, args.rate, None, args.seconds)
        print("1. single combined updates, alone")
        print(line("", alone, args.seconds))

        print(f"2. accepting the batch: one transaction of {accept(store, args.items, '01'):,.0f}"
              " ms")
        applied, seconds = apply_all(worker)
        print(f"3. the batch alone: {applied / seconds:,.0f} items/s ({applied:,} in "
              f"{seconds:.1f} s)")

        runs = (("4. beside updates from a thread", threading.Event, threading.Thread,
                 _queue_thread()),
                ("5. beside updates from another process", _context().Event,
                 _context().Process, _context().Queue()))
        first = 2 * 10**6
        for (label, event, runner, results), prefix in zip(runs, ("02", "03"), strict=True):
            accept(store, args.items, prefix)
            done = event()
            updater = runner(target=_in_process,
                             args=(path, vehicle, first, args.rate, done, results))
            updater.start()
            time.sleep(0.2)  # let it reach its pace first
            applied, seconds = apply_all(worker)
            done.set()
            latencies = results.get()
            updater.join()
            first += 10**6
            print(f"{label}: the batch {applied / seconds:,.0f} items/s ({applied:,} in "
                  f"{seconds:.1f} s)")
            print(line("single updates meanwhile", latencies, seconds))
            print(f"   {'against the baseline':<38} p50 "
                  f"{percentile(latencies, 50) / percentile(alone, 50):.2f}×, p99 "
                  f"{percentile(latencies, 99) / percentile(alone, 99):.2f}×")
        failed = store.conn.execute("SELECT SUM(failed) FROM batches").fetchone()[0]
        if failed:
            print(f"!! {failed} batch items FAILED")
        store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _context():
    return multiprocessing.get_context("fork")


def _queue_thread():
    import queue
    return queue.Queue()


if __name__ == "__main__":
    sys.exit(main())

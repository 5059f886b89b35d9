"""`make run`: the development server on the bundled machines and a local SQLite file."""

from __future__ import annotations

import json
import os
import sys

from engine.errors import DefinitionError

from . import create_app
from .embedded import stop_on_sigterm

DEV_TENANT = "demo"
DEV_TOKEN = "dev-token"
HOST, PORT = "127.0.0.1", 5000


def _example(base: str) -> str:
    plural = "vehicles"
    return f"""
Ready. Try it (development token '{DEV_TOKEN}' for tenant '{DEV_TENANT}'):

  curl -s -X POST http://{HOST}:{PORT}{base}/{plural} \\
    -H 'Content-Type: application/json' -H 'X-COREOS-REQUEST-ID: demo-1' \\
    -H 'X-COREOS-TID: {DEV_TENANT}' -H 'X-COREOS-ACCESS: {DEV_TOKEN}' \\
    -d '{{"uniqueCode": "KA01AB1234", "name": "Tata Ace",
         "properties": {{"registrationNumber": "KA01AB1234", "payloadCapacityKg": 750}}}}'

  curl -s http://{HOST}:{PORT}{base}/participant-types \\
    -H 'X-COREOS-REQUEST-ID: demo-2' -H 'X-COREOS-TID: {DEV_TENANT}' \\
    -H 'X-COREOS-ACCESS: {DEV_TOKEN}'

The README walks through create -> combined update -> failure event -> history.
"""


def main() -> int:
    os.environ.setdefault("PARTICIPANTS_ACCESS_TOKENS", json.dumps({DEV_TOKEN: DEV_TENANT}))
    os.environ.setdefault("PARTICIPANTS_ALLOW_PRIVATE_CALLBACKS", "1")
    try:
        app = create_app()
    except (DefinitionError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    state = app.extensions["participants"]
    print(f"Participant Service: types {', '.join(state.types)}; "
          f"{state.storage.describe()}")
    print(_example(app.config["PARTICIPANTS_BASE_PATH"]))
    # Callbacks, hooks, timers and batches: create_app started the embedded dispatcher (unless
    # PARTICIPANTS_DISPATCHER=off); it stops after the delivery in flight when the server exits,
    # on Ctrl-C or SIGTERM.
    stop_on_sigterm()
    try:
        app.run(host=HOST, port=PORT, threaded=True)
    finally:
        if state.embedded is not None:
            state.embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

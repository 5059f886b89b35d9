"""The smallest Flask JSON endpoint: the HTTP baseline that bench/benchmark.py compares against.

It parses the JSON body and answers 202 with a small JSON document, on the same path shape as the
real update route, and does nothing else (no headers checked, no database).
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

app = Flask(__name__)


@app.put("/core/api/v2/participants/<plural>/<pid>")
def update(plural: str, pid: str) -> Response:
    body = request.get_json()
    answer = {"data": {"id": pid, "participantType": plural, "received": body}}
    return Response(json.dumps(answer, separators=(",", ":")), status=202,
                    mimetype="application/json")

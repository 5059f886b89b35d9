"""`make run`: the development server on the bundled machines and a local SQLite file."""

from __future__ import annotations

import sys

from engine.errors import DefinitionError

from . import create_app


def main() -> int:
    try:
        app = create_app()
    except DefinitionError as error:
        print(error, file=sys.stderr)
        return 1
    types = ", ".join(app.extensions["participant_types"])
    print(f"Participant Service: loaded {types}")
    app.run(host="127.0.0.1", port=5000)
    return 0


if __name__ == "__main__":
    sys.exit(main())

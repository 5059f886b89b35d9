#!/usr/bin/env python3
"""Lint the participant-type machine files: `python validate_machines.py [PATH ...]`."""

import sys

from engine.lint.cli import main

if __name__ == "__main__":
    sys.exit(main())

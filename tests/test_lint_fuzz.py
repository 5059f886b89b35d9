"""Linter robustness: a generated corpus of broken machine files never gets a traceback or a hang.

The corpus is built from the bundled machines/*.yaml: byte flips, deleted and duplicated lines,
truncations, renamed keys, changed indentation, swapped and retyped values, injected YAML
oddities (tags, anchors, complex keys, tabs, NULs, other encodings), plus random binary, 3 MB
files, 10^4-deep nesting and alias bombs. Each file is linted in-process through
engine.lint.cli.main (with a per-file alarm, so a hang is a failure, not a stuck run): it must
return 0 or 1, never raise, and print only `file:line:col: RULE message` lines and the summary;
a file that cannot be a machine file must be reported (exit 1). The heaviest inputs (alias
bombs, deep nesting, huge files, binary) also run as a subprocess under a 1 GiB address-space
limit and a timeout, to show time and memory stay bounded.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from engine.lint.cli import main
from tests.conftest import ROOT, scale

pytestmark = pytest.mark.reliability

MACHINES = ROOT / "machines"
SAMPLES = sorted(MACHINES.glob("*.yaml"))
LINE = re.compile(r"^(?P<file>.+):(?P<line>[1-9][0-9]*):(?P<col>[1-9][0-9]*): "
                  r"(?P<rule>[EW][0-9]{3}) (?P<message>\S.*)$")
SUMMARY = re.compile(r"^[0-9]+ errors?, [0-9]+ warnings? in [0-9]+ files?$")
PER_FILE_SECONDS = 20  # a hang, not a slow file: the slowest seen is well under a second
MEMORY_LIMIT = 1024 ** 3  # RLIMIT_AS of the subprocess runs
SUBPROCESS_TIMEOUT = 60
SEED = 20240611


# -- the corpus ---------------------------------------------------------------------------------

def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


KEY = re.compile(rb"^(\s*)(-\s+)?([A-Za-z][A-Za-z0-9_-]*|'[^']*'|E-[0-9]+|R-[0-9]+):", re.M)
TRAPS = [b"on", b"yes", b"No", b"null", b"~", b"1", b"1.5", b"E-000", b"R-0000", b"E-1000",
         b"'E-101'", b"states", b"participantType", b"<<", b"? [a, b]", b'"a\\nb"', b"a b",
         b"\xc3\xa9t\xc3\xa9", b'"\\u0000"', b"!!python/name:os.system"]
VALUES = [b"", b"~", b"[]", b"{}", b"[[[]]]", b"yes", b"off", b".nan", b"-.inf", b"1e999",
          b"0x1F", b"0o17", b"2001-12-14t21:59:43.10-05:00", b"!!binary aGVsbG8=",
          b"!!python/object/apply:os.system ['true']", b"!!set {a, b}", b"!!omap [a: 1]",
          b"*undefined", b"&anchor x", b"'unterminated", b'"\\xff"', b"|\n  block",
          b"{a: 1, a: 2}", b"[1, 2", b"9" * 5000, b"a" * 100_000, b"'" + b"\\" * 50 + b"'",
          b"%YAML 1.2", b"---", b"...", b"\t", b"@at", b"`tick", b"E-101", b"main:sub",
          b"active:", b"'^(a+)+$'", b"'[unclosed'", b"10d5h3m0s", b"0s", b"-1d"]


MUTATORS = ["flip", "delete_lines", "duplicate_lines", "truncate", "rename_key", "indent",
            "swap_value", "inject_line", "splice", "shuffle_lines"]


def _mutations(rng: random.Random, data: bytes):
    """(kind, mutated bytes) for one sample, drawn at random."""
    lines = _lines(data)
    keys = list(KEY.finditer(data))

    def flip():
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)

    def delete_lines():
        out = list(lines)
        for _ in range(rng.randint(1, 4)):
            if out:
                del out[rng.randrange(len(out))]
        return b"".join(out)

    def duplicate_lines():
        out = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(out))
            out.insert(i, out[i])
        return b"".join(out)

    def truncate():
        return data[:rng.randrange(len(data))]

    def rename_key():
        match = rng.choice(keys)
        name = match.group(3)
        new = rng.choice([name[::-1], name + b"x", name.upper(), name[:-1], rng.choice(TRAPS),
                          bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(1, 12)))])
        return data[:match.start(3)] + new + data[match.end(3):]

    def indent():
        out = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(out))
            change = rng.choice([b" ", b"  ", b"\t", b"    " * 3, b""])
            out[i] = change + (out[i][rng.randint(1, 4):] if change == b"" else out[i])
        return b"".join(out)

    def swap_value():
        match = rng.choice(keys)
        end = data.find(b"\n", match.end())
        end = len(data) if end < 0 else end
        return data[:match.end()] + b" " + rng.choice(VALUES) + data[end:]

    def inject_line():
        out = list(lines)
        i = rng.randrange(len(out) + 1)
        prefix = re.match(rb"\s*", out[i - 1] if i else b"").group()
        junk = rng.choice([b"%s: x\n", b"%s:\n", b"- %s\n", b"%s\n", b"  %s: [\n", b"# %s\n",
                           b"&a %s: *a\n", b"? %s\n", b"%s: !!str\n"]) % rng.choice(TRAPS)
        out.insert(i, prefix + junk)
        return b"".join(out)

    def splice():
        other = rng.choice(SAMPLES).read_bytes()
        a, b = sorted(rng.randrange(len(data)) for _ in range(2))
        c = rng.randrange(len(other))
        return data[:a] + other[c:c + (b - a)] + data[b:]

    def shuffle_lines():
        out = list(lines)
        i = rng.randrange(len(out))
        chunk = out[i:i + rng.randint(2, 8)]
        rng.shuffle(chunk)
        out[i:i + len(chunk)] = chunk
        return b"".join(out)

    mutators = [flip, delete_lines, duplicate_lines, truncate, rename_key, indent, swap_value,
                inject_line, splice, shuffle_lines]
    assert [m.__name__ for m in mutators] == MUTATORS
    while True:
        mutate = rng.choice(mutators)
        yield mutate.__name__.replace("_", " "), mutate()


def _bomb(levels: int, width: int) -> bytes:
    """Billion laughs: each level is `width` aliases of the one before."""
    out = [b'a0: &a0 "lol"']
    for i in range(1, levels + 1):
        out.append(b"a%d: &a%d [" % (i, i) + b", ".join([b"*a%d" % (i - 1)] * width) + b"]")
    return b"\n".join(out) + b"\n"


def _merge_bomb(levels: int) -> bytes:
    """Each level merges the one below twice: 2^levels entries if merges were copied, but the
    keys are shared, so the merged mappings stay small."""
    out = [b"m0: &m0 {k0: 1, j0: 2}"]
    for i in range(1, levels + 1):
        out.append(b"m%d: &m%d {<<: [*m%d, *m%d], k%d: %d}" % (i, i, i - 1, i - 1, i, i))
    return b"\n".join(out) + b"\n"


def _merge_fan_out(keys: int, levels: int) -> bytes:
    """A wide mapping merged into each of many levels: keys x levels entries really built."""
    out = [b"m0: &m0 {" + b", ".join(b"k%d: %d" % (i, i) for i in range(keys)) + b"}"]
    out += [b"m%d: &m%d {<<: *m%d}" % (i, i, i - 1) for i in range(1, levels + 1)]
    return b"\n".join(out) + b"\n"


def special_files(rng: random.Random, sample: bytes) -> list[tuple[str, bytes, bool]]:
    """(kind, bytes, heavy) of inputs that must be reported as unreadable (E000) or broken."""
    deep = 10_000
    filler = b"# filler line to make the file big but still plain YAML text\n"
    files = [
        ("empty", b"", False),
        ("only a comment", b"# nothing here\n", False),
        ("only document markers", b"---\n...\n", False),
        ("two documents", sample + b"\n---\n" + sample, False),
        ("a list, not a mapping", b"- a\n- b\n", False),
        ("a scalar", b"vehicles\n", False),
        ("NUL bytes", sample[:200] + b"\x00\x00" + sample[200:], False),
        ("latin-1 text", "participantType: {singular: v\xe9hicule}\n".encode("latin-1"), False),
        ("UTF-16 with BOM", sample.decode().encode("utf-16"), False),
        ("UTF-32", sample.decode().encode("utf-32"), False),
        ("python tag", b"participantType: !!python/object:os.system {}\n", False),
        ("undefined alias", b"participantType: *nowhere\n", False),
        ("recursive alias", b"a: &a [*a]\n", False),
        ("tab indentation", sample.replace(b"  ", b"\t"), False),
        ("CR line ends", sample.replace(b"\n", b"\r"), False),
        ("unicode line separators", sample.replace(b"\n", "\u2028".encode()), False),
        ("one long line", b"description: " + b"x" * 1_500_000 + b"\n", False),
        ("deep flow sequence", b"a: " + b"[" * deep + b"]" * deep + b"\n", True),
        ("deep flow mapping", b"a: " + b"{a: " * deep + b"1" + b"}" * deep + b"\n", True),
        ("deep block sequence", b"a:\n  " + b"- " * deep + b"x\n", True),
        ("deep block mapping", b"".join(b" " * i + b"k:\n" for i in range(600)) + b" " * 600
         + b"k: 1\n", True),
        ("deep unclosed", b"[" * deep, True),
        ("billion laughs", _bomb(9, 10), True),
        ("billion laughs, wide", _bomb(4, 1000), True),
        ("merge-key bomb", _merge_bomb(40), True),
        ("merge-key fan-out", _merge_fan_out(5000, 100), True),
        ("quadratic blowup", b"a: &a [" + b", ".join([b'"' + b"x" * 1000 + b'"'] * 200)
         + b"]\nb: [" + b", ".join([b"*a"] * 5000) + b"]\n", True),
        ("3 MB of YAML", sample + filler * (3 * 1024 * 1024 // len(filler)), True),
        ("3 MB single value", b"description: '" + b"y" * (3 * 1024 * 1024) + b"'\n", True),
        ("random binary, 3 MB", rng.randbytes(3 * 1024 * 1024), True),
    ]
    for size in (1, 16, 512, 4096, 65536):
        files.append((f"random binary, {size} bytes", rng.randbytes(size), size >= 65536))
    for size in (64, 4096):
        printable = bytes(rng.choice(b"abc:-[]{}&*!|>'\"#%@ \n\t,?") for _ in range(size))
        files.append((f"random YAML punctuation, {size} bytes", printable, False))
    return files


MUST_FAIL = {"empty", "only a comment", "only document markers", "two documents",
             "a list, not a mapping", "a scalar", "NUL bytes", "latin-1 text", "python tag",
             "undefined alias", "recursive alias", "tab indentation", "one long line",
             "deep flow sequence", "deep flow mapping", "deep block sequence",
             "deep block mapping", "deep unclosed", "billion laughs", "billion laughs, wide",
             "quadratic blowup", "merge-key bomb", "merge-key fan-out", "3 MB of YAML",
             "3 MB single value", "random binary, 3 MB"}

# Inputs beyond a bound the loader itself guarantees (MAX_NODES nodes built or merged,
# MAX_DEPTH levels, MAX_FILE_BYTES, UTF-8 text): reported as unreadable, E000. The merge-key
# bomb is not among them: resolved, its mappings are small, so it is linted like any file.
UNREADABLE = {"deep flow sequence", "deep flow mapping", "deep block sequence",
              "deep block mapping", "deep unclosed", "billion laughs", "billion laughs, wide",
              "quadratic blowup", "merge-key fan-out", "3 MB of YAML", "3 MB single value",
              "random binary, 3 MB", "random binary, 65536 bytes"}


def corpus(count: int):
    """(name, kind, target file name, bytes, heavy): `count` mutations plus the special files."""
    rng = random.Random(SEED)
    streams = {path: _mutations(rng, path.read_bytes()) for path in SAMPLES}
    for i in range(count):
        path = SAMPLES[i % len(SAMPLES)]
        kind, data = next(streams[path])
        yield f"{path.stem}-{i}", kind, path.name, data, False
    sample = (MACHINES / "vehicles.yaml").read_bytes()
    for i, (kind, data, heavy) in enumerate(special_files(rng, sample)):
        yield f"special-{i}", kind, "vehicles.yaml", data, heavy


# -- running the linter -------------------------------------------------------------------------

class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def run_in_process(argv: list[str]) -> tuple[int | None, str, str, str | None, float]:
    """(status, stdout, stderr, traceback or None, seconds) of engine.lint.cli.main(argv)."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_FILE_SECONDS)
    started = time.perf_counter()
    status, failure = None, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    except Hang:
        failure = f"hang: no answer in {PER_FILE_SECONDS} s"
    except BaseException:  # SystemExit and KeyboardInterrupt included: main must return
        failure = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return status, out.getvalue(), err.getvalue(), failure, time.perf_counter() - started


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (SUBPROCESS_TIMEOUT, SUBPROCESS_TIMEOUT + 5))


def run_subprocess(path: Path) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "validate_machines.py"), str(path)],
                          cwd=ROOT, capture_output=True, timeout=SUBPROCESS_TIMEOUT,
                          preexec_fn=_limits)
    return (done.returncode, done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"), time.perf_counter() - started)


def output_problems(out: str, status: int) -> list[str]:
    """What is wrong with a text report: lines in another shape, or a status that disagrees."""
    lines = out.split("\n")
    problems = []
    if lines[-1] != "" or len(lines) < 2 or not SUMMARY.match(lines[-2]):
        problems.append(f"the report does not end with the summary line: {out[-300:]!r}")
    findings = [LINE.match(line) for line in lines[:-2]]
    problems += [f"not 'file:line:col: RULE message': {line[:300]!r}"
                 for line, match in zip(lines[:-2], findings, strict=True) if match is None]
    errors = sum(1 for m in findings if m and m["rule"].startswith("E"))
    if (status == 1) != (errors > 0):
        problems.append(f"exit status {status} with {errors} errors")
    if lines and SUMMARY.match(lines[-2] if len(lines) > 1 else ""):
        counted = int(lines[-2].split()[0])
        if counted != errors:
            problems.append(f"the summary counts {counted} errors, the report lists {errors}")
    return problems


def _case_folder(tmp_path: Path, name: str, target: str, data: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / target).write_bytes(data)
    if target != "codes.yaml":
        shutil.copy(MACHINES / "codes.yaml", folder / "codes.yaml")
    return folder / target


# -- the tests ----------------------------------------------------------------------------------

def test_samples_are_clean():
    """The corpus starts from files the linter accepts, so what it reports is the mutation's."""
    status, out, _, failure, _ = run_in_process([str(MACHINES)])
    assert failure is None and status == 0, out


def test_fuzzed_machine_files_are_reported_never_a_traceback_or_a_hang(tmp_path, figure):
    """Every file of the generated corpus: main() returns 0 or 1 and never raises or hangs; the
    report is only `file:line:col: RULE message` lines and the summary, its exit status agrees
    with its errors, and a file that cannot be a machine file exits 1 with an error. Every tenth
    file is also linted as JSON, SARIF and GitHub annotations, which must be well formed."""
    count = scale(300, 3000)
    files, tracebacks, hangs, problems = 0, 0, 0, []
    kinds, statuses, rules = Counter(), Counter(), Counter()
    slowest, slowest_name = 0.0, ""
    for name, kind, target, data, _heavy in corpus(count):
        path = _case_folder(tmp_path, name, target, data)
        status, out, err, failure, seconds = run_in_process([str(path)])
        files += 1
        kinds[kind] += 1
        if seconds > slowest:
            slowest, slowest_name = seconds, f"{kind} ({len(data)} bytes)"
        where = f"{name} ({kind}, {len(data)} bytes, kept at {path})"
        if failure is not None:
            if failure.startswith("hang"):
                hangs += 1
            else:
                tracebacks += 1
            problems.append(f"{where}: {failure}")
            continue
        statuses[status] += 1
        if status not in (0, 1):
            problems.append(f"{where}: exit status {status}; stderr {err[:300]}")
            continue
        problems += [f"{where}: {p}" for p in output_problems(out, status)]
        rules.update(m["rule"] for m in map(LINE.match, out.split("\n")) if m)
        if kind in MUST_FAIL and status != 1:
            problems.append(f"{where}: a file that cannot be a machine file passed: {out!r}")
        if err:
            problems.append(f"{where}: wrote to stderr: {err[:300]}")
        if files % 10 == 0:
            problems += [f"{where}: {p}" for p in _other_formats(path, status)]
        if not problems:
            shutil.rmtree(path.parent)  # keep only the failing cases for inspection

    assert not problems, "\n".join(problems[:10]) + f"\n({len(problems)} problems)"
    assert tracebacks == 0 and hangs == 0
    assert statuses[1] > files // 2, statuses  # the corpus is mostly broken files
    figure("The linter reports broken machine files and never crashes or hangs",
           f"{files} fuzzed files ({count} random mutations of machines/*.yaml of "
           f"{len(MUTATORS)} kinds, {files - count} special files: binary, other encodings, "
           f"3 MB, 10^4-deep, alias bombs): exit 1: {statuses[1]}, exit 0: "
           f"{statuses[0]}; {len(rules)} different rules reported; tracebacks: 0; hangs: 0; "
           f"max time per file {slowest:.2f} s ({slowest_name})")


def _other_formats(path: Path, status: int) -> list[str]:
    problems = []
    for fmt in ("json", "sarif", "github"):
        got, out, _, failure, _ = run_in_process(["--format", fmt, str(path)])
        if failure is not None or got != status:
            problems.append(f"--format {fmt}: status {got} (text said {status}): {failure}")
            continue
        if fmt in ("json", "sarif"):
            try:
                json.loads(out)
            except ValueError as error:
                problems.append(f"--format {fmt} is not JSON: {error}: {out[:200]!r}")
        else:
            lines = out.split("\n")
            bad = [line for line in lines[:-2]
                   if not re.match(r"^::(error|warning) file=[^,\n]+,line=\d+,col=\d+,"
                                   r"title=[EW]\d{3}::", line)]
            if bad or not SUMMARY.match(lines[-2]):
                problems.append(f"--format github: malformed lines {bad[:3]!r}")
    return problems


def test_heavy_inputs_are_bounded_in_time_and_memory(tmp_path, figure):
    """Alias bombs, 10^4-deep nesting, 3 MB files and random binary, each linted by
    validate_machines.py in its own process limited to 1 GiB of address space: every one exits 1
    with positioned problems, no traceback, within the timeout; those beyond the loader's own
    bounds are reported as unreadable (E000)."""
    rng = random.Random(SEED)
    sample = (MACHINES / "vehicles.yaml").read_bytes()
    heavy = [(kind, data) for kind, data, is_heavy in special_files(rng, sample) if is_heavy]
    slowest, slowest_kind, problems = 0.0, "", []
    for i, (kind, data) in enumerate(heavy):
        path = _case_folder(tmp_path, f"heavy-{i}", "vehicles.yaml", data)
        try:
            status, out, err, seconds = run_subprocess(path)
        except subprocess.TimeoutExpired:
            problems.append(f"{kind}: no answer in {SUBPROCESS_TIMEOUT} s")
            continue
        if seconds > slowest:
            slowest, slowest_kind = seconds, kind
        if status != 1 or "Traceback" in err or "MemoryError" in err:
            problems.append(f"{kind}: exit {status}; stderr {err[-500:]}")
            continue
        problems += [f"{kind}: {p}" for p in output_problems(out, status)]
        if kind in UNREADABLE and " E000 " not in out:
            problems.append(f"{kind}: not reported as unreadable (E000): {out[:300]!r}")
    assert {kind for kind, _data in heavy} >= UNREADABLE
    assert not problems, "\n".join(problems)
    figure("Alias bombs, deep nesting and huge files are bounded in time and memory",
           f"{len(heavy)} heavy inputs (billion laughs, quadratic and merge-key bombs, 10^4-deep "
           f"nesting, 3 MB files, random binary) in a process limited to 1 GiB: all exit 1, "
           f"{len(UNREADABLE)} beyond the loader's bounds with E000; 0 tracebacks, 0 timeouts; "
           f"slowest {slowest:.2f} s ({slowest_kind})")


def test_control_character_is_one_report_line_at_its_position(tmp_path):
    """A control character in the file is one E000 line pointing at the character."""
    path = _case_folder(tmp_path, "control", "vehicles.yaml",
                        b"participantType:\n  singular: ve\x13hicle\n")
    status, out, _, failure, _ = run_in_process([str(path)])
    assert failure is None and status == 1
    assert output_problems(out, status) == [], out
    assert out.startswith(f"{path}:2:15: E000 "), out


@pytest.mark.parametrize("text", [
    b'"a\\nb": 1\n',
    b'reasons:\n  "R-1\\n2": x\n',
    b'states:\n  "on\\r\\nline":\n    subStates: {}\n',
], ids=["unknown top-level key", "reason code", "state name"])
def test_names_with_line_breaks_stay_on_one_report_line(tmp_path, text):
    """Keys holding line breaks are reported escaped, one problem per line."""
    path = _case_folder(tmp_path, "newline", "vehicles.yaml", text)
    status, out, _, failure, _ = run_in_process([str(path)])
    assert failure is None and status == 1
    assert output_problems(out, status) == [], out

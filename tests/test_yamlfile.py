"""The YAML loader: positions, duplicate keys, YAML 1.1 booleans, hostile input."""

from __future__ import annotations

import pytest
import yaml

from engine.loading.yamlfile import MAX_FILE_BYTES, MAX_NODES, load_file, load_text


def rules(doc):
    return [(p.rule, p.line, p.col) for p in doc.problems]


def test_positions_are_one_based_for_keys_and_values():
    """Every key and value records its line and column, counted from 1."""
    doc = load_text("a: 1\nb:\n  c: [x, {d: 2}]\n")
    assert doc.keys[("b", "c")] == (3, 3)
    assert doc.values[("b", "c")] == (3, 6)
    assert doc.values[("b", "c", 1, "d")] == (3, 14)
    assert doc.position(("b", "c", 5, "nope")) == (3, 6)


def test_duplicate_keys_are_reported_not_silently_dropped():
    """A repeated key is a problem at the second occurrence, naming the first."""
    doc = load_text("a: 1\nb: 2\na: 3\n")
    assert rules(doc) == [("E002", 3, 1)]
    assert "first defined on line 1" in doc.problems[0].message
    assert doc.data == {"a": 1, "b": 2}


@pytest.mark.parametrize("key", ["on", "off", "yes", "no", "ON", "Yes", "~", "null"])
def test_yaml11_boolean_keys_are_errors(key):
    """Keys that YAML 1.1 reads as booleans or null are errors that keep the written text."""
    doc = load_text(f"{key}: 1\n")
    assert rules(doc) == [("E003", 1, 1)]
    assert doc.data == {key: 1}


def test_yaml11_boolean_values_are_warnings():
    """An unquoted yes/no/on/off value is a warning; true/false and quoted text are not."""
    doc = load_text("a: yes\nb: true\nc: 'no'\nd: off\n")
    assert rules(doc) == [("W004", 1, 4), ("W004", 4, 4)]


@pytest.mark.parametrize(("text", "fragment"), [
    ("a: [1\n", "not valid YAML"),
    ("", "empty"),
    ("# only a comment\n", "empty"),
    ("- a\n- b\n", "must be a mapping"),
    ("just text\n", "must be a mapping"),
    ("a: 1\n---\nb: 2\n", "not valid YAML"),
    ("[" * 5000, "nested too deeply"),
    ("a: !!python/object:os.system {}\n", "not valid YAML"),
    ("{[1]: 2}\n", "plain name"),
    ("a: !!binary aGVsbG8=\n", "not allowed"),
    ("a: !!set {x}\n", "not allowed"),
    ("a: .inf\n", "not a JSON number"),
])
def test_unusable_documents_are_problems_not_exceptions(text, fragment):
    """Malformed YAML yields an E000 problem with a readable message."""
    doc = load_text(text)
    assert not doc.readable
    assert fragment in doc.problems[0].message


def test_alias_bombs_are_bounded():
    """Exponential alias expansion stops with a problem instead of exhausting memory."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    doc = load_text("\n".join(lines) + "\n")
    assert rules(doc) == [("E000", 1, 1)]
    assert "too large" in doc.problems[0].message


def test_merge_keys_and_small_anchors_work():
    """Anchors, aliases and merge keys that stay small load normally."""
    doc = load_text("base: &b {x: 1}\nthing:\n  <<: *b\n  y: 2\n")
    assert doc.readable and doc.data["thing"] == {"x": 1, "y": 2}


@pytest.mark.parametrize("text", [
    "a: &a {x: 1, y: 2}\nb: &b {y: 3, z: 4}\nc: {<<: [*a, *b], z: 5}\n",
    "a: &a {x: 1, n: {q: [1, 2]}}\nc:\n  <<: *a\n  x: 9\n",
    "a: &a {x: 1}\nb: &b {<<: *a, y: 2}\nc: {<<: *b, z: 3}\n",
    "c: {<<: {x: 1}, y: 2}\n",
])
def test_merge_keys_resolve_as_yaml_specifies(text):
    """Merged entries come from the earliest source that has them; a mapping's own keys win."""
    doc = load_text(text)
    assert doc.readable and not doc.problems
    assert doc.data == yaml.safe_load(text)


def test_merged_entries_keep_the_position_of_their_source():
    """A merged key points at the line where it was written."""
    doc = load_text("base: &b\n  x: 1\nthing:\n  <<: *b\n  y: 2\n")
    assert doc.keys[("thing", "x")] == (2, 3) and doc.keys[("thing", "y")] == (5, 3)


def test_a_merge_bomb_whose_keys_are_shared_is_small():
    """Merging the level below twice at every level builds each shared key once, not 2^n times."""
    lines = ["m0: &m0 {k0: 1}"] + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: {i}}}"
                                    for i in range(1, 61)]
    doc = load_text("\n".join(lines) + "\n")
    assert doc.readable and len(doc.data["m60"]) == 61


def test_merges_that_really_build_too_much_are_refused():
    """Entries resolved from merges count against the loader's node budget."""
    keys = MAX_NODES // 50
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(keys)) + "}"]
    lines += [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, 60)]
    doc = load_text("\n".join(lines) + "\n")
    assert rules(doc) == [("E000", 1, 1)] and "too large" in doc.problems[0].message


def test_a_second_merge_key_is_a_duplicate_key():
    """Two `<<:` keys in one mapping are E002 (PyYAML versions read them differently)."""
    doc = load_text("a: &a {x: 1}\nb: &b {w: 1}\nc:\n  <<: *a\n  <<: *b\n")
    assert rules(doc) == [("E002", 5, 3)] and "'<<: [*a, *b]'" in doc.problems[0].message
    assert doc.data["c"] == {"x": 1}


@pytest.mark.parametrize(("text", "position", "fragment"), [
    ("a: &a {<<: *a}\n", (1, 4), "refers back"),
    ("a: {<<: 3}\n", (1, 9), "takes a mapping"),
    ("a: &l [1]\nb: {<<: *l}\n", (1, 8), "takes a mapping"),
])
def test_malformed_merges_are_positioned_problems(text, position, fragment):
    """A merge of something that is not a mapping, or of itself, is E000 at that node."""
    doc = load_text(text)
    assert rules(doc) == [("E000", *position)] and fragment in doc.problems[0].message


@pytest.mark.parametrize(("content", "fragment"), [
    (b"\x00\x01\x02binary", "NUL"),
    (b"a: \xff\xfe\n", "UTF-8"),
    (b"x" * (MAX_FILE_BYTES + 1), "larger than"),
])
def test_binary_invalid_and_huge_files_are_problems(tmp_path, content, fragment):
    """Files that are not reasonable text are reported, never parsed."""
    path = tmp_path / "junk.yaml"
    path.write_bytes(content)
    doc = load_file(path)
    assert not doc.readable and fragment in doc.problems[0].message


def test_unreadable_path_is_a_problem(tmp_path):
    """A path that cannot be read is reported as such."""
    doc = load_file(tmp_path / "missing.yaml")
    assert "cannot read" in doc.problems[0].message


def test_utf8_bom_is_accepted(tmp_path):
    """A UTF-8 byte order mark does not break parsing."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_file(path).data == {"a": 1}


def test_dates_stay_text():
    """An unquoted date is kept as the text written, since machine files hold JSON values."""
    assert load_text("a: 2001-12-14\n").data == {"a": "2001-12-14"}

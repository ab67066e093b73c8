"""dinotrain.atomic: a file is replaced whole or not at all."""

from __future__ import annotations

import json

import pytest

from dinotrain.atomic import atomic_path, keep_jsonl_until, write_json, write_text


def test_write_replaces_whole_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    write_json(path, {"step": 1}, indent=1)  # parent created
    assert json.loads(path.read_text()) == {"step": 1} and path.read_text().endswith("\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"step": 2')  # half written, then the writer dies
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temporary left behind
    write_text(path, "x")
    assert path.read_text() == "x"


def test_two_writers_of_one_path_get_distinct_temporaries(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_path(path) as a, atomic_path(path) as b:
        assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".f.bin.")
        a.write_text("a")
        b.write_text("b")
    assert path.read_text() == "a"  # the outer one renamed last


def test_keep_jsonl_until_drops_the_steps_to_redo(tmp_path):
    path = tmp_path / "metrics.jsonl"
    keep_jsonl_until(path, 3)  # no file: nothing to do
    assert not path.exists()
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4, 5)) + "\n")
    keep_jsonl_until(path, 3)
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3]

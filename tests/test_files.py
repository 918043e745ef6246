"""Temp-then-rename writes: a failed write leaves the old result (or nothing) and no temp files behind."""

from __future__ import annotations

import pytest

from encoder_shrink.files import atomic_dir, atomic_path, atomic_write_text


def test_atomic_write_text_replaces_whole_files_only(tmp_path):
    target = tmp_path / "out" / "results.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == target.parent
        tmp.write_text('{"half": ')
        raise RuntimeError("interrupted")
    assert target.read_text() == "{}" and sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_atomic_dir_swaps_in_a_complete_folder_or_nothing(tmp_path):
    target = tmp_path / "teacher"
    with atomic_dir(target) as staging:
        (staging / "a.json").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["a.json"]
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "b.json").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.json"]  # the old folder is untouched
    with atomic_dir(target) as staging:
        (staging / "c.json").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.json"]  # replaced as a whole, nothing stale kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no staging folders left

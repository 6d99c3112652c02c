"""Atomic outputs: an interrupted write never leaves a file that looks finished."""

from __future__ import annotations

import os
import stat

import pytest

from ketchup.files import CorruptFileError, atomic_path, read_jsonl, write_jsonl, write_text


def test_write_then_read_jsonl(tmp_path):
    rows = [{"id": "1", "text": "ä"}, {"id": "2", "text": "b"}]
    assert write_jsonl(tmp_path / "a.jsonl", rows) == 2
    assert read_jsonl(tmp_path / "a.jsonl") == rows


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.jsonl"

    def rows():
        yield {"id": 1}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, rows())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rewrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_directory(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "weights.bin").write_text("w")
        assert not target.exists()
    assert (target / "weights.bin").read_text() == "w"
    with pytest.raises(RuntimeError), atomic_path(target, directory=True) as tmp:
        (tmp / "weights.bin").write_text("partial")
        raise RuntimeError
    assert (target / "weights.bin").read_text() == "w"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_jsonl(tmp_path / "missing.jsonl")
    path.write_bytes('{"a": 1}\n{"a": "Café"}\n'.encode("latin-1"))
    with pytest.raises(CorruptFileError, match=r"bad\.jsonl, line 2: not UTF-8 text"):
        read_jsonl(path)


def test_outputs_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "d", directory=True):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_a_write_removes_the_temporaries_killed_writes_of_the_same_path_left(tmp_path):
    """`.NAME.XXXX.tmp` (a file, or a directory for a directory output) is what a write killed
    before its rename leaves; the next write of NAME removes them, and nothing else."""
    (tmp_path / ".out.txt.k1ll3d.tmp").write_text("half")
    (tmp_path / ".out.txt.0ther.tmp").mkdir()
    (tmp_path / ".out.txt.0ther.tmp" / "part").write_text("half")
    kept = [tmp_path / ".out.txt.k1ll3d", tmp_path / ".model.k1ll3d.tmp", tmp_path / "out.txt.tmp"]
    for path in kept:
        path.write_text("not a temporary of out.txt")
    write_text(tmp_path / "out.txt", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.txt", *(p.name for p in kept)]
    )
    assert (tmp_path / "out.txt").read_text() == "whole"

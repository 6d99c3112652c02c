"""`ketchup fetch`: hub models and datasets into the cache, local ones only recorded."""

from __future__ import annotations

import json

import huggingface_hub
import pytest

import ketchup.data.registry
from ketchup.cli import main
from ketchup.stages.fetch import LEGACY_WEIGHTS, MODEL_FILES


@pytest.fixture
def downloads(monkeypatch, tmp_path):
    """snapshot_download replaced by a fake cache: the calls it got, and whether its snapshot
    holds safetensors weights (set `downloads.safetensors = False` for a legacy repository)."""

    class Downloads(list):
        safetensors = True

    calls = Downloads()

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, list(allow_patterns)))
        snapshot = tmp_path / repo_id.replace("/", "--") / "snapshots" / "0a1b2c"
        snapshot.mkdir(parents=True, exist_ok=True)
        if calls.safetensors:
            (snapshot / "model.safetensors").write_bytes(b"")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def fetch(tmp_path, *args: str) -> dict:
    out = tmp_path / "record.json"
    assert main(["fetch", *args, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_hub_model_is_fetched_at_its_revision(downloads, tmp_path):
    record = fetch(tmp_path, "--model", "google/flan-t5-xl", "--revision", "v1.0")
    assert downloads == [("google/flan-t5-xl", "v1.0", MODEL_FILES)]
    assert record == {
        "model": "google/flan-t5-xl",
        "source": "hub",
        "revision": "v1.0",
        "commit": "0a1b2c",
        "path": str(tmp_path / "google--flan-t5-xl" / "snapshots" / "0a1b2c"),
    }
    downloads.clear()
    downloads.safetensors = False  # a repository with only pytorch_model.bin
    assert fetch(tmp_path, "--model", "t5-base")["revision"] is None
    assert downloads == [
        ("t5-base", None, MODEL_FILES),
        ("t5-base", None, MODEL_FILES + LEGACY_WEIGHTS),
    ]


def test_a_local_model_directory_is_only_recorded(downloads, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    record = fetch(tmp_path, "--model", str(tmp_path / "model"))
    assert record == {
        "model": str(tmp_path / "model"),
        "source": "local",
        "path": str(tmp_path / "model"),
    }
    assert "local, nothing to fetch" in capsys.readouterr().out
    assert downloads == []
    # a path that does not exist is not looked up on the hub
    assert main(["fetch", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err and downloads == []


def test_a_hub_dataset_is_loaded_once_and_local_files_are_only_recorded(monkeypatch, tmp_path):
    loaded = []

    def load_task(name, task):
        loaded.append((name, task.dataset, task.files))
        return {"train": [{}] * 3, "validation": [{}], "test": [{}] * 2}

    monkeypatch.setattr(ketchup.data.registry, "load_task", load_task)
    record = fetch(tmp_path, "--task", "xsum", "--task-json", '{"dataset": "xsum"}')
    assert loaded == [("xsum", "xsum", None)]
    assert record["source"] == "hub" and record["hub_id"] == "EdinburghNLP/xsum"
    assert record["examples"] == {"train": 3, "validation": 1, "test": 2}

    files = {s: str(tmp_path / f"{s}.jsonl") for s in ("train", "validation", "test")}
    task = json.dumps({"dataset": "xsum", "files": files})
    record = fetch(tmp_path, "--task", "xsum", "--task-json", task)
    assert record["source"] == "local" and record["files"] == sorted(files.values())
    assert len(loaded) == 1

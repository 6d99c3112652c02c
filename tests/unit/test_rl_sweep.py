"""scripts/rl_sweep.py reads its study from several config files, merged in order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_sweep():
    spec = importlib.util.spec_from_file_location("rl_sweep", ROOT / "scripts" / "rl_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_files_merge_key_by_key(tmp_path):
    sweep = load_sweep()
    study = sweep.Study([ROOT / "config.yaml", ROOT / "configs" / "long.yaml"], tmp_path)
    assert study.seeds == [0, 1, 2]  # from long.yaml
    train = study.raw["distill"]["train"]
    assert (train["steps"], train["learning_rate"]) == (200, 1e-5)  # from long.yaml
    assert train["batch_size"] == 32  # from config.yaml, which long.yaml leaves alone
    assert study.raw["distill"]["ks"] == [2, 4, 8, 16]
    # the workflow's paths of the long study (its own results/long/)
    assert study.warm_start(1) == tmp_path / "long" / "restaurants/students/t5-tiny/kl/seed1/model"

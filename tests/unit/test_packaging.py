"""Packaging: the conda environment matches pyproject.toml, and the CLI lists every stage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from ketchup.cli import VERBS, main

ROOT = Path(__file__).resolve().parents[2]
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_lists_the_same_packages_as_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pypi = {_name(r) for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "envs" / "ketchup.yaml").read_text())
    conda = {
        CONDA_TO_PYPI.get(_name(d), _name(d)) for d in env["dependencies"] if isinstance(d, str)
    }
    assert conda - {"python"} == pypi


def _ranges() -> dict[str, object]:
    """pyproject.toml's dependencies (the test extra too): name -> SpecifierSet."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {_name(r): Requirement(r).specifier for r in requirements}


def test_conda_env_has_pyprojects_version_ranges():
    from packaging.specifiers import SpecifierSet

    env = yaml.safe_load((ROOT / "envs" / "ketchup.yaml").read_text())
    ranges = _ranges()
    for dependency in env["dependencies"]:
        name, _, spec = dependency.partition(" ")
        name = CONDA_TO_PYPI.get(_name(name), _name(name))
        if name != "python":
            assert SpecifierSet(spec.replace(" ", "")) == ranges[name], dependency


def test_lock_file_pins_every_dependency_inside_its_range():
    """requirements-lock.txt (the tested environment) pins each dependency of pyproject.toml at
    a version its range admits, torch at the local CPU build's 2.13.0."""
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version
    for name, spec in _ranges().items():
        assert name in pins, f"{name} is not in requirements-lock.txt"
        assert spec.contains(pins[name]), f"{name}=={pins[name]} is outside {spec}"
    assert pins["torch"] == "2.13.0"


def test_torch_range_admits_the_local_cpu_build():
    """A range that excludes 2.13.0 makes pip pull a multi-GB CUDA build on this machine."""
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if _name(r) == "torch"]
    assert torch.specifier.contains("2.13.0")


def test_help_lists_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "ketchup", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in VERBS:
        assert verb.name in out


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v.name)
def test_each_verb_documents_its_inputs_and_outputs(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb.name, "--help"])
    assert exit_.value.code == 0
    assert verb.description.split()[0] in capsys.readouterr().out


# What a bare GPU image lacks (scripts/gpu_check.sh installs jsonschema and TRL's stack from
# wheels, never these), and ketchup not installed: run from the checkout on PYTHONPATH.
_WITHOUT_OPTIONAL = """
import importlib.abc, importlib.metadata, sys

ABSENT = {"snakemake", "rouge_score", "datasets", "openai", "trl", "pandas", "matplotlib"}

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Absent())
version = importlib.metadata.version
def not_installed(name):
    if name == "ketchup":
        raise importlib.metadata.PackageNotFoundError(name)
    return version(name)
importlib.metadata.version = not_installed

import ketchup.ops.bench, ketchup.ops.bench_gpu, ketchup.stages.distill, ketchup.train.loop
from ketchup.provenance import machine_record
assert machine_record()["ketchup"] is None
from ketchup.cli import main
sys.exit(main(["--help"]))
"""


def test_the_gpu_check_code_imports_without_the_optional_packages_or_an_install():
    """`ketchup bench --gpu` and `ketchup distill` as scripts/gpu_check.sh runs them on a GPU
    image: no snakemake, rouge-score, datasets, openai, TRL, pandas or matplotlib, and ketchup
    run from the source tree without its distribution metadata (a resolved config records
    ketchup's version as null there)."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPTIONAL], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "distill" in done.stdout

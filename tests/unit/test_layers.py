"""The package in layers: every import (module level or inside a function) points down, never up
and never sideways into another package of the same layer, so no two modules import each other.

The layers, bottom to top, as docs/workflow.md draws them. A module's layer is that of the longest
entry that names it or a package above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ketchup

LAYERS = [
    ["ketchup.errors", "ketchup.provenance", "ketchup.math"],
    ["ketchup.files", "ketchup.models.architectures", "ketchup.data.catalog"],
    ["ketchup.config"],
    ["ketchup.models"],
    ["ketchup.data"],
    ["ketchup.evaluate"],
    ["ketchup.train"],
    ["ketchup.report"],
    ["ketchup.ops"],
    ["ketchup.stages"],
    ["ketchup.verb_config"],
    ["ketchup.cli"],
    ["ketchup.__main__"],
]
ROOT = Path(ketchup.__file__).parent


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the entry that placed it): the longest entry that is the module or above it."""
    best = None
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (
                best is None or len(entry) > len(best[1])
            ):
                best = (i, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/workflow.md"
    return best


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, resolved to the longest known module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets.update(f"{base}.{alias.name}" for alias in node.names)
            targets.add(base)
    resolved = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target.startswith("ketchup") and target != name:
            resolved.add(target)
    return resolved


def test_every_module_has_a_layer():
    for name in modules():
        if name != "ketchup":
            layer_of(name)


def test_imports_point_down():
    known = modules()
    wrong = []
    for name, path in sorted(known.items()):
        if name == "ketchup":
            continue
        mine, my_entry = layer_of(name)
        for target in sorted(imports_of(name, path, known)):
            theirs, their_entry = layer_of(target)
            if theirs > mine or (theirs == mine and their_entry != my_entry):
                wrong.append(f"{name} (layer {mine}) imports {target} (layer {theirs})")
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check can fail: an import of the trainer from the math layer is found."""
    fake = tmp_path / "returns.py"
    fake.write_text("def f():\n    from ketchup.train.loop import train\n")
    known = modules()
    found = imports_of("ketchup.math.returns", fake, known)
    assert "ketchup.train.loop" in found
    assert layer_of("ketchup.train.loop")[0] > layer_of("ketchup.math.returns")[0]


def test_few_modules_lie_flat():
    flat = sorted(p.stem for p in ROOT.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(flat) <= 12, flat

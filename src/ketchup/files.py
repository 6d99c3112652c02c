"""Files on disk: atomic writes, JSONL, and the resolved config a stage writes beside its outputs.

Every output is written to a temporary name in the same directory and renamed into place, so an
interrupted job never leaves a file (or directory) that looks finished. The temporary is a hidden
sibling, `.NAME.XXXX.tmp`; a killed write leaves it behind, and the next write of NAME (the next
run of the job) removes it first.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


class CorruptFileError(ValueError):
    """A file that exists but cannot be read back (truncated, malformed); the message names it and
    what to delete."""


def temporary_siblings(path: str | Path) -> list[Path]:
    """The hidden temporaries of `path` in its directory (`.NAME.XXXX.tmp`, files or
    directories): a write of `path` in progress, or one killed before its rename."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    import glob

    return glob.escape(name)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the temporaries that killed writes of `path` left; returns what was removed.

    Only one job writes a given output at a time (Snakemake's locks; in a data-parallel job, only
    the main process), so any temporary of `path` that exists when its job writes it again is a
    leftover."""
    removed = temporary_siblings(path)
    for leftover in removed:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success rename it to `path`, on error remove it.

    The temporaries earlier writes of `path` left behind (killed before their rename) are removed
    first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp / mkdtemp create private (0600 / 0700) entries; give the result the usual mode
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if directory else 0o666) & ~umask)
        if directory and path.exists():
            # renamed aside, not deleted in place: killed here, `path` is whole or absent, and
            # the old copy is a leftover the next write removes
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _json_lines(path: Path, advice: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; CorruptFileError naming the
    file and line, ending with `advice`, for a line that is not JSON."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _utf8_line(path, lineno, raw)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise CorruptFileError(
                    f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno}); {advice}"
                ) from None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file; a malformed line raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [row for _, row in _json_lines(path, "fix or delete the file")]


def check_jsonl(path: str | Path) -> None:
    """Raise CorruptFileError naming the file and the first line that is not a JSON object
    (blank lines are skipped), without keeping the rows."""
    advice = "each line must be one JSON object"
    for lineno, row in _json_lines(Path(path), advice):
        if not isinstance(row, dict):
            raise CorruptFileError(
                f"{path}, line {lineno}: a JSON {type(row).__name__}, not an object; {advice}"
            )


def _utf8_line(path: Path, lineno: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(
            f"{path}, line {lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
            f"{e.start + 1}); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def check_utf8(path: str | Path) -> None:
    """Raise CorruptFileError naming the first line of a text file that is not UTF-8."""
    path = Path(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            _utf8_line(path, lineno, raw)


def _cell(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return value


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 4) -> str:
    """CSV with a header; floats with `digits` decimals, NaN as an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row[c], digits) for c in columns})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as strings; a clear error for a missing file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    check_utf8(path)
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def resolved_config_name(stage: str) -> str:
    """The file name under which `stage` records its resolved config."""
    return f"{stage}.config.json"


def write_resolved_config(out_dir: str | Path, stage: str, config: Any, **inputs: Any) -> None:
    """Write `<out_dir>/<stage>.config.json`: the stage's resolved config, its inputs, and where
    and with what it ran (`ketchup.provenance`)."""
    import dataclasses

    from ketchup.provenance import machine_record

    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    record = {"stage": stage, "config": data, **inputs, "provenance": machine_record()}
    write_json(Path(out_dir) / resolved_config_name(stage), record)

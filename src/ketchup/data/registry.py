"""The datasets a task can use: the paper's, loaded with `datasets.load_dataset`, and the rest.

Each entry (`DatasetSpec`) says where the data live on the Hugging Face Hub, which hub split serves
as train / validation / test, how a hub row becomes an example, and the task's default prompt and
metric. `load_task` returns every dataset in one format, a dict split -> list of examples:

    {"id": str, "source": str, "target": str, "references": [target, ...], "meta": {...}}

Local copies: with `files` set in the task config, the three files (JSONL/JSON, CSV or Parquet, by
suffix) are read in the hub's row format instead of the hub.

Carved splits: a split the hub lacks (europarl_en_nl has only train, gsm8k has no validation) is cut
from the end of the training split, in hub order, so it is deterministic: each carved split takes
`carve_size(n) = min(2000, max(1, n // 20))` rows of the n training rows (5%, at most 2000), the
test split the last block, the validation split the block before it, and training keeps the rest.
The same happens whenever a split's file is the training file itself, for any dataset: a local copy
of a hub dataset without that split can name its one file three times, and naming the training
file again never copies training rows into validation or test.

Formats: dailydialog's source is the context turns joined with " __eou__ " (the corpus's own turn
separator, which survives any tokenizer, unlike a newline under T5's), its target the last turn;
dart's source is the triples as "s | p | o && s | p | o" and its references all annotation texts.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ketchup.config import SPLITS, ConfigError
from ketchup.data import arithmetic, embedded
from ketchup.data.catalog import DATASET_METRICS, first_reported
from ketchup.files import CorruptFileError, check_jsonl, check_utf8
from ketchup.models import hub

if TYPE_CHECKING:
    from ketchup.config import TaskConfig

CARVE_FRACTION_DIVISOR = 20  # a carved split is 1/20 = 5% of the training rows ...
CARVE_MAX = 2000  # ... but at most this many
DIALOGUE_TURN_SEPARATOR = " __eou__ "

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class TaskDataError(ValueError):
    """Task data that cannot be used; the message names the file or hub id, split and row."""


class RowError(ValueError):
    """A converter's complaint about one row; `load_task` adds where the row is."""


class Converted(NamedTuple):
    """A hub row in the example format, less the id when the row has none."""

    source: str
    references: list[str]
    meta: dict[str, Any]
    id: str | None = None


Converter = Callable[[Mapping[str, Any], "TaskConfig"], Converted]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a task can name: where it lives, how a row becomes an example, its defaults.

    `hub_splits` maps each of train / validation / test to the hub's split name, or to None when the
    hub has no such split and it is carved from the training split (see the module docstring).
    """

    name: str
    prompt: str
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[tuple[str, str | None], ...] = field(
        default=(("train", "train"), ("validation", "validation"), ("test", "test"))
    )
    convert: Converter | None = None
    # the LLM judge's rubric: summarization, translation, dialogue, data-to-text or math
    kind: str = "data-to-text"

    @property
    def metric(self) -> str:
        """The metric the dataset is scored by unless the config names one."""
        return DATASET_METRICS[self.name]

    def hub_split(self, split: str) -> str | None:
        """The hub's name of `split`, or None when it is carved from training."""
        return dict(self.hub_splits)[split]


# ----------------------------------------------------------------------------------------------
# Row converters


def _field_name(path: Sequence[str | int]) -> str:
    """'annotations.text[2]' for the path ('annotations', 'text', 2)."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name


_ABSENT = object()


def _lookup(row: Mapping[str, Any], path: Sequence[str | int]) -> Any:
    """The value at `path`: _ABSENT when a key or index does not exist, None for a null."""
    value: Any = row
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _ABSENT
        if value is None:
            return None
    return value


def _fields_there(row: Mapping[str, Any], path: Sequence[str | int]) -> str:
    """What the row has where `path` is missing or null: the fields with a value of the deepest
    mapping reached (a CSV row or a JSON row without the key reads its value as null)."""
    value: Any = row
    depth = 0  # value is what path[:depth] names; path[depth] has no value in it
    for part in path[:-1]:
        try:
            inner = value[part]
        except (KeyError, IndexError, TypeError):
            break
        if not isinstance(inner, (Mapping, list, tuple)):
            break
        value, depth = inner, depth + 1
    if isinstance(value, Mapping):
        under = f" under '{_field_name(path[:depth])}'" if depth else ""
        names = [str(k) for k, v in value.items() if v is not None]
        return f"; the row's fields{under}: {', '.join(names) or '(none)'}"
    if isinstance(value, (list, tuple)):
        return f"; '{_field_name(path[:depth])}' has {len(value)} items"
    return ""


def _require(row: Mapping[str, Any], path: Sequence[str | int]) -> Any:
    value = _lookup(row, path)
    if value is _ABSENT:
        raise RowError(f"field '{_field_name(path)}' is missing{_fields_there(row, path)}")
    # A JSON row without the key and an empty CSV cell both arrive as null.
    if value is None:
        raise RowError(f"field '{_field_name(path)}' is missing or empty{_fields_there(row, path)}")
    return value


def _text(row: Mapping[str, Any], *path: str | int) -> str:
    """The stripped text at `path` in `row` (keys and list indices); RowError if absent or empty."""
    value = _require(row, path)
    # Numbers are accepted as text (a JSON answer 42); lists and mappings are not.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field '{_field_name(path)}' must be text, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise RowError(f"field '{_field_name(path)}' is empty")
    return text


def _list(row: Mapping[str, Any], *path: str | int) -> list:
    """The non-empty list at `path` in `row`; RowError otherwise."""
    value = _require(row, path)
    if not isinstance(value, (list, tuple)):
        raise RowError(f"field '{_field_name(path)}' must be a list, got {type(value).__name__}")
    if not value:
        raise RowError(f"field '{_field_name(path)}' is empty")
    return list(value)


def _convert_xsum(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    row_id = row.get("id")
    return Converted(
        _text(row, "document"),
        [_text(row, "summary")],
        {},
        None if row_id is None else str(row_id),
    )


def _convert_europarl_en_nl(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    return Converted(_text(row, "translation", "en"), [_text(row, "translation", "nl")], {})


def _convert_gsm8k(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    question, answer = _text(row, "question"), _text(row, "answer")
    gold = extract_answer(answer)
    if gold is None:
        raise RowError("field 'answer' has no final number")
    return Converted(question, [answer], {"answer": gold})


def _convert_dailydialog(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    dialog = _list(row, "dialog")
    if len(dialog) < 2:
        raise RowError("field 'dialog' has only one turn; needs at least 2")
    # The last turn is the target and must be there; an empty context turn carries nothing.
    target = _text(row, "dialog", len(dialog) - 1)
    context = [str(turn).strip() for turn in dialog[:-1] if turn is not None and str(turn).strip()]
    if not context:
        raise RowError("field 'dialog' has no non-empty context turn before the last one")
    return Converted(DIALOGUE_TURN_SEPARATOR.join(context), [target], {})


def _convert_dart(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    triples = []
    for i, triple in enumerate(_list(row, "tripleset")):
        if not isinstance(triple, (list, tuple)) or len(triple) != 3:
            raise RowError(f"field 'tripleset[{i}]' must be [subject, predicate, object]")
        triples.append([_text(row, "tripleset", i, j) for j in range(3)])
    n_texts = len(_list(row, "annotations", "text"))
    references = [_text(row, "annotations", "text", i) for i in range(n_texts)]
    source = " && ".join(" | ".join(triple) for triple in triples)
    return Converted(source, references, {"tripleset": triples})


def _references(row: Mapping[str, Any], name: str) -> list[str]:
    """The texts of a list column; in a CSV file, a cell holding a JSON list of strings."""
    value = _require(row, [name])
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"field '{name}' is not a JSON list ({e.msg})") from None
        row = {name: value}
    return [_text(row, name, i) for i in range(len(_list(row, name)))]


def _convert_file(row: Mapping[str, Any], task: TaskConfig) -> Converted:
    """Your own rows: `source_field`, and `target_field` and / or `references_field` (a list of
    references: the target is the first unless `target_field` names it)."""
    source = _text(row, task.source_field)
    target = _text(row, task.target_field) if task.target_field else None
    if task.references_field is None:
        return Converted(source, [target], {})
    references = _references(row, task.references_field)
    if target is not None:
        references = [target, *(r for r in references if r != target)]
    return Converted(source, references, {})


# ----------------------------------------------------------------------------------------------
# The registry

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        # Generated by ketchup.data.embedded; no rows to convert.
        DatasetSpec("embedded", prompt="{source}", hub_splits=()),
        # Generated by ketchup.data.arithmetic: GSM8K-style problems, scored like GSM8K.
        DatasetSpec("arithmetic", prompt="{source}", kind="math", hub_splits=()),
        DatasetSpec(
            "xsum",
            prompt="summarize: {source}",
            kind="summarization",
            hub_id="EdinburghNLP/xsum",
            convert=_convert_xsum,
        ),
        DatasetSpec(
            "europarl_en_nl",
            prompt="translate English to Dutch: {source}",
            kind="translation",
            hub_id="Helsinki-NLP/europarl",
            hub_config="en-nl",
            hub_splits=(("train", "train"), ("validation", None), ("test", None)),
            convert=_convert_europarl_en_nl,
        ),
        DatasetSpec(
            "gsm8k",
            prompt="Question: {source}\nAnswer:",
            kind="math",
            hub_id="openai/gsm8k",
            hub_config="main",
            hub_splits=(("train", "train"), ("validation", None), ("test", "test")),
            convert=_convert_gsm8k,
        ),
        DatasetSpec(
            "dailydialog",
            prompt="Continue the dialogue: {source}",
            kind="dialogue",
            hub_id="li2017dailydialog/daily_dialog",
            convert=_convert_dailydialog,
        ),
        DatasetSpec(
            "dart",
            prompt="{source}",
            hub_id="Yale-LILY/dart",
            convert=_convert_dart,
        ),
        # The user's own files, with source_field, target_field / references_field from the config.
        DatasetSpec("file", prompt="{source}", hub_splits=(), convert=_convert_file),
    )
}


# The datasets the project generates from `embedded`'s sizes and seed, with their generators.
GENERATED: dict[str, Callable[[Any], dict[str, list[dict]]]] = {
    "embedded": embedded.generate,
    "arithmetic": arithmetic.generate,
}


def dataset_spec(dataset: str) -> DatasetSpec:
    """The registry entry of `dataset`; ConfigError listing the known names if there is none."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}"
        ) from None


def task_prompt(task: TaskConfig) -> str:
    """The task's prompt template (with '{source}'): the config's, else the dataset's default."""
    return task.prompt if task.prompt is not None else dataset_spec(task.dataset).prompt


def task_kind(task: TaskConfig) -> str:
    """The judge's rubric for the task: the dataset's kind (your own files: data-to-text)."""
    return dataset_spec(task.dataset).kind


def task_metric(task: TaskConfig) -> str:
    """The task's metric ('bleu', 'rouge' or 'accuracy'): the config's, else the dataset's."""
    return task.metric if task.metric is not None else dataset_spec(task.dataset).metric


def task_selection_metric(task: TaskConfig) -> str:
    """What checkpoints and K are selected by on validation: the config's `selection_metric`,
    else the task's first reported metric (BLEU, ROUGE-1, accuracy)."""
    if task.selection_metric is not None:
        return task.selection_metric
    return first_reported(task_metric(task))


def resolved_task(task: TaskConfig) -> dict[str, Any]:
    """The task's config as a job ran it, for its resolved config: the prompt, the metric and the
    selection metric actually used in place of null (the dataset's own)."""
    from ketchup.config import to_dict

    return {
        **to_dict(task),
        "prompt": task_prompt(task),
        "metric": task_metric(task),
        "selection_metric": task_selection_metric(task),
    }


def format_prompt(template: str, source: str) -> str:
    """The model input: `template` with '{source}' replaced (braces in `source` are safe)."""
    if "{source}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{source}} placeholder")
    return template.replace("{source}", source)


# A number as GSM8K writes it: optional sign, digits with optional thousands commas, decimals.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def normalise_number(number: str) -> str:
    """'1,234' -> '1234', '-3.0' -> '-3', '2.50' -> '2.5', '+7' -> '7', '-0' -> '0'."""
    number = number.replace(",", "").lstrip("+")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number in ("-0", "") else number


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K-style solution, normalised; None if there is none.

    The first number after the last '####' when there is one, else the last number in the text.
    """
    marker = text.rfind("####")
    if marker >= 0:
        found = _NUMBER.search(text, marker + 4)
        if found:
            return normalise_number(found.group())
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


# ----------------------------------------------------------------------------------------------
# Loading


def carve_size(n_train: int) -> int:
    """Rows in each split carved from `n_train` training rows: 5%, at least 1, at most 2000."""
    return min(CARVE_MAX, max(1, n_train // CARVE_FRACTION_DIVISOR))


@dataclass
class _RawSplit:
    rows: Any  # a datasets.Dataset
    origin: str  # the file or hub id the rows come from, for error messages
    offset: int = 0  # position of the first row in its origin, so errors give the origin's row


def _read_file(path: str, task_name: str, split: str):
    import datasets

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"task '{task_name}': files.{split}: {path} does not exist")
    suffix = file.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ConfigError(
            f"task '{task_name}': files.{split}: {path}: unknown suffix {suffix!r}; "
            f"use one of {', '.join(FILE_FORMATS)}"
        )
    fmt = FILE_FORMATS[suffix]
    if fmt != "parquet":
        try:
            check_utf8(file)  # else a UnicodeDecodeError from deep inside datasets
            if fmt == "json" and _is_json_lines(file):
                check_jsonl(file)  # datasets names only a byte position, not the line
        except CorruptFileError as e:
            raise TaskDataError(str(e)) from None
    # datasets fails on a file without rows with an obscure message (or StopIteration).
    if _has_no_rows(file, fmt):
        raise TaskDataError(f"{path}: split {split} is empty")
    kwargs: dict[str, Any] = {}
    if fmt == "csv":
        # Every column as text: pandas would turn an id "007" or an answer "42" into a number.
        with file.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        kwargs["features"] = datasets.Features({col: datasets.Value("string") for col in header})
    try:
        return datasets.load_dataset(fmt, data_files={"train": str(file)}, split="train", **kwargs)
    except Exception as e:  # datasets wraps parser errors in several types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskDataError(f"{path}: cannot be read as {fmt}: {reason}") from e


def _is_json_lines(file: Path) -> bool:
    """JSON lines (one object per line), not one JSON array: the first character is not '['."""
    with file.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return not line.lstrip().startswith("[")
    return True


def _has_no_rows(file: Path, fmt: str) -> bool:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(file).metadata.num_rows == 0
        except Exception:  # not Parquet: let datasets report it
            return False
    with file.open(encoding="utf-8", newline="") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            next(reader, None)  # the header
            return next(reader, None) is None
        return all(not line.strip() for line in f)


def _read_hub(spec: DatasetSpec, hub_split: str, task_name: str, revision: str | None):
    import datasets

    try:
        try:
            return datasets.load_dataset(
                spec.hub_id, spec.hub_config, split=hub_split, revision=revision
            )
        except RuntimeError as e:
            if "scripts are no longer supported" not in str(e) or revision:
                raise
            # A repository that still has a loading script: the hub's automatic Parquet export
            # holds the same rows and loads without it (a pinned revision is taken as it is).
            return datasets.load_dataset(
                spec.hub_id, spec.hub_config, split=hub_split, revision="refs/convert/parquet"
            )
    except Exception as e:
        if hub.is_hub_failure(e):
            raise hub.dataset_error(task_name, spec.hub_id, spec.hub_config, hub_split, e) from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TaskDataError(
            f"hub {spec.hub_id} ({spec.hub_config or 'default'}) split {hub_split}: cannot be "
            f"loaded: {reason}; save it locally and set tasks.{task_name}.files"
        ) from e


def _raw_splits(task_name: str, task: TaskConfig, spec: DatasetSpec) -> dict[str, _RawSplit]:
    """Each split's rows and their origin, with missing splits carved from training."""
    raw: dict[str, _RawSplit] = {}
    carved: list[str] = []
    if task.files is not None:
        train_path = Path(task.files.train)
        for split in SPLITS:
            path = getattr(task.files, split)
            if split != "train" and Path(path).resolve() == train_path.resolve():
                carved.append(split)
            else:
                raw[split] = _RawSplit(_read_file(path, task_name, split), path)
    elif spec.hub_id is None:
        raise ConfigError(f"task '{task_name}': dataset '{spec.name}' needs files")
    else:
        for split in SPLITS:
            hub_split = spec.hub_split(split)
            if hub_split is None:
                carved.append(split)
            else:
                rows = _read_hub(spec, hub_split, task_name, task.revision)
                raw[split] = _RawSplit(rows, f"hub {spec.hub_id} split {hub_split}")
    if carved:
        train = raw["train"]
        n = len(train.rows)
        size = carve_size(n)
        if n - size * len(carved) < 1:
            raise TaskDataError(
                f"{train.origin}: {n} training rows are too few to carve {' and '.join(carved)}"
            )
        end = n
        # Test takes the last block so that it stays put whether or not validation is carved too.
        for split in sorted(carved, key=lambda s: s != "test"):
            raw[split] = _RawSplit(
                train.rows.select(range(end - size, end)), train.origin, end - size
            )
            end -= size
        raw["train"] = _RawSplit(train.rows.select(range(end)), train.origin)
    return raw


def _convert_split(
    raw: _RawSplit, split: str, spec: DatasetSpec, task: TaskConfig
) -> list[dict[str, Any]]:
    examples = []
    for i, row in enumerate(raw.rows):
        try:
            converted = spec.convert(row, task)
        except RowError as e:
            # Rows are numbered from 1 in the origin's order (a CSV header is not a row).
            raise TaskDataError(
                f"{raw.origin}, split {split}, row {raw.offset + i + 1}: {e}"
            ) from None
        examples.append(
            {
                "id": converted.id or f"{spec.name}-{split}-{i:06d}",
                "source": converted.source,
                "target": converted.references[0],
                "references": converted.references,
                "meta": converted.meta,
            }
        )
    return examples


def load_task(name: str, task: TaskConfig) -> dict[str, list[dict[str, Any]]]:
    """Load (or generate) task `name`: {"train": [...], "validation": [...], "test": [...]}.

    `task.max_examples` caps each split to its first N examples, in file / hub order after
    carving (for `embedded`, in generation order), so a capped task is a prefix of the full one.
    Raises ConfigError for an unknown dataset or a missing file, TaskDataError for an empty split
    or a bad row (naming the file or hub id, the split and the row).
    """
    spec = dataset_spec(task.dataset)
    limits = {split: getattr(task.max_examples, split) for split in SPLITS}
    if spec.name in GENERATED:
        generated = GENERATED[spec.name](task.embedded)
        return {split: generated[split][: limits[split]] for split in SPLITS}
    if spec.name == "file" and (
        task.files is None
        or not task.source_field
        or not (task.target_field or task.references_field)
    ):
        raise ConfigError(
            f"config key 'tasks.{name}': dataset 'file' needs files, source_field and "
            "target_field or references_field"
        )
    raw = _raw_splits(name, task, spec)
    out: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        if len(raw[split].rows) == 0:
            raise TaskDataError(f"{raw[split].origin}: split {split} is empty")
        if limits[split] is not None and limits[split] < len(raw[split].rows):
            raw[split].rows = raw[split].rows.select(range(limits[split]))
        out[split] = _convert_split(raw[split], split, spec, task)
    return out

"""The dataset registry: each entry loaded from small local files in its hub's row format.

Nothing is downloaded: the hub-format files are written to tmp_path and named in `files`; the hub
path itself is exercised with `datasets.load_dataset` replaced by an in-memory stand-in.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ketchup.config import ConfigError, TaskConfig, parse_section
from ketchup.data.registry import (
    DATASETS,
    TaskDataError,
    carve_size,
    extract_answer,
    format_prompt,
    load_task,
    task_metric,
    task_prompt,
)
from ketchup.models.hub import OFFLINE_VARIABLES, HubError

# ----------------------------------------------------------------------------------------------
# Helpers


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_parquet(path: Path, rows: list[dict]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def make_task(dataset: str, files: tuple[str, str, str] | None = None, **extra) -> TaskConfig:
    """A task config through the real schema path, so defaults are the schema's."""
    data = {"dataset": dataset, **extra}
    if files is not None:
        data["files"] = dict(zip(("train", "validation", "test"), files, strict=True))
    return parse_section(TaskConfig, data, "task", "tasks.t")


def check_format(splits: dict) -> None:
    assert list(splits) == ["train", "validation", "test"]
    for examples in splits.values():
        assert examples
        for ex in examples:
            assert set(ex) == {"id", "source", "target", "references", "meta"}
            assert isinstance(ex["id"], str) and ex["id"]
            assert isinstance(ex["source"], str) and ex["source"]
            assert ex["references"] and ex["references"][0] == ex["target"]
            assert all(isinstance(r, str) and r for r in ex["references"])
            json.dumps(ex["meta"])


def xsum_rows(n: int, prefix: str = "") -> list[dict]:
    return [
        {
            "document": f"{prefix}document {i} {{with braces}}",
            "summary": f"summary {i}",
            "id": f"{i}",
        }
        for i in range(n)
    ]


def europarl_rows(n: int) -> list[dict]:
    return [{"translation": {"en": f"sentence {i}", "nl": f"zin {i}"}} for i in range(n)]


def gsm8k_rows(n: int) -> list[dict]:
    return [
        {
            "question": f"What is {i} times 1000?",
            "answer": f"{i} * 1000 = {i * 1000:,}\n#### {i * 1000:,}",
        }
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------
# Registry entries


def test_registry_lists_every_config_dataset():
    from typing import get_args

    from ketchup.config import Dataset

    assert sorted(DATASETS) == sorted(get_args(Dataset))


@pytest.mark.parametrize(
    ("dataset", "prompt", "metric"),
    [
        ("embedded", "{source}", "bleu"),
        ("xsum", "summarize: {source}", "rouge"),
        ("europarl_en_nl", "translate English to Dutch: {source}", "bleu"),
        ("gsm8k", "Question: {source}\nAnswer:", "accuracy"),
        ("dailydialog", "Continue the dialogue: {source}", "bleu"),
        ("dart", "{source}", "bleu"),
        ("file", "{source}", "bleu"),
    ],
)
def test_default_prompts_and_metrics(dataset, prompt, metric):
    extra = {"source_field": "s", "target_field": "t"} if dataset == "file" else {}
    files = ("a.jsonl",) * 3 if dataset == "file" else None
    task = make_task(dataset, files, **extra)
    assert task_prompt(task) == prompt
    assert task_metric(task) == metric
    overridden = dataclasses.replace(task, prompt="Q: {source} A:", metric="rouge")
    assert task_prompt(overridden) == "Q: {source} A:"
    assert task_metric(overridden) == "rouge"


def test_format_prompt_keeps_braces_in_the_source():
    assert format_prompt("summarize: {source}", "a {b} {source} c") == "summarize: a {b} {source} c"
    with pytest.raises(ValueError, match="no \\{source\\} placeholder"):
        format_prompt("summarize:", "x")


def test_xsum_from_jsonl(tmp_path):
    files = tuple(
        write_jsonl(tmp_path / f"{split}.jsonl", xsum_rows(n, split))
        for split, n in (("train", 5), ("validation", 2), ("test", 3))
    )
    splits = load_task("t", make_task("xsum", files))
    check_format(splits)
    assert [len(v) for v in splits.values()] == [5, 2, 3]
    ex = splits["test"][1]
    assert ex == {
        "id": "1",
        "source": "testdocument 1 {with braces}",
        "target": "summary 1",
        "references": ["summary 1"],
        "meta": {},
    }


def test_xsum_from_csv_keeps_every_column_as_text(tmp_path):
    rows = [{"id": "007", "document": 'a, quoted "doc"', "summary": "42"}] + xsum_rows(2)
    path = write_csv(tmp_path / "x.csv", rows)
    other = write_csv(tmp_path / "y.csv", xsum_rows(2))
    splits = load_task("t", make_task("xsum", (path, other, other)))
    check_format(splits)
    assert splits["train"][0]["id"] == "007"
    assert splits["train"][0]["source"] == 'a, quoted "doc"'
    assert splits["train"][0]["target"] == "42"


def test_europarl_from_parquet_carves_validation_and_test_from_the_end(tmp_path):
    path = write_parquet(tmp_path / "europarl.parquet", europarl_rows(60))
    splits = load_task("t", make_task("europarl_en_nl", (path, path, path)))
    check_format(splits)
    size = carve_size(60)
    assert size == 3
    assert [ex["source"] for ex in splits["test"]] == ["sentence 57", "sentence 58", "sentence 59"]
    assert [ex["target"] for ex in splits["validation"]] == ["zin 54", "zin 55", "zin 56"]
    assert [ex["source"] for ex in splits["train"]] == [f"sentence {i}" for i in range(54)]


def test_carve_size_is_five_percent_capped():
    assert carve_size(3) == 1
    assert carve_size(100) == 5
    assert carve_size(7473) == 373  # gsm8k's training split
    assert carve_size(2_000_000) == 2000  # europarl en-nl


def test_gsm8k_carves_validation_only_and_extracts_the_answer(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(40))
    test = write_jsonl(tmp_path / "test.jsonl", gsm8k_rows(4))
    splits = load_task("t", make_task("gsm8k", (train, train, test)))
    check_format(splits)
    assert [len(v) for v in splits.values()] == [38, 2, 4]
    ex = splits["validation"][1]
    assert ex["source"] == "What is 39 times 1000?"
    assert ex["target"] == "39 * 1000 = 39,000\n#### 39,000"
    assert ex["meta"] == {"answer": "39000"}
    assert format_prompt(task_prompt(make_task("gsm8k")), ex["source"]) == (
        "Question: What is 39 times 1000?\nAnswer:"
    )


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so 1,000 + 234 = 1,234\n#### 1,234", "1234"),
        ("The answer is 42.", "42"),
        ("-3.0", "-3"),
        ("#### -3.0", "-3"),
        ("2.50 dollars", "2.5"),
        ("5 apples and 7 pears #### 12 fruits in all, 3 eaten", "12"),
        ("first 18, then #### (no number) but 20 later", "20"),
        ("He has $1,250,000.00 now", "1250000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_dailydialog_from_jsonl(tmp_path):
    rows = [
        {"dialog": [" Hi , how are you ? ", "Fine , thanks .", "Good to hear ."], "act": [1, 2, 1]},
        {"dialog": ["Coffee ?", "Yes please ."], "act": [3, 4]},
    ]
    path = write_jsonl(tmp_path / "dd.jsonl", rows)
    splits = load_task(
        "t", make_task("dailydialog", (path, write_jsonl(tmp_path / "v.jsonl", rows), path))
    )
    # The test file is the training file, so test is carved (1 of 2 dialogues).
    assert [len(v) for v in splits.values()] == [1, 2, 1]
    check_format(splits)
    first = splits["validation"][0]
    assert first["source"] == "Hi , how are you ? __eou__ Fine , thanks ."
    assert first["target"] == "Good to hear ."
    assert splits["test"][0]["source"] == "Coffee ?"


def test_dart_from_parquet_keeps_every_annotation_as_a_reference(tmp_path):
    rows = [
        {
            "tripleset": [["Mars Hill", "LOCATION", "Ohio"], ["Mars Hill", "FOUNDED", "1856"]],
            "subtree_was_extended": False,
            "annotations": {
                "source": ["webnlg", "webnlg"],
                "text": ["Mars Hill, founded in 1856, is in Ohio.", "Mars Hill is in Ohio."],
            },
        },
        {
            "tripleset": [["Alan", "OCCUPATION", "pilot"]],
            "subtree_was_extended": True,
            "annotations": {"source": ["e2e"], "text": ["Alan is a pilot."]},
        },
    ]
    files = tuple(write_parquet(tmp_path / f"{split}.parquet", rows) for split in ("a", "b", "c"))
    splits = load_task("t", make_task("dart", files))
    check_format(splits)
    ex = splits["test"][0]
    assert ex["source"] == "Mars Hill | LOCATION | Ohio && Mars Hill | FOUNDED | 1856"
    assert ex["references"] == ["Mars Hill, founded in 1856, is in Ohio.", "Mars Hill is in Ohio."]
    assert ex["target"] == ex["references"][0]
    assert ex["meta"] == {
        "tripleset": [["Mars Hill", "LOCATION", "Ohio"], ["Mars Hill", "FOUNDED", "1856"]]
    }


def test_own_files_with_named_fields(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "extra": i} for i in range(6)]
    files = (
        write_jsonl(tmp_path / "train.jsonl", rows),
        write_csv(tmp_path / "dev.csv", rows[:2]),
        write_parquet(tmp_path / "test.parquet", rows[:3]),
    )
    task = make_task("file", files, source_field="q", target_field="a", prompt="Q: {source}")
    splits = load_task("mine", task)
    check_format(splits)
    assert [len(v) for v in splits.values()] == [6, 2, 3]
    assert splits["validation"][1]["target"] == "answer 1"
    assert splits["test"][0]["references"] == ["answer 0"]
    assert task_prompt(task) == "Q: {source}"


def test_own_files_with_several_references_are_scored_against_all(tmp_path):
    """`references_field`: a list column (JSONL / Parquet lists, a CSV cell holding a JSON
    list); every reference is kept, and an output equal to any of them scores full BLEU."""
    from ketchup.evaluate.scoring import BLEU, metric_table, score_examples

    rows = [
        {
            "mr": f"name[Place {i}]",
            "refs": [f"Place {i} is a pub .", f"There is a pub : Place {i} ."],
        }
        for i in range(6)
    ]
    csv_rows = [{"mr": r["mr"], "refs": json.dumps(r["refs"])} for r in rows]
    files = (
        write_jsonl(tmp_path / "train.jsonl", rows),
        write_csv(tmp_path / "dev.csv", csv_rows[:2]),
        write_parquet(tmp_path / "test.parquet", rows[:3]),
    )
    task = make_task("file", files, source_field="mr", references_field="refs")
    splits = load_task("mine", task)
    check_format(splits)
    for split in ("train", "validation", "test"):
        assert [ex["references"] for ex in splits[split]] == [
            r["refs"] for r in splits_rows(rows, split)
        ]
    test = splits["test"]
    assert [ex["target"] for ex in test] == [r["refs"][0] for r in rows[:3]]
    # the outputs match only the second reference of each example
    second = [r["refs"][1] for r in rows[:3]]
    assert BLEU.value(metric_table(BLEU, score_examples([BLEU], second, test))) == pytest.approx(
        100
    )
    # with target_field too: the target first, then the other references (no duplicate)
    both = [{**r, "best": r["refs"][1]} for r in rows]
    path = write_jsonl(tmp_path / "both.jsonl", both)
    task = make_task(
        "file", (path,) * 3, source_field="mr", target_field="best", references_field="refs"
    )
    ex = load_task("mine", task)["train"][0]
    assert ex["target"] == both[0]["best"] and ex["references"] == [
        both[0]["best"],
        both[0]["refs"][0],
    ]


def splits_rows(rows: list[dict], split: str) -> list[dict]:
    """The rows each split of the test above was written with."""
    return {"train": rows, "validation": rows[:2], "test": rows[:3]}[split]


def test_a_file_task_needs_a_target_or_references_field():
    with pytest.raises(ConfigError, match=r"'tasks.t.target_field': required .* references_field"):
        make_task("file", ("a.jsonl",) * 3, source_field="q")


def test_max_examples_keeps_the_first_rows_after_carving(tmp_path):
    path = write_parquet(tmp_path / "europarl.parquet", europarl_rows(100))
    task = make_task(
        "europarl_en_nl", (path, path, path), max_examples={"train": 4, "validation": 2, "test": 50}
    )
    splits = load_task("t", task)
    assert [ex["source"] for ex in splits["train"]] == [f"sentence {i}" for i in range(4)]
    # validation and test are carved from the full training split before the cap
    assert [ex["source"] for ex in splits["validation"]] == ["sentence 90", "sentence 91"]
    assert len(splits["test"]) == 5 and splits["test"][0]["source"] == "sentence 95"


def test_embedded_through_load_task_with_a_cap():
    task = make_task(
        "embedded",
        embedded={"n_train": 30, "n_validation": 5, "n_test": 5, "n_references": 3},
        max_examples={"train": 10},
    )
    splits = load_task("restaurants", task)
    check_format(splits)
    assert [len(v) for v in splits.values()] == [10, 5, 5]
    assert all(len(ex["references"]) == 3 for ex in splits["test"])


def test_hub_loading_uses_the_hub_splits_and_carves_the_rest(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(gsm8k_rows(60 if split == "train" else 3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_task("t", make_task("gsm8k"))
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert [len(v) for v in splits.values()] == [57, 3, 3]
    assert splits["validation"][0]["meta"] == {"answer": "57000"}


def test_hub_script_repository_falls_back_to_the_parquet_export(monkeypatch):
    import datasets

    revisions = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        revisions.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found dart.py")
        return datasets.Dataset.from_list(
            [{"tripleset": [["a", "b", "c"]], "annotations": {"source": ["x"], "text": ["a b c"]}}]
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_task("t", make_task("dart"))
    assert revisions == [None, "refs/convert/parquet"] * 3
    assert splits["test"][0]["references"] == ["a b c"]


@pytest.mark.parametrize("offline_variable", ["1", None])
def test_hub_failure_is_one_line_naming_the_dataset_and_the_files_way(
    monkeypatch, offline_variable
):
    """What `datasets` raises offline, as one line: the dataset, why, and `files:` instead."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'EdinburghNLP/xsum' on the Hub\n(many more lines)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    for variable in OFFLINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    if offline_variable:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_variable)
    with pytest.raises(HubError) as info:
        load_task("t", make_task("xsum"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset EdinburghNLP/xsum (default) split train of task 't'")
    assert message.endswith("set tasks.t.files (train, validation, test)")
    why = "switched off here (HF_HUB_OFFLINE=1)" if offline_variable else "cannot be reached"
    assert why in message


def test_hub_dataset_revision_is_passed_to_the_hub(monkeypatch):
    import datasets

    revisions = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        revisions.append(revision)
        return datasets.Dataset.from_list(gsm8k_rows(60 if split == "train" else 3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_task("t", make_task("gsm8k", revision="e53f048"))
    assert revisions == ["e53f048", "e53f048"]


# ----------------------------------------------------------------------------------------------
# Bad input


def test_missing_field_names_file_split_and_row(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", xsum_rows(3))
    rows = xsum_rows(3)
    del rows[1]["summary"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TaskDataError) as info:
        load_task("t", make_task("xsum", (good, bad, good)))
    assert str(info.value) == (
        f"{bad}, split validation, row 2: field 'summary' is missing or empty; "
        "the row's fields: document, id"
    )


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_wrong_encoding_names_file_and_line(tmp_path, suffix):
    good = write_jsonl(tmp_path / "good.jsonl", xsum_rows(3))
    bad = tmp_path / f"latin1.{suffix}"
    if suffix == "jsonl":
        text = '{"document": "ok", "summary": "ok"}\n{"document": "Café", "summary": "ok"}\n'
    else:
        text = "document,summary\nok,ok\nCafé,ok\n"
    bad.write_bytes(text.encode("latin-1"))
    with pytest.raises(TaskDataError) as info:
        load_task("t", make_task("xsum", (good, str(bad), good)))
    line = 2 if suffix == "jsonl" else 3
    assert str(info.value).startswith(f"{bad}, line {line}: not UTF-8 text (byte 0xe9"), info.value


def test_absent_column_is_missing_and_the_row_fields_are_listed(tmp_path):
    path = write_jsonl(tmp_path / "ep.jsonl", [{"translation": {"en": "a", "de": "b"}}] * 3)
    with pytest.raises(
        TaskDataError,
        match=r"split train, row 1: field 'translation.nl' is missing; "
        r"the row's fields under 'translation': en, de$",
    ):
        load_task("t", make_task("europarl_en_nl", (path, path, path)))
    # your own file with a misspelt target_field
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    own = write_jsonl(tmp_path / "own.jsonl", rows)
    task = make_task("file", (own,) * 3, source_field="question", target_field="answr")
    with pytest.raises(
        TaskDataError,
        match=r"own\.jsonl, split train, row 1: field 'answr' is missing; "
        r"the row's fields: question, answer$",
    ):
        load_task("t", task)


def test_a_broken_jsonl_line_names_the_file_and_the_line(tmp_path):
    """The JSONL of a task's own data with a line cut short: the file and the line number (not
    the byte position `datasets` reports)."""
    rows = "".join(json.dumps({"q": f"q{i}", "a": f"a{i}"}) + "\n" for i in range(30))
    broken = tmp_path / "train.jsonl"
    broken.write_text(rows + '{"q": "q30", "a": \n' + rows)
    task = make_task("file", (str(broken),) * 3, source_field="q", target_field="a")
    with pytest.raises(TaskDataError) as info:
        load_task("t", task)
    assert str(info.value).startswith(f"{broken}, line 31: not valid JSON (Expecting value")
    broken.write_text(rows + '["q", "a"]\n')
    with pytest.raises(TaskDataError, match=r"train\.jsonl, line 31: a JSON list, not an object"):
        load_task("t", task)


def test_empty_target_names_the_row(tmp_path):
    rows = gsm8k_rows(3)
    rows[2]["answer"] = "   "
    bad = write_jsonl(tmp_path / "test.jsonl", rows)
    train = write_jsonl(tmp_path / "train.jsonl", gsm8k_rows(30))
    with pytest.raises(
        TaskDataError, match=r"test\.jsonl, split test, row 3: field 'answer' is empty"
    ):
        load_task("t", make_task("gsm8k", (train, train, bad)))


def test_error_rows_count_in_the_original_file_after_carving(tmp_path):
    rows = europarl_rows(40)
    rows[39]["translation"]["nl"] = ""
    path = write_jsonl(tmp_path / "ep.jsonl", rows)
    with pytest.raises(
        TaskDataError, match=r"ep\.jsonl, split test, row 40: field 'translation.nl'"
    ):
        load_task("t", make_task("europarl_en_nl", (path, path, path)))


def test_bad_rows_of_other_datasets(tmp_path):
    one_turn = write_jsonl(tmp_path / "dd.jsonl", [{"dialog": ["only one turn"]}])
    good = write_jsonl(tmp_path / "v.jsonl", [{"dialog": ["a", "b"]}])
    # A second file: a split naming the training file would be carved from it.
    good_too = write_jsonl(tmp_path / "v2.jsonl", [{"dialog": ["a", "b"]}])
    with pytest.raises(
        TaskDataError, match=r"row 1: field 'dialog' has only one turn; needs at least 2"
    ):
        load_task("t", make_task("dailydialog", (one_turn, good, good)))
    empty_last = write_jsonl(
        tmp_path / "dd2.jsonl", [{"dialog": ["a", "b"]}, {"dialog": ["a", " "]}]
    )
    with pytest.raises(TaskDataError, match=r"split test, row 2: field 'dialog\[1\]' is empty"):
        load_task("t", make_task("dailydialog", (good, good_too, empty_last)))
    dart = write_jsonl(
        tmp_path / "dart.jsonl", [{"tripleset": [["a", "b"]], "annotations": {"text": ["x"]}}]
    )
    with pytest.raises(TaskDataError, match=r"field 'tripleset\[0\]' must be \[subject"):
        load_task("t", make_task("dart", (dart, good, good)))
    no_number = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "none"}])
    with pytest.raises(TaskDataError, match=r"field 'answer' has no final number"):
        load_task("t", make_task("gsm8k", (no_number, good, good)))


def test_nonexistent_file_is_named(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", xsum_rows(3))
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match=rf"task 't': files.test: {missing} does not exist"):
        load_task("t", make_task("xsum", (good, good, missing)))


def test_unknown_suffix_is_named(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x\n")
    good = write_jsonl(tmp_path / "good.jsonl", xsum_rows(3))
    with pytest.raises(ConfigError, match=r"files.validation: .*data.txt: unknown suffix '.txt'"):
        load_task("t", make_task("xsum", (good, str(path), good)))


def test_unknown_dataset_lists_the_known_ones():
    task = dataclasses.replace(make_task("xsum"), dataset="wikitext")
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'wikitext'; known datasets: embedded, arithmetic, xsum"
    ):
        load_task("t", task)
    with pytest.raises(ConfigError, match="unknown dataset"):
        task_prompt(task)


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_empty_split_is_named(tmp_path, suffix):
    good = write_jsonl(tmp_path / "good.jsonl", xsum_rows(3))
    empty = tmp_path / f"empty.{suffix}"
    if suffix == "jsonl":
        empty.write_text("\n")
    elif suffix == "csv":
        empty.write_text("id,document,summary\n")
    else:
        pq.write_table(pa.table({"document": pa.array([], pa.string())}), empty)
    with pytest.raises(TaskDataError, match=rf"empty\.{suffix}: split test is empty"):
        load_task("t", make_task("xsum", (good, good, str(empty))))


def test_too_few_rows_to_carve(tmp_path):
    path = write_jsonl(tmp_path / "ep.jsonl", europarl_rows(2))
    with pytest.raises(
        TaskDataError, match=r"2 training rows are too few to carve validation and test"
    ):
        load_task("t", make_task("europarl_en_nl", (path, path, path)))


def test_file_dataset_needs_its_fields():
    task = dataclasses.replace(make_task("xsum", ("a.jsonl",) * 3), dataset="file")
    with pytest.raises(ConfigError, match=r"'tasks.t': dataset 'file' needs files, source_field"):
        load_task("t", task)


def test_own_data_naming_the_training_file_again_is_carved_not_duplicated(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}"} for i in range(40)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", rows[:5])
    task = make_task("file", (train, train, test), source_field="q", target_field="a")
    splits = load_task("mine", task)
    assert [len(v) for v in splits.values()] == [38, 2, 5]
    train_sources = {ex["source"] for ex in splits["train"]}
    assert not train_sources & {ex["source"] for ex in splits["validation"]}

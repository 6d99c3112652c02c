"""The embedded restaurant task: determinism, splits, lengths, faithfulness and multi-modality."""

from __future__ import annotations

import re
import time

import pytest

from ketchup.config import EmbeddedTaskConfig
from ketchup.data import embedded
from ketchup.data.embedded import (
    ATTRIBUTES,
    NAMES,
    OPENINGS,
    PHRASINGS,
    SECOND_SUBJECTS,
    VALUE_FORMS,
    generate,
    key_combinations,
    slot_error_rate,
    slot_errors,
    split_key_combinations,
)

DEFAULT = EmbeddedTaskConfig(n_train=6000, n_validation=300, n_test=500, n_references=8, seed=0)
SMALL = EmbeddedTaskConfig(n_train=400, n_validation=40, n_test=40, n_references=4, seed=3)


@pytest.fixture(scope="module")
def default_task():
    return generate(DEFAULT)


def _keys(example: dict) -> tuple[str, ...]:
    return tuple(key for key in example["meta"] if key != "name")


def _all_forms(key: str) -> list[str]:
    return [form for forms in VALUE_FORMS[key].values() for form in forms]


def _mentions(text: str, form: str) -> bool:
    return (
        re.search(r"(?<![\w-])" + re.escape(form) + r"(?![\w-])", text, re.IGNORECASE) is not None
    )


# ----------------------------------------------------------------------------------------------
# Determinism and sizes


def test_same_seed_gives_identical_data():
    assert generate(SMALL) == generate(SMALL)


def test_different_seed_gives_different_data():
    other = EmbeddedTaskConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    first, second = generate(SMALL), generate(other)
    for split in ("train", "validation", "test"):
        assert [ex["source"] for ex in first[split]] != [ex["source"] for ex in second[split]]


def test_known_output_for_seed_0_is_stable():
    # Pins the generator: a change to the templates or to the order of the random draws (which
    # would silently change every result built on the task) shows up here.
    cfg = EmbeddedTaskConfig(n_train=10, n_validation=1, n_test=1, n_references=2, seed=0)
    first = generate(cfg)["train"][0]
    assert first["source"] == (
        "name[Maple House] | eatType[pub] | priceRange[moderate] | area[harbour] | "
        "near[The Rusty Anchor]"
    )
    assert first["target"] == (
        "Not far from The Rusty Anchor, Maple House is considered mid-priced by most visitors. "
        "It is a friendly neighbourhood pub and can be found in the harbour area."
    )
    assert first["id"] == "embedded-train-00000"


def test_split_sizes_ids_and_example_format(default_task):
    sizes = {"train": 6000, "validation": 300, "test": 500}
    for split, examples in default_task.items():
        assert len(examples) == sizes[split]
        assert len({ex["id"] for ex in examples}) == len(examples)
        for ex in examples:
            assert set(ex) == {"id", "source", "target", "references", "meta"}
            assert ex["references"][0] == ex["target"]
            assert ex["source"] == embedded.linearise(ex["meta"])
            assert 3 <= len(_keys(ex)) <= 6


def test_a_split_size_change_leaves_the_other_splits_alone():
    bigger = EmbeddedTaskConfig(**{**SMALL.__dict__, "n_train": SMALL.n_train + 50})
    first, second = generate(SMALL), generate(bigger)
    assert first["validation"] == second["validation"]
    assert first["test"] == second["test"]
    assert second["train"][: SMALL.n_train] == first["train"]


def test_default_size_is_fast():
    start = time.perf_counter()
    generate(DEFAULT)
    # About 0.7 s on one core; the bound leaves room for a slow CI machine.
    assert time.perf_counter() - start < 3.0


def test_no_duplicate_sources_within_a_split(default_task):
    for examples in default_task.values():
        sources = [ex["source"] for ex in examples]
        assert len(set(sources)) == len(sources)


def test_source_is_canonically_ordered(default_task):
    ex = default_task["validation"][0]
    keys = re.findall(r"(\w+)\[", ex["source"])
    assert keys[0] == "name"
    assert keys[1:] == [key for key in ATTRIBUTES if key in keys]


# ----------------------------------------------------------------------------------------------
# Compositional splits


def test_key_combinations_are_held_out_by_share():
    combos = split_key_combinations(0)
    total = len(key_combinations())
    assert total == 56 + 70 + 56 + 28
    held = len(combos["validation"]) + len(combos["test"])
    assert held == pytest.approx(0.2 * total, abs=2)
    assert len(combos["validation"]) > 0 and len(combos["test"]) > 0
    assert sum(len(c) for c in combos.values()) == total


def test_validation_and_test_combinations_are_unseen_in_training(default_task):
    seen = {split: {_keys(ex) for ex in exs} for split, exs in default_task.items()}
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]
    # 6000 records cover every training combination.
    combos = split_key_combinations(DEFAULT.seed)
    assert len(seen["train"]) == len(combos["train"])
    assert seen["validation"] == set(combos["validation"])


# ----------------------------------------------------------------------------------------------
# References


def test_reference_lengths_are_15_to_60_words(default_task):
    lengths = [
        len(r.split()) for exs in default_task.values() for ex in exs for r in ex["references"]
    ]
    assert min(lengths) >= 15
    assert max(lengths) <= 60


def test_reference_counts(default_task):
    assert all(len(ex["references"]) == 1 for ex in default_task["train"])
    for split in ("validation", "test"):
        for ex in default_task[split]:
            assert len(ex["references"]) == DEFAULT.n_references
            assert len(set(ex["references"])) == DEFAULT.n_references


def test_references_are_multi_modal(default_task):
    def structure(text: str, record: dict) -> str:
        # The reference with its values masked: what differs between phrasings, not values.
        for key, value in record.items():
            forms = [value] if key in ("name", "near") else VALUE_FORMS[key][value]
            for form in forms:
                text = re.sub(re.escape(form), "<" + key + ">", text, flags=re.IGNORECASE)
        return text

    first_word_counts, sentence_counts = [], set()
    for ex in default_task["validation"]:
        refs = ex["references"]
        first_word_counts.append(len({r.split()[0] for r in refs}))
        assert len({structure(r, ex["meta"]) for r in refs}) > 1
        sentence_counts.update(r.count(". ") + 1 for r in refs)
    assert all(count >= 1 for count in first_word_counts)
    assert sum(count > 1 for count in first_word_counts) >= 0.8 * len(first_word_counts)
    assert sentence_counts == {1, 2}
    openings = {ex["target"].split()[0] for ex in default_task["train"]}
    assert {"There", "A", "Close", "Not", "In"} <= openings


# ----------------------------------------------------------------------------------------------
# Faithfulness


def test_templates_and_names_contain_no_value_form():
    fixed_texts = [p.replace("{v}", "") for ps in PHRASINGS.values() for p in ps]
    fixed_texts += [re.sub(r"\{\w+\}", "", opening) for opening, _, _ in OPENINGS]
    fixed_texts += [re.sub(r"\{\w+\}", "", subject) for subject in SECOND_SUBJECTS]
    fixed_texts += list(NAMES)
    for key in ATTRIBUTES:
        if key == "near":
            continue
        for form in _all_forms(key):
            for text in fixed_texts:
                assert not _mentions(text, form), f"{text!r} contains {key} form {form!r}"
    for name in NAMES:
        assert [other for other in NAMES if _mentions(other, name)] == [name]


def test_value_forms_are_unambiguous_across_attributes():
    forms = [(key, form) for key in ATTRIBUTES if key != "near" for form in _all_forms(key)]
    for key, form in forms:
        for other_key, other_form in forms:
            if form != other_form:
                assert not _mentions(other_form, form), f"{key} {form!r} in {other_key}"


def test_every_reference_has_slot_error_rate_zero(default_task):
    for exs in default_task.values():
        for ex in exs:
            for reference in ex["references"]:
                assert slot_error_rate(ex["meta"], reference) == 0.0, reference


def test_slot_matching_is_case_insensitive(default_task):
    ex = default_task["test"][0]
    assert slot_error_rate(ex["meta"], ex["target"].upper()) == 0.0
    assert slot_error_rate(ex["meta"], ex["target"].lower()) == 0.0


def _corruptions(record: dict, text: str) -> list[str]:
    """The text with one attribute value dropped, and with it swapped for another value."""
    out = []
    for key in ATTRIBUTES:
        if key not in record:
            continue
        own = [record[key]] if key == "near" else list(VALUE_FORMS[key][record[key]])
        others = [v for v in VALUE_FORMS[key] if v != record[key] and v != record["name"]]
        replacement = VALUE_FORMS[key][others[0]][0]
        dropped, swapped = text, text
        for form in own:
            pattern = re.compile(r"(?<![\w-])" + re.escape(form) + r"(?![\w-])", re.IGNORECASE)
            dropped = pattern.sub("", dropped)
            swapped = pattern.sub(replacement, swapped)
        out += [dropped, swapped]
    return out


def test_dropped_or_swapped_values_are_slot_errors(default_task):
    for ex in default_task["validation"][:100]:
        record = ex["meta"]
        for corrupted in _corruptions(record, ex["target"]):
            assert slot_error_rate(record, corrupted) > 0.0, corrupted


def test_hand_written_slot_errors():
    record = {
        "name": "The Golden Fork",
        "food": "Italian",
        "priceRange": "cheap",
        "area": "riverside",
        "near": "Blue Lantern",
    }
    # food swapped (French), priceRange missing, area right (any case), near contradicted by a
    # third name, and a familyFriendly value the record does not have.
    text = "The golden fork serves French food in the RIVERSIDE area near Cedar Lodge; adults-only."
    assert slot_errors(record, text) == {
        "slots": ["name", "food", "priceRange", "area", "near"],
        "missing": ["food", "priceRange", "near"],
        "contradicted": ["food", "near"],
        "added": ["familyFriendly"],
    }
    assert slot_error_rate(record, text) == pytest.approx(3 / 5)
    fixed = "The Golden Fork is an inexpensive Italian place by the riverside, near Blue Lantern."
    assert slot_error_rate(record, fixed) == 0.0
    assert slot_error_rate(record, "") == 1.0


def test_synonyms_and_hyphenated_forms():
    record = {"name": "Ivy Cottage", "familyFriendly": "yes", "priceRange": "moderate"}
    assert slot_error_rate(record, "Ivy Cottage is child-friendly and mid-priced.") == 0.0
    # "non-family-friendly" is not "family-friendly"; "inexpensive" is not "expensive".
    assert slot_errors(record, "Ivy Cottage is non-family-friendly.")["missing"] == [
        "priceRange",
        "familyFriendly",
    ]
    assert slot_errors(record, "Ivy Cottage is inexpensive")["contradicted"] == ["priceRange"]

"""The embedded task: restaurant data-to-text generated from a seed, with no download.

A record is a restaurant name plus 3 to 6 of 8 typed attributes; the source is the record
linearised in a fixed attribute order (``name[The Golden Fork] | food[Italian] | area[riverside]``)
and a reference is the record rendered into one or two English sentences. Each attribute has four
phrasings, the sentences have several openings, orders and connectors, so one record has many
valid references and a teacher's output distribution is genuinely multi-modal, which is what
sequence-level distillation is meant to cope with.

Every attribute value is realised with a fixed surface form (or one of a few fixed synonyms), so
`slot_error_rate` can check an output's faithfulness by matching those forms.

Generalisation is tested compositionally: validation and test records use attribute-key
combinations that never occur in training (a fixed ~20% of all combinations, disjoint between
validation and test).

Everything is a function of `EmbeddedTaskConfig.seed` through `random.Random` instances only
(no global random state, no set iteration, no `hash()`), so the data are identical across runs,
machines and Python versions.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ketchup.data.draws import distinct_draws, random_stream

if TYPE_CHECKING:
    from ketchup.config import EmbeddedTaskConfig

DEFAULT_PROMPT = "{source}"
DEFAULT_METRIC = "bleu"

MIN_WORDS = 15
MAX_WORDS = 60
MIN_ATTRIBUTES = 3
MAX_ATTRIBUTES = 6
# Share of the attribute-key combinations held out of training, half each for validation and test.
HELD_OUT_SHARE = 0.2

# Made-up names. None contains a word or phrase that is an attribute value's surface form, and none
# occurs inside another, so names never trigger a false match in `slot_errors`.
NAMES: tuple[str, ...] = (
    "The Golden Fork",
    "Blue Lantern",
    "The Copper Kettle",
    "Green Olive",
    "The Rusty Anchor",
    "Silver Spoon",
    "The Hidden Door",
    "Maple House",
    "The Painted Fox",
    "Juniper Hall",
    "The Crooked Chimney",
    "Lemon Tree",
    "The Wandering Goose",
    "Saffron Gate",
    "The Velvet Owl",
    "Cedar Lodge",
    "The Brass Compass",
    "Willow Corner",
    "The Black Sheep",
    "Amber Mill",
    "The Little Acorn",
    "Harvest Moon",
    "The Red Fiddle",
    "Clover Court",
    "The Jolly Baker",
    "Ivy Cottage",
    "The Stone Bridge",
    "Marigold Kitchen",
    "The Twisted Vine",
    "Pepper Pot",
    "The Salty Pelican",
    "Orchard Barn",
    "The Gilded Lily",
    "Bramble Inn",
    "The Wise Badger",
    "Thistle Row",
    "The Grey Heron",
    "Hazel Grove",
    "The Lucky Clam",
    "Foxglove Hall",
)

# Canonical attribute order (the order of the linearised source). Each value maps to its surface
# forms: the first is what templates mostly use, the others are fixed synonyms.
ATTRIBUTES: tuple[str, ...] = (
    "eatType",
    "food",
    "priceRange",
    "customerRating",
    "area",
    "familyFriendly",
    "near",
    "atmosphere",
)

VALUE_FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "eatType": {
        "pub": ("pub",),
        "coffee shop": ("coffee shop",),
        "bistro": ("bistro",),
        "diner": ("diner",),
        "wine bar": ("wine bar",),
        "tea room": ("tea room",),
        "restaurant": ("restaurant",),
    },
    "food": {
        v: (v,)
        for v in (
            "Italian",
            "French",
            "Chinese",
            "Indian",
            "Japanese",
            "Mexican",
            "Thai",
            "Greek",
            "Spanish",
            "English",
        )
    },
    "priceRange": {
        "cheap": ("cheap", "inexpensive", "low-priced"),
        "moderate": ("moderately priced", "mid-priced"),
        "expensive": ("expensive", "high-priced"),
    },
    "customerRating": {
        v: (v,) for v in ("1 out of 5", "2 out of 5", "3 out of 5", "4 out of 5", "5 out of 5")
    },
    "area": {
        "riverside": ("riverside",),
        "city centre": ("city centre", "town centre"),
        "harbour": ("harbour",),
        "old town": ("old town",),
        "market square": ("market square",),
    },
    "familyFriendly": {
        "yes": ("family-friendly", "child-friendly"),
        "no": ("adults-only", "unsuitable for children"),
    },
    # `near` takes another restaurant's name; its forms are the names themselves.
    "near": {name: (name,) for name in NAMES},
    "atmosphere": {v: (v,) for v in ("cosy", "lively", "quiet", "romantic", "elegant")},
}

# Verb phrases that follow a subject ("X" / "It" / "The pub"); "{v}" is the value's surface form.
# None of their fixed words is a value form (checked by the tests).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "eatType": (
        "is a {v}",
        "is a popular local {v}",
        "operates as a {v} for locals and visitors",
        "is a friendly neighbourhood {v}",
    ),
    "food": (
        "serves {v} food",
        "offers {v} cuisine on its menu",
        "specialises in {v} dishes",
        "has a menu of classic {v} dishes",
    ),
    "priceRange": (
        "is {v}",
        "is considered {v} by most visitors",
        "is known for being {v}",
        "has a reputation for being {v}",
    ),
    "customerRating": (
        "is rated {v} by customers",
        "has a customer rating of {v}",
        "scores {v} in online reviews",
        "has earned a rating of {v} from its guests",
    ),
    "area": (
        "is located in the {v} area",
        "can be found in the {v} area",
        "is situated in the {v} area",
        "sits right in the {v} area",
    ),
    "familyFriendly": (
        "is {v}",
        "is considered {v}",
        "is known to be {v}",
        "is generally described as {v}",
    ),
    "near": (
        "is near {v}",
        "is close to {v}",
        "is a short walk from {v}",
        "is located not far from {v}",
    ),
    "atmosphere": (
        "has a {v} atmosphere",
        "offers a {v} setting for a meal",
        "feels {v} inside",
        "is known for its {v} atmosphere",
    ),
}

# Sentence openings. Each names the attributes it realises itself and whether a relative clause
# ("... that serves Thai food") must follow ("that"), may follow ("that?") or the subject simply
# takes the verb phrases ("subject").
OPENINGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("{name}", (), "subject"),
    ("There is a {eatType} called {name}", ("eatType",), "that?"),
    ("A {eatType} named {name}", ("eatType",), "subject"),
    ("{name} is a {eatType}", ("eatType",), "that?"),
    ("{name} is a {food} {eatType}", ("food", "eatType"), "that?"),
    ("Close to {near}, {name}", ("near",), "subject"),
    ("Not far from {near}, {name}", ("near",), "subject"),
    ("In the {area} area, {name}", ("area",), "subject"),
)

# Subjects of a second sentence; "{eatType}" ones only when the record has an eatType.
SECOND_SUBJECTS: tuple[str, ...] = (
    "It",
    "The place",
    "This venue",
    "{name}",
    "The {eatType}",
    "This {eatType}",
)

_ARTICLE = re.compile(r"\b([Aa]) (?=[AEIOUaeiou])")


# ----------------------------------------------------------------------------------------------
# Records and sources


def key_combinations() -> list[tuple[str, ...]]:
    """Every attribute-key combination a record may have, in canonical order."""
    return [
        combo
        for size in range(MIN_ATTRIBUTES, MAX_ATTRIBUTES + 1)
        for combo in itertools.combinations(ATTRIBUTES, size)
    ]


def split_key_combinations(seed: int) -> dict[str, list[tuple[str, ...]]]:
    """Assign each key combination to train, validation or test.

    Per combination size, a seeded shuffle holds out round(20%) of the combinations, half for
    validation and half for test; the rest are training combinations. Stratifying by size keeps
    short and long records in every split.
    """
    rng = random_stream("embedded", seed, "key-combinations")
    splits: dict[str, list[tuple[str, ...]]] = {"train": [], "validation": [], "test": []}
    for size in range(MIN_ATTRIBUTES, MAX_ATTRIBUTES + 1):
        combos = list(itertools.combinations(ATTRIBUTES, size))
        rng.shuffle(combos)
        n_held = round(HELD_OUT_SHARE * len(combos))
        n_validation = n_held // 2
        splits["validation"] += combos[:n_validation]
        splits["test"] += combos[n_validation:n_held]
        splits["train"] += combos[n_held:]
    # Sorted so that the draw order within a split does not depend on the shuffle above.
    return {split: sorted(combos, key=_canonical_order) for split, combos in splits.items()}


def _canonical_order(combo: Sequence[str]) -> tuple[int, int, ...]:
    return (len(combo), *(ATTRIBUTES.index(key) for key in combo))


def sample_record(rng: random.Random, keys: Sequence[str]) -> dict[str, str]:
    """A record with a name and a value for each of `keys` (canonical order)."""
    name = rng.choice(NAMES)
    record = {"name": name}
    for key in ATTRIBUTES:
        if key not in keys:
            continue
        if key == "near":
            record[key] = rng.choice([other for other in NAMES if other != name])
        else:
            record[key] = rng.choice(list(VALUE_FORMS[key]))
    return record


def linearise(record: dict[str, str]) -> str:
    """The model's source: 'name[...] | key[value] | ...' in canonical attribute order."""
    parts = [f"name[{record['name']}]"]
    parts += [f"{key}[{record[key]}]" for key in ATTRIBUTES if key in record]
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# Rendering


def _surface(rng: random.Random, key: str, value: str) -> str:
    forms = VALUE_FORMS[key][value]
    # The first form is the usual one; synonyms appear often enough to matter, not dominate.
    return forms[0] if len(forms) == 1 or rng.random() < 0.5 else rng.choice(forms[1:])


def _join_phrases(rng: random.Random, phrases: Sequence[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    last = rng.choice((" and ", ", and ", ", and it "))
    if len(phrases) == 2 and last == ", and ":
        last = " and "
    return ", ".join(phrases[:-1]) + last + phrases[-1]


def _sentence(text: str) -> str:
    text = _ARTICLE.sub(lambda m: m.group(1) + "n ", text)
    return text[0].upper() + text[1:] + "."


def render(record: dict[str, str], rng: random.Random) -> str:
    """One reference for `record`: one or two sentences, 15 to 60 words.

    Draws an opening, an order of the remaining attributes, their phrasings and connectors, and a
    sentence split; redraws (from the same stream) until the length fits.
    """
    for _ in range(1000):
        text = _render_once(record, rng)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            return text
    raise RuntimeError(f"embedded task: no rendering of 15-60 words for {linearise(record)}")


def _render_once(record: dict[str, str], rng: random.Random) -> str:
    keys = [key for key in ATTRIBUTES if key in record]
    openings = [o for o in OPENINGS if all(k in record for k in o[1])]
    opening, consumed, follow = rng.choice(openings)
    rest = [key for key in keys if key not in consumed]
    rng.shuffle(rest)
    phrases = [
        rng.choice(PHRASINGS[key]).replace("{v}", _surface(rng, key, record[key])) for key in rest
    ]

    # At least one phrase must follow an opening that is a bare subject.
    min_first = 0 if follow == "that?" else 1
    n_first = len(phrases)
    if len(phrases) > min_first and rng.random() < 0.5:
        n_first = rng.randint(min_first, len(phrases) - 1)
    first, second = phrases[:n_first], phrases[n_first:]

    head = opening.replace("{name}", record["name"])
    for key in consumed:
        head = head.replace("{" + key + "}", _surface(rng, key, record[key]))
    if first:
        head += (" that " if follow == "that?" else " ") + _join_phrases(rng, first)
    sentences = [_sentence(head)]
    if second:
        # "The pub is a popular local pub" reads badly: no eatType subject before an eatType phrase.
        eat_type_subject_ok = "eatType" in record and "eatType" not in rest[n_first:]
        subjects = [s for s in SECOND_SUBJECTS if eat_type_subject_ok or "{eatType}" not in s]
        subject = rng.choice(subjects).replace("{name}", record["name"])
        if "{eatType}" in subject:
            subject = subject.replace("{eatType}", _surface(rng, "eatType", record["eatType"]))
        sentences.append(_sentence(subject + " " + _join_phrases(rng, second)))
    return " ".join(sentences)


def render_distinct(record: dict[str, str], rng: random.Random, n: int) -> list[str]:
    """`n` distinct references for `record` (a record has thousands of renderings)."""
    references: list[str] = []
    seen: set[str] = set()  # membership only; the order comes from the list
    for _ in range(100 * n):
        text = render(record, rng)
        if text not in seen:
            seen.add(text)
            references.append(text)
            if len(references) == n:
                return references
    raise RuntimeError(f"embedded task: fewer than {n} distinct references for {linearise(record)}")


# ----------------------------------------------------------------------------------------------
# Faithfulness


def _form_regex(form: str) -> str:
    return r"\s+".join(re.escape(word) for word in form.split())


@functools.cache
def _form_matcher() -> tuple[re.Pattern[str], dict[str, list[tuple[str, str]]]]:
    """One regex finding every value form in a text, and form -> [(attribute, value)]."""
    owners: dict[str, list[tuple[str, str]]] = {}
    for key, values in VALUE_FORMS.items():
        for value, forms in values.items():
            for form in forms:
                owners.setdefault(form.lower(), []).append((key, value))
    # Longest first, so that a form wins over a shorter one starting at the same place. The
    # lookahead finds overlapping matches; hyphens count as word characters, so "family-friendly"
    # is not found in "non-family-friendly"; any run of whitespace matches a space.
    alternatives = "|".join(_form_regex(form) for form in sorted(owners, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w-])(?=(" + alternatives + r")(?![\w-]))", re.IGNORECASE)
    return pattern, owners


def realised(text: str) -> dict[str, list[str]]:
    """Attribute -> the values whose surface forms occur in `text` (names under 'near')."""
    pattern, owners = _form_matcher()
    found: dict[str, list[str]] = {}
    for match in pattern.finditer(text):
        for key, value in owners[" ".join(match.group(1).lower().split())]:
            if value not in found.setdefault(key, []):
                found[key].append(value)
    return found


def slot_errors(record: dict, text: str) -> dict:
    """Which of `record`'s slots `text` gets wrong.

    The slots are the name and every attribute of the record. A slot is *missing* when none of its
    value's surface forms occurs in `text` (case-insensitive, whole words), and *contradicted* when
    a form of another value of the same attribute occurs. For `near`, another value is any
    restaurant name other than the record's name and near value; the name slot is only checked for
    presence, since other names legitimately appear. Attributes realised in `text` that the record
    does not have are listed as *added* (they do not count towards the error rate).

    Returns {"slots": [...], "missing": [...], "contradicted": [...], "added": [...]}.
    """
    slots = ["name"] + [key for key in ATTRIBUTES if key in record]
    missing: list[str] = []
    contradicted: list[str] = []
    names_in_record = [record["name"], record.get("near")]
    in_text = realised(text)
    for key in slots:
        found = in_text.get("near" if key == "name" else key, [])
        if record[key] not in found:
            missing.append(key)
        if key == "near":
            others = [name for name in found if name not in names_in_record]
        elif key == "name":
            others = []
        else:
            others = [value for value in found if value != record[key]]
        if others:
            contradicted.append(key)
    added = [key for key in ATTRIBUTES if key not in record and key != "near" and key in in_text]
    return {"slots": slots, "missing": missing, "contradicted": contradicted, "added": added}


def slot_error_rate(record: dict, text: str) -> float:
    """Share of the record's slots (name and attributes) missing from or contradicted by `text`."""
    errors = slot_errors(record, text)
    wrong = [key for key in errors["slots"] if key in errors["missing"] + errors["contradicted"]]
    return len(wrong) / len(errors["slots"])


# ----------------------------------------------------------------------------------------------
# The task


def _draw_record(rng: random.Random, combos: Sequence[tuple[str, ...]]) -> dict[str, str]:
    return sample_record(rng, rng.choice(combos))


def generate(cfg: EmbeddedTaskConfig) -> dict[str, list[dict]]:
    """The embedded task's splits in the example format, a deterministic function of `cfg`.

    Training records get one sampled reference; validation and test records get
    `cfg.n_references` distinct references (the target is the first). Each split draws from its
    own random stream, so changing one split's size leaves the other splits unchanged, and a
    larger split starts with the examples of a smaller one.
    """
    combos = split_key_combinations(cfg.seed)
    sizes = {"train": cfg.n_train, "validation": cfg.n_validation, "test": cfg.n_test}
    out: dict[str, list[dict]] = {}
    for split in ("train", "validation", "test"):
        rng = random_stream("embedded", cfg.seed, split)
        n_refs = 1 if split == "train" else cfg.n_references
        examples = []
        records = distinct_draws(
            functools.partial(_draw_record, rng, combos[split]),
            linearise,
            sizes[split],
            f"embedded {split} records",
        )
        for i, record in enumerate(records):
            references = render_distinct(record, rng, n_refs)
            examples.append(
                {
                    "id": f"embedded-{split}-{i:05d}",
                    "source": linearise(record),
                    "target": references[0],
                    "references": references,
                    "meta": dict(record),
                }
            )
        out[split] = examples
    return out

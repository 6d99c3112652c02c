"""The generated tasks' shared draws: distinct, excluded sources skipped, a clear error."""

import pytest

from ketchup.data.draws import distinct_draws, random_stream


def _letters(seed: int, alphabet: str = "abcdefgh"):
    rng = random_stream("test", seed, "letters")
    return lambda: rng.choice(alphabet)


def test_draws_are_distinct_and_skip_the_excluded_sources():
    drawn = list(distinct_draws(_letters(0), str, 5, "letters", exclude={"a", "b"}))
    assert len(drawn) == len(set(drawn)) == 5
    assert not {"a", "b"} & set(drawn)


def test_a_smaller_n_gives_a_prefix_of_a_larger_one():
    assert (
        list(distinct_draws(_letters(1), str, 3, "letters"))
        == list(distinct_draws(_letters(1), str, 6, "letters"))[:3]
    )


def test_the_same_namespace_seed_and_purpose_give_the_same_stream():
    a, b = random_stream("x", 0, "train"), random_stream("x", 0, "train")
    assert [a.random() for _ in range(3)] == [b.random() for _ in range(3)]
    assert random_stream("x", 0, "train").random() != random_stream("y", 0, "train").random()


def test_more_draws_than_distinct_sources_names_what_was_drawn():
    with pytest.raises(ValueError, match="cannot draw 9 distinct letters"):
        list(distinct_draws(_letters(0), str, 9, "letters"))
    assert list(distinct_draws(_letters(0), str, 0, "letters")) == []

"""Batched generation and rollouts on tiny T5 and GPT-2 models trained for a few steps (CPU)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ketchup.config import GenerationConfig, ModelConfig
from ketchup.data.batching import encode_pairs, encode_sources, token_logits
from ketchup.models.loading import build_model, is_seq2seq, load_model, load_tokenizer, save_model
from ketchup.train.generation import Rollout, eos_token_ids, generate, generate_ids, rollout_mask

# Mixed lengths, so batches need padding (left padding for GPT-2); three are training sources.
PROMPTS = [
    "name[The Golden Fork] | food[Italian] | area[riverside]",
    "name[Cotto]",
    "name[Blue Spice] | food[English] | area[city centre]",
    "name[Zizzi] | food[French]",
    "name[Zizzi] | food[Italian] | area[city centre]",
]
TRAINING_PROMPTS = (0, 2, 4)
GREEDY = GenerationConfig(max_new_tokens=24, batch_size=4, num_beams=1)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(arch, tokenizer, pairs):
    """A tiny model trained briefly on pairs, so greedy outputs are real sentences ending in EOS."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(None, arch, "float32"), tokenizer)
    optimiser = torch.optim.Adam(m.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    m.train()
    for _ in range(60):
        idx = torch.randint(len(pairs), (16,), generator=generator).tolist()
        batch = encode_pairs(
            tokenizer, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx], 64, 32, is_seq2seq(m)
        )
        loss = m(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return m.eval()


def test_greedy_is_deterministic_and_batch_size_invariant(model, tokenizer):
    batched = generate(model, tokenizer, PROMPTS, GREEDY, max_source_length=64)
    again = generate(model, tokenizer, PROMPTS, GREEDY, max_source_length=64)
    one_by_one = generate(
        model, tokenizer, PROMPTS, dataclasses.replace(GREEDY, batch_size=1), max_source_length=64
    )
    assert batched == again == one_by_one
    assert len(batched) == len(PROMPTS)
    # The training sources get real text; an unseen one may get EOS at once, depending on the CPU's
    # floating-point kernels (seen: "name[Cotto]" empty on one machine, a sentence on another).
    assert all(batched[i] for i in TRAINING_PROMPTS)
    assert all("<pad>" not in text and "</s>" not in text for text in batched)
    # Training worked: the first prompt's output is a sentence about its restaurant.
    assert "Golden" in batched[0] or "Fork" in batched[0]


def test_generate_keeps_prompt_order(model, tokenizer):
    single = [generate(model, tokenizer, [p], GREEDY, max_source_length=64)[0] for p in PROMPTS]
    reversed_batch = generate(model, tokenizer, PROMPTS[::-1], GREEDY, max_source_length=64)
    assert reversed_batch == single[::-1]


def test_generate_empty_and_progress(model, tokenizer, capsys):
    assert generate(model, tokenizer, [], GREEDY, max_source_length=64) == []
    texts = generate(model, tokenizer, PROMPTS[:2], GREEDY, max_source_length=64, progress=True)
    assert len(texts) == 2
    assert "generate" in capsys.readouterr().err


def test_save_load_same_generations(model, tokenizer, tmp_path):
    save_model(model, tokenizer, tmp_path / "m")
    loaded, loaded_tok = load_model(str(tmp_path / "m")), load_tokenizer(str(tmp_path / "m"))
    assert generate(loaded, loaded_tok, PROMPTS, GREEDY, max_source_length=64) == generate(
        model, tokenizer, PROMPTS, GREEDY, max_source_length=64
    )


def test_beam_search_runs(model, tokenizer):
    beams = dataclasses.replace(GREEDY, num_beams=3, batch_size=2)
    texts = generate(model, tokenizer, PROMPTS, beams, max_source_length=64)
    assert len(texts) == len(PROMPTS) and all(texts)


def _check_rollout(rollout: Rollout, tokenizer, max_new_tokens: int):
    tokens, mask, finished = rollout
    assert tokens.dtype == torch.long and mask.dtype == torch.long and finished.dtype == torch.bool
    assert tokens.shape == mask.shape and tokens.shape[1] <= max_new_tokens
    assert tokens.shape[0] == finished.shape[0]
    lengths = mask.sum(dim=1)
    eos = tokenizer.eos_token_id
    for i in range(tokens.shape[0]):
        n = int(lengths[i])
        assert n >= 1 and mask[i, :n].all() and not mask[i, n:].any()  # a prefix of ones
        assert (tokens[i, n:] == tokenizer.pad_token_id).all()
        row = tokens[i, :n].tolist()
        assert eos not in row[:-1]
        assert bool(finished[i]) == (row[-1] == eos)
        if not finished[i]:
            assert n == max_new_tokens
    assert torch.equal(rollout_mask(tokens, [eos], valid=mask), mask)


def test_generate_ids_consistent_with_text(model, tokenizer):
    rollout = generate_ids(model, tokenizer, PROMPTS, GREEDY, max_source_length=64)
    _check_rollout(rollout, tokenizer, GREEDY.max_new_tokens)
    # the trained model ends its sentences on the training sources (an unseen source may run to
    # the cap: it did with transformers 4.56's initialisation)
    assert rollout.finished[list(TRAINING_PROMPTS)].all()
    texts = generate(model, tokenizer, PROMPTS, GREEDY, max_source_length=64)
    decoded = tokenizer.batch_decode(rollout.tokens, skip_special_tokens=True)
    assert [d.strip() for d in decoded] == texts


def test_generate_ids_unfinished(model, tokenizer):
    short = dataclasses.replace(GREEDY, max_new_tokens=3)
    rollout = generate_ids(model, tokenizer, PROMPTS, short, max_source_length=64)
    _check_rollout(rollout, tokenizer, 3)
    # The long prompts' sentences cannot end in 3 tokens (a short one may: a mixed batch).
    assert not rollout.finished[[0, 2, 4]].any()
    assert rollout.tokens.shape == (len(PROMPTS), 3)
    assert rollout.mask[~rollout.finished].all()


def test_sampling_seed(model, tokenizer):
    sample = dataclasses.replace(GREEDY, max_new_tokens=8)
    kwargs = {"max_source_length": 64, "do_sample": True, "temperature": 1.5}
    state = torch.random.get_rng_state()
    first = generate_ids(model, tokenizer, PROMPTS * 4, sample, seed=3, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    second = generate_ids(model, tokenizer, PROMPTS * 4, sample, seed=3, **kwargs)
    other = generate_ids(model, tokenizer, PROMPTS * 4, sample, seed=4, **kwargs)
    assert torch.equal(first.tokens, second.tokens)
    assert not torch.equal(first.tokens, other.tokens)
    _check_rollout(other, tokenizer, 8)
    top1 = generate_ids(model, tokenizer, PROMPTS, sample, seed=5, top_k=1, **kwargs)
    greedy = generate_ids(model, tokenizer, PROMPTS, sample, max_source_length=64)
    assert torch.equal(top1.tokens, greedy.tokens)


def test_sampling_options_need_do_sample(model, tokenizer):
    with pytest.raises(ValueError, match="do_sample"):
        generate(model, tokenizer, PROMPTS, GREEDY, max_source_length=64, temperature=0.5)


def test_rollout_feeds_a_training_pass(model, tokenizer):
    """Student rollout -> teacher-forced log-probs with gradients; train mode is restored."""
    model.train()
    try:
        rollout = generate_ids(
            model, tokenizer, PROMPTS, GREEDY, max_source_length=64, do_sample=True, seed=0
        )
        assert model.training
        sources = encode_sources(tokenizer, PROMPTS, 64, padding_side="left")
        logits = token_logits(model, sources, rollout.tokens, rollout.mask)  # (B, T, V)
        log_probs = logits.log_softmax(-1).gather(-1, rollout.tokens[..., None])[..., 0]
        loss = -(log_probs * rollout.mask).sum() / rollout.mask.sum()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_greedy_rollout_is_argmax_of_token_logits(model, tokenizer):
    """Generation (KV cache, padding) and token_logits (one pass) agree on the greedy path."""
    rollout = generate_ids(model, tokenizer, PROMPTS, GREEDY, max_source_length=64)
    sources = encode_sources(tokenizer, PROMPTS, 64, padding_side="right")
    with torch.no_grad():
        logits = token_logits(model, sources, rollout.tokens, rollout.mask)
    argmax = logits.argmax(-1)
    assert torch.equal(argmax[rollout.mask.bool()], rollout.tokens[rollout.mask.bool()])


def test_eos_token_ids(model, tokenizer):
    assert eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id]


@pytest.fixture(scope="module")
def other_model(arch, tokenizer):
    """A second, untrained model of the same architecture: the 'teacher' of the mixture tests."""
    torch.manual_seed(1)
    return build_model(ModelConfig(None, arch, "float32"), tokenizer).eval()


SAMPLE = GenerationConfig(max_new_tokens=10, batch_size=5, num_beams=1)


def test_teacher_mixture_at_its_ends_is_either_model(model, other_model, tokenizer):
    """alpha = 0 samples exactly what the model samples alone with the same seed; alpha -> 1
    what the teacher samples alone: the teacher's KV-cached steps track its own decoding."""
    kwargs = {"max_source_length": 64, "do_sample": True, "seed": 3}
    alone = generate_ids(model, tokenizer, PROMPTS, SAMPLE, **kwargs)
    mixed = generate_ids(
        model, tokenizer, PROMPTS, SAMPLE, teacher_mix=(other_model, 0.0), **kwargs
    )
    assert torch.equal(alone.tokens, mixed.tokens)
    teacher = generate_ids(other_model, tokenizer, PROMPTS, SAMPLE, **kwargs)
    nearly = generate_ids(
        model, tokenizer, PROMPTS, SAMPLE, teacher_mix=(other_model, 1 - 1e-7), **kwargs
    )
    assert torch.equal(teacher.tokens, nearly.tokens) and not torch.equal(
        teacher.tokens, alone.tokens
    )
    with pytest.raises(ValueError, match="do_sample"):
        generate_ids(
            model, tokenizer, PROMPTS, SAMPLE, max_source_length=64, teacher_mix=(other_model, 0.2)
        )


def test_teacher_mixture_is_the_mixture_at_every_step(model, other_model, tokenizer, monkeypatch):
    """Each step's distribution is log(alpha p_T + (1 - alpha) p_S) of the two models' logits on
    the prefix, checked against teacher-forced passes over the finished rollouts."""
    from ketchup.train import generation

    steps = []

    class Recording(generation.TeacherMixture):
        def __call__(self, input_ids, scores):
            out = super().__call__(input_ids, scores)
            steps.append((scores.clone(), out.clone()))
            return out

    monkeypatch.setattr(generation, "TeacherMixture", Recording)
    alpha = 0.4
    rollout = generate_ids(
        model,
        tokenizer,
        PROMPTS,
        SAMPLE,
        max_source_length=64,
        do_sample=True,
        seed=5,
        teacher_mix=(other_model, alpha),
    )
    sources = encode_sources(tokenizer, PROMPTS, 64, padding_side="right")
    with torch.no_grad():
        student = token_logits(model, sources, rollout.tokens, rollout.mask)
        teacher = token_logits(other_model, sources, rollout.tokens, rollout.mask)
    # one batch, prompts sorted longest first inside generate_ids: undo that order
    order = sorted(range(len(PROMPTS)), key=lambda i: -len(tokenizer(PROMPTS[i])["input_ids"]))
    assert len(steps) >= 2
    for t, (scores, out) in enumerate(steps[: rollout.tokens.shape[1]]):
        live = rollout.mask[order, t].bool()
        want = torch.logaddexp(
            teacher[order, t].log_softmax(-1) + math.log(alpha),
            student[order, t].log_softmax(-1) + math.log(1 - alpha),
        )
        torch.testing.assert_close(scores[live], student[order, t][live], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out[live], want[live], rtol=1e-4, atol=1e-4)


class _FavourPadding(torch.nn.Module):
    """An output head whose logits past the vocabulary win by far, as a padded logits dimension
    of an untrained (or badly trained) model may."""

    def __init__(self, head: torch.nn.Module, vocab_size: int):
        super().__init__()
        self.head, self.vocab_size = head, vocab_size

    def forward(self, hidden):
        logits = self.head(hidden)
        favour = torch.zeros(logits.shape[-1])
        favour[self.vocab_size :] = 100.0
        return logits + favour


def _padded(model, tokenizer):
    import copy

    padded = copy.deepcopy(model)
    padded.resize_token_embeddings(len(tokenizer) + 8)
    padded.lm_head = _FavourPadding(padded.lm_head, len(tokenizer))
    return padded


def test_rollouts_take_only_the_tokenizers_ids(model, other_model, tokenizer):
    """Some families pad their logits past the vocabulary; greedy, sampled and teacher-mixed
    rollouts still take only the tokenizer's ids, even where the padded logits would win."""
    student, teacher = _padded(model, tokenizer), _padded(other_model, tokenizer)
    sources = encode_sources(tokenizer, PROMPTS[:1], 64, padding_side="right")
    first = (torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))
    with torch.no_grad():
        assert int(token_logits(student, sources, *first).argmax(-1).min()) >= len(tokenizer)
    for kwargs in (
        {},
        {"do_sample": True, "seed": 0},
        {"do_sample": True, "seed": 0, "top_k": 5, "temperature": 0.7},
        {"do_sample": True, "seed": 0, "teacher_mix": (teacher, 0.5)},
    ):
        rollout = generate_ids(student, tokenizer, PROMPTS, SAMPLE, max_source_length=64, **kwargs)
        taken = rollout.tokens[rollout.mask.bool()]
        assert taken.numel() > 0 and int(taken.max()) < len(tokenizer), kwargs

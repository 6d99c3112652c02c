"""Batched generation: text for evaluation and teacher outputs, token ids for student rollouts.

Prompts are sorted by length so batches hold similar lengths (less padding), and results come back
in the original order. Decoding is exactly what is asked for: transformers 5 fills every unset
generation option from the checkpoint's ``generation_config.json`` (an instruct model's top-p or
repetition penalty, say), so every option that changes the distribution is set explicitly here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ketchup.config import GenerationConfig
from ketchup.data.batching import decoder_start_id, encode_prompt_ids, pad_batch, pad_token_id
from ketchup.models.loading import is_seq2seq
from ketchup.models.parallel import is_sharded

if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "Rollout",
    "TeacherMixture",
    "eos_token_ids",
    "generate",
    "generate_ids",
    "rollout_mask",
]


class Rollout(NamedTuple):
    """Generated token ids, on the model's device.

    ``tokens`` (B, T) long: the new tokens only (no prompt, no decoder start), pad after EOS;
    ``mask`` (B, T) long: 1 up to and including the first EOS, 0 after;
    ``finished`` (B,) bool: the row produced EOS within ``max_new_tokens``.
    """

    tokens: Tensor
    mask: Tensor
    finished: Tensor


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends generation: the tokenizer's EOS and the model's (may be several)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if int(item) not in ids:
                ids.append(int(item))
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config has an EOS token")
    return ids


def rollout_mask(tokens: Tensor, eos_ids: Sequence[int], valid: Tensor | None = None) -> Tensor:
    """(B, T) long mask: 1 up to and including each row's first EOS, 0 after.

    ``valid`` (B, T), optional: positions that hold generated tokens at all (0 beyond a row's end).
    """
    import torch

    is_eos = torch.isin(tokens, torch.as_tensor(list(eos_ids), device=tokens.device))
    if valid is not None:
        is_eos = is_eos & valid.bool()
    # EOS strictly before t: cumulative count minus the token itself.
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()
    mask = eos_before == 0
    if valid is not None:
        mask = mask & valid.bool()
    return mask.long()


def _decoding_config(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: GenerationConfig,
    *,
    do_sample: bool,
    top_k: int | None,
    temperature: float,
) -> Any:
    import transformers

    if cfg.max_new_tokens < 1 or cfg.num_beams < 1 or cfg.batch_size < 1:
        raise ValueError(f"generation config needs positive values, got {cfg}")
    if not do_sample and (top_k is not None or temperature != 1.0):
        raise ValueError("top_k and temperature apply to sampling only; pass do_sample=True")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for the full distribution), got {top_k}")
    pad = pad_token_id(tokenizer)
    options: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "min_length": 0,
        "num_beams": cfg.num_beams,
        "num_return_sequences": 1,
        "do_sample": do_sample,
        "use_cache": True,
        "eos_token_id": eos_token_ids(model, tokenizer),
        "pad_token_id": pad,
        # Neutral values, so that nothing is inherited from the checkpoint (see module docstring).
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "length_penalty": 1.0,
        "early_stopping": False,
        "return_dict_in_generate": False,
        "output_scores": False,
    }
    if do_sample:
        # top_k=0 turns top-k filtering off: samples come from the model's full distribution.
        options.update(
            temperature=temperature,
            top_k=0 if top_k is None else top_k,
            top_p=1.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
        )
    if is_seq2seq(model):
        options["decoder_start_token_id"] = decoder_start_id(model)
    return transformers.GenerationConfig(**options)


class TeacherMixture:
    """A logits processor that turns the model's next-token scores into the log-probabilities of
    MiniLLM's teacher-mixed distribution ``alpha p_T + (1 - alpha) p_S`` (Gu et al. 2024, LMOps
    ``teacher_mixed_sample``), running the teacher one step at a time with its own KV cache.

    Built per batch from the prompt ids and attention mask that ``generate`` receives (right
    padding for seq2seq, left padding for decoder-only models). Used with neither temperature
    nor top-k, the sampler then draws exactly from the mixture. Both distributions are taken over
    the first ``vocab_size`` ids (the tokenizer's, as the MiniLLM loss takes them); ids past it or
    past either model's logits (a padded logits dimension) get probability 0.
    """

    def __init__(self, teacher, alpha: float, input_ids, attention_mask, vocab_size: int):
        import inspect
        import math

        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"teacher_mix alpha must lie in [0, 1), got {alpha!r}")
        self.teacher = teacher
        self.vocab_size = vocab_size
        self.log_alpha = math.log(alpha) if alpha > 0 else -math.inf
        self.log_rest = math.log1p(-alpha)
        self.seq2seq = is_seq2seq(teacher)
        self.attention_mask = attention_mask
        self.cache = None
        # transformers renamed `past_key_values` to `cache` (5.x); accept either
        self.cache_key = (
            "cache"
            if "cache" in inspect.signature(teacher.forward).parameters
            else "past_key_values"
        )
        self.encoder_outputs = None
        if self.seq2seq:
            self.encoder_outputs = teacher.get_encoder()(
                input_ids=input_ids, attention_mask=attention_mask
            )

    def _teacher_logits(self, input_ids):
        import torch

        new = input_ids if self.cache is None else input_ids[:, -1:]
        if self.seq2seq:
            out = self.teacher(
                encoder_outputs=self.encoder_outputs,
                attention_mask=self.attention_mask,
                decoder_input_ids=new,
                use_cache=True,
                **{self.cache_key: self.cache},
            )
        else:
            # generate extends the attention mask by one column per step; so does this
            grow = input_ids.shape[1] - self.attention_mask.shape[1]
            if grow > 0:
                ones = self.attention_mask.new_ones(self.attention_mask.shape[0], grow)
                self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
            positions = (self.attention_mask.cumsum(-1) - 1).clamp_min(0)
            out = self.teacher(
                input_ids=new,
                attention_mask=self.attention_mask,
                position_ids=positions[:, -new.shape[1] :],
                use_cache=True,
                **{self.cache_key: self.cache},
            )
        self.cache = getattr(out, self.cache_key)
        return out.logits[:, -1, :]

    def __call__(self, input_ids, scores):
        import torch

        teacher = self._teacher_logits(input_ids).float()
        vocab = min(teacher.shape[-1], scores.shape[-1], self.vocab_size)
        log_t = teacher[:, :vocab].log_softmax(-1) + self.log_alpha
        log_s = scores[:, :vocab].float().log_softmax(-1) + self.log_rest
        mixed = torch.full_like(scores, -torch.inf, dtype=torch.float32)
        mixed[:, :vocab] = torch.logaddexp(log_t, log_s)
        return mixed


class VocabularyLimit:
    """A logits processor that gives the ids past the tokenizer's vocabulary probability 0.

    Some model families pad their logits past the vocabulary (Qwen2's sizes differ in padded
    width), and a padded id is no token: a rollout samples (or picks greedily) among the
    tokenizer's ids only, the distribution the losses score it under. Placed before
    temperature and top-k, which ``generate`` applies after every given processor.
    """

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, input_ids, scores):
        if scores.shape[-1] <= self.vocab_size:
            return scores
        scores = scores.clone()
        scores[:, self.vocab_size :] = -float("inf")
        return scores


@contextlib.contextmanager
def _eval_mode(model: PreTrainedModel) -> Iterator[None]:
    """Generate without dropout, then restore train mode if it was on (student rollouts)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Fix the sampling RNG for this call only, leaving the global RNG state as it was."""
    import torch

    if seed is None:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    max_source_length: int,
    do_sample: bool = False,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Generate one text per prompt, in the prompts' order.

    Greedy by default (beam search when ``cfg.num_beams > 1``); ``do_sample=True`` samples with
    ``temperature`` from the full distribution, or the ``top_k`` most likely tokens. ``seed``
    fixes sampling for this call without touching the global RNG. Prompts are cut to
    ``max_source_length`` tokens; special tokens are left out of the text. Runs in eval mode
    (restored afterwards) under ``torch.inference_mode`` (``no_grad`` under FSDP2) with the KV
    cache.
    """
    if not prompts:
        return []
    rollout = generate_ids(
        model,
        tokenizer,
        prompts,
        cfg,
        max_source_length=max_source_length,
        do_sample=do_sample,
        top_k=top_k,
        temperature=temperature,
        seed=seed,
        progress=progress,
    )
    # Cut each row at its mask rather than decoding the padded tensor: the text must not depend
    # on whether the pad id counts as a special token.
    lengths = rollout.mask.sum(dim=1).tolist()
    rows = [row[:n] for row, n in zip(rollout.tokens.tolist(), lengths, strict=True)]
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [text.strip() for text in texts]


def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    cfg: GenerationConfig,
    *,
    max_source_length: int,
    do_sample: bool = False,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    progress: bool = False,
    teacher_mix: tuple[PreTrainedModel, float] | None = None,
) -> Rollout:
    """Like :func:`generate`, but return the new token ids as a :class:`Rollout`.

    ``tokens`` (B, T) with T the longest output, ``mask`` and ``finished`` as described there;
    ordinary tensors (not inference tensors), so they can feed a forward pass with gradients,
    e.g. :func:`ketchup.data.batching.token_logits` over ``encode_sources`` of the same prompts.

    Under FSDP2 (a sharded ``model``) every process of the job calls this together, with as many
    prompts as the others.

    ``teacher_mix=(teacher, alpha)`` samples every token from MiniLLM's teacher-mixed
    distribution ``alpha p_T + (1 - alpha) p_S`` (Gu et al. 2024), the teacher run step by step
    beside the model with its own KV cache (:class:`TeacherMixture`); it needs ``do_sample``.
    """
    import torch
    import transformers

    from ketchup.train.progress import ProgressBar

    if not prompts:
        raise ValueError("generate_ids: no prompts")
    generation_config = _decoding_config(
        model, tokenizer, cfg, do_sample=do_sample, top_k=top_k, temperature=temperature
    )
    if teacher_mix is not None and not do_sample:
        raise ValueError("teacher_mix samples from a mixture: pass do_sample=True")
    eos_ids = set(generation_config.eos_token_id)
    seq2seq = is_seq2seq(model)
    # a model sharded with FSDP2 gathers each block's weights at every decoding step, a collective:
    # every process then takes the same number of steps (and of batches: the same prompt count)
    synced = is_sharded(model)
    pad = pad_token_id(tokenizer)
    encoded = encode_prompt_ids(tokenizer, prompts, max_source_length)
    # Longest first: similar lengths share a batch, and an out-of-memory error shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    rows: list[list[int]] = [[] for _ in encoded]
    finished = [False] * len(encoded)
    device = model.device

    bar = ProgressBar(total=len(encoded), desc="generate", unit="prompt", disable=not progress)
    # FSDP2 reuses its gather buffers outside this call, which inference tensors cannot be
    no_grad = torch.no_grad() if synced else torch.inference_mode()
    with _eval_mode(model), _seeded(seed, device), no_grad, bar:
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start : start + cfg.batch_size]
            # Left padding for decoder-only models: new tokens must follow every prompt directly.
            input_ids, attention_mask = pad_batch(
                [encoded[i] for i in chunk], pad, padding_side="right" if seq2seq else "left"
            )
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            processors = transformers.LogitsProcessorList()
            if teacher_mix is not None:
                teacher, alpha = teacher_mix
                mixture = TeacherMixture(teacher, alpha, input_ids, attention_mask, len(tokenizer))
                processors.append(mixture)
            processors.append(VocabularyLimit(len(tokenizer)))
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=processors,
                synced_gpus=synced,
            )
            # seq2seq output starts with the decoder start token; decoder-only repeats the prompt.
            new = out[:, 1:] if seq2seq else out[:, input_ids.shape[1] :]
            for row, i in zip(new.tolist(), chunk, strict=True):
                for t, token in enumerate(row):
                    if token in eos_ids:
                        rows[i], finished[i] = row[: t + 1], True
                        break
                else:
                    rows[i] = row
            bar.update(len(chunk))
    # Built outside inference_mode on purpose: inference tensors cannot be saved for backward.
    tokens, mask = pad_batch(rows, pad, padding_side="right")
    return Rollout(
        tokens=tokens.to(device),
        mask=mask.to(device),
        finished=torch.tensor(finished, dtype=torch.bool, device=device),
    )

"""Tokenizer and tensor glue shared by the trainers: batches for supervised training and
teacher-forced logits over (prompt, target) pairs for both encoder-decoder and decoder-only models.

Conventions: ``B`` batch, ``S`` prompt length, ``T`` target length, ``V`` vocabulary. Prompts are
encoded with the tokenizer's special tokens (T5-style tokenizers append EOS, which for decoder-only
models then separates prompt from target; Llama-style ones prepend BOS). Targets always end in EOS:
a target longer than ``max_target_length`` keeps its first ``max_target_length - 1`` tokens and EOS,
so every training sequence and every rollout ends the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ketchup.models.loading import is_seq2seq

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "decoder_start_id",
    "encode_pairs",
    "encode_prompt_ids",
    "encode_sources",
    "encode_target_ids",
    "pad_batch",
    "pad_token_id",
    "token_logits",
    "token_logits_and_next",
]

# Label value that cross-entropy (and transformers' loss) ignores.
IGNORE_INDEX = -100


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding: the pad token, else EOS (GPT-2 style tokenizers have no pad)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad token "
            "nor an EOS token"
        )
    return int(pad)


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token; "
            "targets need one"
        )
    return int(tokenizer.eos_token_id)


def _check_length(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def encode_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids of each prompt with the tokenizer's special tokens, at most ``max_length``."""
    _check_length("max_source_length", max_length)
    # truncation counts the special tokens, so a T5-style prompt keeps its final EOS.
    return tokenizer(
        list(prompts), add_special_tokens=True, truncation=True, max_length=max_length
    )["input_ids"]


def encode_target_ids(
    tokenizer: PreTrainedTokenizerBase, targets: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids of each target followed by EOS, at most ``max_length`` (EOS kept when cut)."""
    _check_length("max_target_length", max_length)
    eos = _eos_id(tokenizer)
    ids = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    return [row[: max_length - 1] + [eos] for row in ids]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, padding_side: str, fill: int | None = None
) -> tuple[Tensor, Tensor]:
    """(ids, mask), both (B, L) long: pad rows to the longest with ``fill`` (default ``pad_id``)."""
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    width = max((len(s) for s in sequences), default=0)
    value = pad_id if fill is None else fill
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        if n == 0:
            continue
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[i, cols] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def encode_sources(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_length: int,
    *,
    padding_side: str,
) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (B, S) for the prompts.

    Use ``padding_side="left"`` to generate with a decoder-only model (new tokens follow the
    last column), ``"right"`` for encoder inputs; :func:`token_logits` accepts either.
    """
    if not prompts:
        raise ValueError("encode_sources: no prompts")
    ids, mask = pad_batch(
        encode_prompt_ids(tokenizer, prompts, max_length),
        pad_token_id(tokenizer),
        padding_side=padding_side,
    )
    return {"input_ids": ids, "attention_mask": mask}


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    targets: Sequence[str],
    max_source_length: int,
    max_target_length: int,
    seq2seq: bool,
) -> dict[str, Tensor]:
    """A supervised batch; ``model(**batch).loss`` is the mean token cross-entropy of the targets.

    seq2seq: ``input_ids``/``attention_mask`` (B, S) of the prompts and ``labels`` (B, T) of the
    targets (ending in EOS), all right-padded, labels -100 at padding.
    Decoder-only: one right-padded row per pair, prompt + target + EOS, with ``labels`` equal to
    ``input_ids`` except -100 on the prompt and the padding (the model shifts them itself).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"encode_pairs: {len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise ValueError("encode_pairs: no examples")
    pad = pad_token_id(tokenizer)
    source_ids = encode_prompt_ids(tokenizer, prompts, max_source_length)
    target_ids = encode_target_ids(tokenizer, targets, max_target_length)
    if seq2seq:
        input_ids, attention_mask = pad_batch(source_ids, pad, padding_side="right")
        labels, _ = pad_batch(target_ids, pad, padding_side="right", fill=IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    rows = [s + t for s, t in zip(source_ids, target_ids, strict=True)]
    label_rows = [[IGNORE_INDEX] * len(s) + t for s, t in zip(source_ids, target_ids, strict=True)]
    input_ids, attention_mask = pad_batch(rows, pad, padding_side="right")
    labels, _ = pad_batch(label_rows, pad, padding_side="right", fill=IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _accepts(model: Any, argument: str) -> bool:
    try:
        return argument in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def decoder_start_id(model: PreTrainedModel) -> int:
    """The id an encoder-decoder's decoder starts from (config, generation config, else pad)."""
    for source in (model.config, getattr(model, "generation_config", None)):
        value = getattr(source, "decoder_start_token_id", None)
        if value is not None:
            return int(value)
    pad = getattr(model.config, "pad_token_id", None)
    if pad is None:
        raise ValueError(f"{type(model).__name__}: config has no decoder_start_token_id")
    return int(pad)


def _left_align(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's padding to the left, keeping token order: (B, S) -> (B, S)."""
    import torch

    # A stable sort of the 0/1 mask puts padding (0) first and keeps real tokens in order.
    order = torch.sort(mask, dim=1, stable=True).indices
    return ids.gather(1, order), mask.gather(1, order)


def token_logits(
    model: PreTrainedModel,
    batch: dict[str, Tensor],
    targets: Tensor,
    target_mask: Tensor,
) -> Tensor:
    """Teacher-forced logits (B, T, V): position t scores ``targets[:, t]`` given prompt and y_<t.

    ``batch`` holds the prompts' ``input_ids``/``attention_mask`` (B, S), as from
    :func:`encode_sources` with either padding side; ``targets`` (B, T) are token ids (e.g. a
    rollout) and ``target_mask`` (B, T) is 1 on real tokens (up to and including EOS) and 0 on
    padding, whose values are ignored. Works for encoder-decoders (decoder fed the right-shifted
    targets) and decoder-only models (prompt and targets in one pass, padding moved to the left
    and position ids counted over real tokens only, so a row's logits do not depend on how much
    padding the batch adds). Gradients flow; wrap in ``torch.no_grad()`` for a frozen teacher.
    Logits at masked positions are meaningless and should be masked by the caller.
    """
    import torch

    device = model.device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device=device, dtype=torch.long)
    targets = targets.to(device)
    target_mask = target_mask.to(device=device).long()
    if targets.dim() != 2 or targets.shape != target_mask.shape:
        raise ValueError(
            f"targets and target_mask must both be (B, T); got {tuple(targets.shape)} and "
            f"{tuple(target_mask.shape)}"
        )
    if targets.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"batch has {input_ids.shape[0]} prompts but targets has {targets.shape[0]} rows"
        )
    n_target = targets.shape[1]
    pad = getattr(model.config, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    # Padding may hold any value (-100 from labels); replace it with a valid id.
    clean = torch.where(target_mask.bool(), targets, torch.full_like(targets, pad))

    if is_seq2seq(model):
        start = torch.full_like(clean[:, :1], decoder_start_id(model))
        decoder_input_ids = torch.cat([start, clean[:, :-1]], dim=1)  # (B, T): y_<t
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return out.logits  # (B, T, V)

    if bool((attention_mask.sum(dim=1) == 0).any()):
        raise ValueError("token_logits: a decoder-only model needs a prompt token in every row")
    prompt_ids, prompt_mask = _left_align(input_ids, attention_mask)  # (B, S), padding first
    full_ids = torch.cat([prompt_ids, clean], dim=1)  # (B, S + T)
    full_mask = torch.cat([prompt_mask, target_mask], dim=1)
    kwargs: dict[str, Any] = {"attention_mask": full_mask, "use_cache": False}
    if _accepts(model, "position_ids"):
        # Positions count real tokens only: transformers 5 does not derive them from the mask.
        kwargs["position_ids"] = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
    # Logits at S-1 .. S+T-2 predict targets 0 .. T-1; only the last T+1 positions are needed.
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = n_target + 1
    logits = model(input_ids=full_ids, **kwargs).logits
    return logits[:, -(n_target + 1) : -1]  # (B, T, V)


def token_logits_and_next(
    model: PreTrainedModel,
    batch: dict[str, Tensor],
    targets: Tensor,
    target_mask: Tensor,
) -> tuple[Tensor, Tensor]:
    """:func:`token_logits` (B, T, V) and, from the same pass, (B, V) the logits at the state
    after each row's last target token, s_L (L the row's length): the pass gets one more position
    per row (a pad id after its last token, inside the mask), which no earlier position attends
    to, so the first T positions are those of :func:`token_logits`."""
    import torch

    b, t = targets.shape
    lengths = target_mask.long().sum(dim=1)  # (B,)
    pad = getattr(model.config, "pad_token_id", None)
    ext_targets = torch.nn.functional.pad(targets, (0, 1), value=int(pad) if pad is not None else 0)
    ext_mask = torch.nn.functional.pad(target_mask.long(), (0, 1))
    ext_mask.scatter_(1, lengths[:, None], 1)
    logits = token_logits(model, batch, ext_targets, ext_mask)  # (B, T + 1, V)
    rows = torch.arange(b, device=logits.device)
    return logits[:, :t], logits[rows, lengths.to(logits.device)]

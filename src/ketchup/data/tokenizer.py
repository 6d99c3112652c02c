"""A small BPE tokenizer trained on the task's text, for models built from scratch.

T5 conventions: ``<pad>`` is id 0, ``</s>`` (EOS) id 1, ``<unk>`` id 2, and every encoded sequence
ends in EOS (a post-processor appends it). Words are split on whitespace by a Metaspace
pre-tokenizer ("▁" marks a word start), so ``decode(encode(text))`` gives the text back with
whitespace normalised (runs of whitespace become one space, none at either end).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "UNK_TOKEN", "train_tokenizer"]

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: <pad> 0, </s> 1, <unk> 2 (as in T5).
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Printable ASCII without whitespace: seeding the alphabet with it means any ASCII text round-trips,
# even characters that never occur in the training text (they would otherwise become <unk>).
_ASCII_ALPHABET = [c for c in string.printable if not c.isspace()]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` (the task's training sources and targets).

    Returns a ``transformers`` fast tokenizer with ``pad_token``, ``eos_token`` and ``unk_token``
    set; ``save_pretrained(dir)`` then ``ketchup.models.loading.load_tokenizer(dir)`` gives the
    same ids.
    Training is deterministic for the same texts and ``vocab_size``. The vocabulary may come out
    smaller than ``vocab_size`` on little text (no more merges to learn); it is larger only when
    the characters alone exceed it. Text is NFKC-normalised with whitespace runs collapsed to one
    space; characters outside printable ASCII that never occur in ``texts`` encode as ``<unk>``.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 1}, got {vocab_size}")

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    # Whitespace runs (tabs, newlines) become one space: Metaspace only knows " ", and a tab
    # would otherwise be <unk>.
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    # prepend_scheme="always": the first word gets "▁" too, so a word has the same tokens wherever
    # it stands, and the decoder strips the leading space again.
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")

    # Seed the ASCII alphabet only when it leaves room for merges; tiny vocabularies (the schema
    # allows 64) keep just the characters seen in the text.
    alphabet = _ASCII_ALPHABET if vocab_size >= 4 * len(_ASCII_ALPHABET) else []
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    materialised = [text for text in texts if text]
    if not materialised:
        raise ValueError("train_tokenizer: no (non-empty) training texts")
    tokenizer.train_from_iterator(materialised, trainer=trainer)

    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:  # guards the T5 id convention the models rely on
            raise RuntimeError(f"special token {token!r} got id {actual}, expected {expected_id}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
    )

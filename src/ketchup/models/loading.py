"""Building, loading and saving teacher and student models (transformers 5).

Encoder-decoder models (T5, the default) load through ``AutoModelForSeq2SeqLM``, everything else
through ``AutoModelForCausalLM``; the choice follows ``config.is_encoder_decoder``. Distillation
compares the teacher's logit of the student's token, so teacher and students must share one
vocabulary: :func:`check_same_vocabulary` says so early and clearly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ketchup.config import ConfigError, ModelConfig
from ketchup.files import CorruptFileError, atomic_path
from ketchup.models import hub
from ketchup.models.architectures import architecture_config

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "architecture_config",
    "build_model",
    "check_same_vocabulary",
    "count_parameters",
    "is_seq2seq",
    "load_model",
    "load_tokenizer",
    "local_directory",
    "model_reference",
    "resolve_dtype",
    "save_model",
]

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# Hub ids are "name" or "org/name"; anything else with a path separator is a filesystem path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

# What a tokenizer is read from: a directory with none of these (or a *.tiktoken) has none.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tekken.json",
)
# `tokenizer_class` of a tokenizer that is its tokenizer.json and nothing else (transformers 5
# writes TokenizersBackend, 4 PreTrainedTokenizerFast).
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


# --------------------------------------------------------------------------------------------
# dtypes and devices
# --------------------------------------------------------------------------------------------


def resolve_dtype(precision: str, device: Any = None) -> torch.dtype:
    """The torch dtype for a ``precision`` setting on ``device`` (default: the CPU).

    ``auto`` is bfloat16 on a CUDA device that supports it, float16 on other CUDA devices and
    float32 elsewhere; ``float32``, ``bfloat16`` and ``float16`` are taken as named.
    """
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown value {precision!r}; choose one of {PRECISIONS}")
    if precision != "auto":
        return getattr(torch, precision)
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _as_dtype(dtype: Any, device: Any) -> Any:
    """Accept a torch.dtype, a precision name (resolved for ``device``) or None (unchanged)."""
    if isinstance(dtype, str):
        return resolve_dtype(dtype, device)
    return dtype


def _place(model: PreTrainedModel, device: Any) -> PreTrainedModel:
    return model.to(device) if device is not None else model


# --------------------------------------------------------------------------------------------
# Building from scratch
# --------------------------------------------------------------------------------------------


def _tokenizer_config_values(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; "
            "a model built from scratch needs one to end its outputs"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": pad,
        "eos_token_id": eos,
        "bos_token_id": bos,
    }


def build_model(
    model: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: Any = None,
    device: Any = None,
    where: str = "model",
) -> PreTrainedModel:
    """A randomly initialised model from ``model.architecture`` (seed torch first to fix it).

    ``architecture`` holds ``model_type`` and keyword arguments of that model's transformers config;
    vocabulary size and pad / EOS / BOS ids come from ``tokenizer`` (and the decoder start id is
    the pad id for encoder-decoders, as in T5). ``where`` prefixes the config key in errors
    (e.g. ``students.small.model``). Raises :class:`ConfigError` as :func:`architecture_config`.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if model.architecture is None:
        raise ConfigError(
            f"config key '{where}.architecture': needed to build a model from scratch"
        )
    from_tokenizer = _tokenizer_config_values(tokenizer)
    config = architecture_config(model.architecture, where=where, tokenizer_values=from_tokenizer)
    model_type = config.model_type
    if config.is_encoder_decoder:
        # T5 starts decoding from the pad token; generation and token_logits read this id.
        config.decoder_start_token_id = from_tokenizer["pad_token_id"]

    auto_cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    try:
        built = auto_cls.from_config(config, dtype=_as_dtype(dtype, device))
    except ValueError as err:  # e.g. a config type with no LM head ("bert" as a causal LM)
        raise ConfigError(
            f"config key '{where}.architecture.model_type': {model_type!r} has no "
            f"{'sequence-to-sequence' if config.is_encoder_decoder else 'causal'} "
            f"language-model class ({err})"
        ) from err
    if config.is_encoder_decoder:
        built.generation_config.decoder_start_token_id = config.decoder_start_token_id
    return _place(built, device)


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    if os.path.isabs(name) or name in (".", "..") or name.startswith(("~", "./", "../")):
        return True
    if os.sep in name or (os.altsep and os.altsep in name):
        return not _HUB_ID.match(name)
    return False


def local_directory(name_or_path: str) -> str | None:
    """The local directory that ``name_or_path`` names (it may not exist yet), or None when it is
    a hub id (``org/name``, ``org/name@revision``): the workflow lists a local model's files as its
    jobs' inputs."""
    name = os.path.expanduser(os.fspath(name_or_path))
    if os.path.exists(name) or _looks_like_path(hub.split_reference(name)[0]):
        return name
    return None


def model_reference(model: ModelConfig) -> str:
    """How the jobs name a pretrained model: its directory, its hub id, or ``id@revision``."""
    if model.name_or_path is None:
        raise ConfigError("model_reference: the model has no name_or_path")
    if model.revision is None:
        return model.name_or_path
    if local_directory(model.name_or_path) is not None:
        raise ConfigError(
            f"revision {model.revision!r}: {model.name_or_path!r} is a local directory; a "
            "revision pins a hub id only"
        )
    return hub.reference(model.name_or_path, model.revision)


def _resolve_source(name_or_path: str, what: str) -> tuple[str, bool, str | None]:
    """(where to load from, local_files_only, revision) for a local directory or a hub id
    (``id@revision`` pins a revision)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path or hub id, got {type(name_or_path).__name__}")
    name = os.path.expanduser(os.fspath(name_or_path))
    if os.path.isdir(name):
        return name, True, None
    if os.path.exists(name):
        raise NotADirectoryError(f"{what} {name!r} is a file; expected a model directory")
    hub_id, revision = hub.split_reference(name)
    if _looks_like_path(hub_id):
        raise FileNotFoundError(f"{what} directory {name!r} does not exist")
    return hub_id, False, revision


@contextlib.contextmanager
def _loading(what: str, source: str, local: bool, revision: str | None = None):
    """A hub failure is one line naming the id and the local-directory way around it; a local
    directory that cannot be read (a truncated or damaged file) is named with what to do, instead
    of a parser's traceback."""
    try:
        yield
    except Exception as err:
        if not local:
            if hub.is_hub_failure(err):
                raise hub.model_error(what, source, revision, err) from err
            raise
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise CorruptFileError(
            f"{source}: the {what} cannot be loaded ({type(err).__name__}: {reason}); if a "
            f"workflow job wrote it, delete {source} and rerun to rebuild it"
        ) from err


def load_model(
    name_or_path: str, *, dtype: Any = None, device: Any = None, device_map: str | None = None
) -> PreTrainedModel:
    """Load a pretrained model from a local directory or a hub id (``id@revision`` to pin one).

    ``dtype`` is a torch dtype, a precision name (see :func:`resolve_dtype`) or None (the dtype
    the checkpoint was saved in); ``device`` is where to put it, or ``device_map="auto"`` spreads
    its layers over the visible GPUs (accelerate's dispatch). A missing local directory raises
    FileNotFoundError naming it, a failed hub load :class:`ketchup.models.hub.HubError`. The model
    is returned in eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    source, local, revision = _resolve_source(name_or_path, "model")
    with _loading("model", source, local, revision):
        config = AutoConfig.from_pretrained(source, local_files_only=local, revision=revision)
    auto_cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"config": config, "local_files_only": local, "revision": revision}
    resolved = _as_dtype(dtype, device)
    if resolved is not None:
        kwargs["dtype"] = resolved  # transformers 5 name (was torch_dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    with _loading("model", source, local, revision):
        model = auto_cls.from_pretrained(source, **kwargs)
    return (model if device_map is not None else _place(model, device)).eval()


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local directory or a hub id (``id@revision`` to pin one): exactly
    the one saved there.

    A tokenizer saved as the generic fast class (one built with `tokenizers`, as
    :func:`ketchup.data.tokenizer.train_tokenizer` builds it) is loaded from its tokenizer.json as
    it is: AutoTokenizer would replace it, beside a model of some types (qwen2, phi3, ...), by that
    family's class rebuilt from the vocabulary with the family's own pre-tokenizer, which gives
    other ids for the same text. A local directory without tokenizer files is refused (AutoTokenizer
    would build an empty placeholder whose outputs are empty).

    Decoder-only tokenizers without a pad token (GPT-2, Llama) get the EOS token as pad token,
    since batching needs one; attention masks keep the two apart.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    source, local, revision = _resolve_source(name_or_path, "tokenizer")
    if local and not _has_tokenizer_files(Path(source)):
        raise FileNotFoundError(
            f"{source}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); a model directory "
            "must hold the tokenizer it was trained with (save_pretrained it beside the model)"
        )
    with _loading("tokenizer", source, local, revision):
        declared = get_tokenizer_config(source, local_files_only=local, revision=revision).get(
            "tokenizer_class"
        )
        loader = PreTrainedTokenizerFast if declared in _GENERIC_TOKENIZERS else AutoTokenizer
        tokenizer = loader.from_pretrained(source, local_files_only=local, revision=revision)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _TOKENIZER_FILES) or any(
        directory.glob("*.tiktoken")
    )


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Save model and tokenizer to ``out_dir`` atomically and return the path.

    ``state_dict``: the weights to write instead of the model's own (the full state of a model
    sharded with FSDP2, gathered by :class:`ketchup.models.parallel.Engine`).

    Both are written into a temporary sibling directory (``.NAME.XXXX.tmp``, see
    :func:`ketchup.files.atomic_path`) that is renamed into place at the end, so an interrupted
    save never leaves a directory that looks finished, and the next save removes what a killed
    one left. An existing ``out_dir`` is replaced.
    """
    out = Path(out_dir)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        # FSDP2 subclasses the model's class (FSDPT5ForConditionalGeneration): name the class
        plain = next(c for c in type(model).__mro__ if c.__module__.startswith("transformers"))
        if plain is not type(model):
            config = json.loads((tmp / "config.json").read_text())
            config["architectures"] = [plain.__name__]
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


def is_seq2seq(model: PreTrainedModel) -> bool:
    """Whether ``model`` is an encoder-decoder (T5, BART) rather than decoder-only."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def count_parameters(model: Any) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def _tokenizer_label(tokenizer: Any, name: str) -> str:
    path = getattr(tokenizer, "name_or_path", "") or ""
    return f"{name} ({path})" if path else name


def check_same_vocabulary(
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_name: str = "teacher",
    student_name: str = "student",
) -> None:
    """Raise ValueError unless both tokenizers map the same tokens to the same ids.

    The distillation reward is the teacher's logit of the student's token id, so a student with
    another vocabulary (even one token shifted) would be trained on nonsense. The message names
    both, the sizes and the first id whose token differs.
    """
    t_label = _tokenizer_label(teacher_tokenizer, teacher_name)
    s_label = _tokenizer_label(student_tokenizer, student_name)
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    problem = None
    if t_vocab != s_vocab or len(teacher_tokenizer) != len(student_tokenizer):
        t_by_id = {i: tok for tok, i in t_vocab.items()}
        s_by_id = {i: tok for tok, i in s_vocab.items()}
        for i in sorted(set(t_by_id) | set(s_by_id)):
            t_tok, s_tok = t_by_id.get(i), s_by_id.get(i)
            if t_tok != s_tok:
                problem = (
                    f"sizes {len(teacher_tokenizer)} vs {len(student_tokenizer)}; first difference "
                    f"at id {i}: {teacher_name} has {t_tok!r}, {student_name} has {s_tok!r}"
                )
                break
        else:
            problem = f"sizes {len(teacher_tokenizer)} vs {len(student_tokenizer)}"
    elif teacher_tokenizer.eos_token_id != student_tokenizer.eos_token_id:
        problem = (
            f"EOS ids differ: {teacher_name} {teacher_tokenizer.eos_token_id}, "
            f"{student_name} {student_tokenizer.eos_token_id}"
        )
    if problem is not None:
        raise ValueError(
            f"{t_label} and {s_label} do not share a vocabulary ({problem}). Distillation scores "
            f"the {student_name}'s tokens with the {teacher_name}'s logits, so both must use the "
            f"same tokenizer: build the {student_name} from scratch with the {teacher_name}'s "
            f"tokenizer, or pick a pretrained {student_name} from the {teacher_name}'s model "
            "family."
        )


def init_model(model: ModelConfig, tokenizer: PreTrainedTokenizerBase, *, where: str):
    """The model a stage trains: built from `architecture`, or loaded from `name_or_path`.

    In float32 either way (a checkpoint saved in bfloat16 too): the trainer keeps float32 weights
    and reaches `model.precision` by autocast (see `ketchup.models.precision`).
    """
    if model.from_scratch:
        return build_model(model, tokenizer, dtype="float32", where=where)
    return load_model(model_reference(model), dtype="float32")


def disable_dropout(model: Any) -> Any:
    """Set every dropout probability to 0, in place, and return the model.

    For on-policy training: the log-probabilities in the loss must be those of the policy that
    sampled the rollouts, which runs without dropout (TRL's trainers do the same).
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model

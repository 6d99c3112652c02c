"""The transformers config of a model built from scratch, checked key by key: what the config
validation runs before any job (``ModelConfig.check``) and
``ketchup.models.loading.build_model`` builds from. Below the config module: it imports only the
error type, and transformers when called.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
from typing import Any

from ketchup.errors import ConfigError, yaml_number_hint

__all__ = ["TOKENIZER_KEYS", "architecture_config"]

# Config keys every PreTrainedConfig accepts beyond its own fields (handled by the base class or by
# the model code through getattr), so they are not "unknown" even where no field declares them.
_GENERIC_CONFIG_KEYS = frozenset(
    {
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "tie_word_embeddings",
        "is_decoder",
        "add_cross_attention",
        "use_cache",
        "output_attentions",
        "num_labels",
        "attn_implementation",
    }
)

# Set from the tokenizer (vocabulary) or by build_model itself; see _tokenizer_config_values.
TOKENIZER_KEYS = ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id")
_KNOWN_EXAMPLES = ("t5", "bart", "gpt2", "llama", "qwen2")


def _known_config_keys(config_cls: type) -> set[str]:
    """Keyword arguments ``config_cls`` understands (transformers accepts and keeps any others)."""
    keys: set[str] = set(_GENERIC_CONFIG_KEYS)
    if dataclasses.is_dataclass(config_cls):  # transformers 5: configs are dataclasses
        keys.update(f.name for f in dataclasses.fields(config_cls))
    keys.update(
        name
        for name, p in inspect.signature(config_cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    )
    keys.update(getattr(config_cls, "attribute_map", {}) or {})
    # transformers 4: the default instance's attributes (composite configs may fail to build).
    with contextlib.suppress(Exception):
        keys.update(config_cls().to_dict())
    return keys


def _defaults(config_cls: type) -> dict[str, Any]:
    """Each config field's default value, by name (aliases of ``attribute_map`` included)."""
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(config_cls):  # transformers 5
        fields = dataclasses.fields(config_cls)
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    else:  # transformers 4: the default instance (composite configs may fail to build)
        with contextlib.suppress(Exception):
            defaults = config_cls().to_dict()
    for alias, name in (getattr(config_cls, "attribute_map", {}) or {}).items():
        if name in defaults:
            defaults.setdefault(alias, defaults[name])
    return defaults


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _value_problem(key: str, value: Any, default: Any) -> str | None:
    """What is wrong with ``value`` for a config field whose default is ``default``, or None.

    The config classes accept nearly anything (transformers 4) or check types only (5), so a size
    of -7 would surface as a tensor error deep inside the first job; sizes and counts (integer
    fields with a positive default, ``num_*`` counts) must be positive, dropouts in [0, 1].
    """
    if _is_int(default):
        if not _is_int(value):
            return f"expected an integer, got {value!r}{yaml_number_hint(value)}"
        if default > 0 and value < 1:
            return f"{value} is not allowed; a size or count must be at least 1 (default {default})"
    elif isinstance(default, float) and not (
        isinstance(value, (int, float)) and not isinstance(value, bool)
    ):
        return f"expected a number, got {value!r}{yaml_number_hint(value)}"
    elif isinstance(default, str) and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    if default is None and key.startswith("num_") and _is_int(value) and value < 1:
        return f"{value} is not allowed; a count must be at least 1"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ("dropout" in key or "pdrop" in key) and is_number and not 0 <= value <= 1:
        return f"{value} is not allowed; a dropout probability is between 0 and 1"
    return None


def architecture_config(
    architecture: dict[str, Any],
    *,
    where: str = "model",
    tokenizer_values: dict[str, int] | None = None,
):
    """The transformers config that ``architecture`` describes; no weights are built.

    ``architecture`` holds ``model_type`` and keyword arguments of that model's config class.
    ``tokenizer_values`` (vocabulary size, pad / EOS / BOS ids) are filled in when given; a value
    in ``architecture`` that disagrees with them is an error. Raises :class:`ConfigError` naming
    the key (``where`` prefixes it, e.g. ``students.small.model``) for an unknown ``model_type``,
    a key the config class does not know, a value of the wrong type, a size or count that is not
    positive, or a dropout outside [0, 1]. Cheap (no tensors), so configs are checked with it
    before any job runs.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    arch = dict(architecture)
    model_type = arch.pop("model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise ConfigError(f"config key '{where}.architecture.model_type': required (e.g. t5, gpt2)")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(
            f"config key '{where}.architecture.model_type': unknown model type {model_type!r} in "
            f"this transformers version; known ones include {', '.join(_KNOWN_EXAMPLES)}"
        )
    config_cls = CONFIG_MAPPING[model_type]
    unknown = sorted(set(arch) - _known_config_keys(config_cls))
    if unknown:
        raise ConfigError(
            f"config key '{where}.architecture': {config_cls.__name__} does not know "
            f"{', '.join(repr(k) for k in unknown)} (check the spelling against the transformers "
            f"docs for model_type {model_type!r})"
        )
    defaults = _defaults(config_cls)
    for key, value in arch.items():
        problem = _value_problem(key, value, defaults.get(key))
        if problem:
            raise ConfigError(f"config key '{where}.architecture.{key}': {problem}")
    for key in TOKENIZER_KEYS if tokenizer_values else ():
        # Allowed when it agrees (e.g. copied from a pretrained config), never silently overridden.
        if key in arch and arch[key] != tokenizer_values[key]:
            raise ConfigError(
                f"config key '{where}.architecture.{key}': {arch[key]!r} disagrees with the "
                f"tokenizer ({tokenizer_values[key]!r}); leave it out, it comes from the tokenizer"
            )
    arch.update(tokenizer_values or {})
    try:
        return AutoConfig.for_model(model_type, **arch)
    except Exception as err:  # TypeError / ValueError, or transformers 5's strict validation
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        field = re.search(r"field '([^']+)'", lines[0]) if lines else None
        if field:  # "Validation error for field 'd_kv':" / "TypeError: Field 'd_kv' expected ..."
            key, detail = field.group(1), lines[-1].split(f"'{field.group(1)}' ", 1)[-1]
            raise ConfigError(f"config key '{where}.architecture.{key}': {detail}") from err
        raise ConfigError(f"config key '{where}.architecture': {' '.join(lines)}") from err

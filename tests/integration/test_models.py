"""Tokenizer, model building, loading and saving, and the batching glue, on tiny models (CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoTokenizer

from ketchup.config import ConfigError, ModelConfig
from ketchup.data.batching import (
    IGNORE_INDEX,
    encode_pairs,
    encode_sources,
    token_logits,
    token_logits_and_next,
)
from ketchup.data.tokenizer import train_tokenizer
from ketchup.models.loading import (
    build_model,
    check_same_vocabulary,
    count_parameters,
    is_seq2seq,
    load_model,
    load_tokenizer,
    resolve_dtype,
    save_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def model_config(arch: dict) -> ModelConfig:
    return ModelConfig(name_or_path=None, architecture=arch, precision="float32")


@pytest.fixture(scope="module")
def model(arch, tokenizer):
    torch.manual_seed(0)
    return build_model(model_config(arch), tokenizer).eval()


# --------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_special_tokens_and_eos(tokenizer, texts):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    for text in texts[:5]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.eos_token_id not in ids[:-1]


@pytest.mark.parametrize(
    "text",
    [
        # Two texts of the tokenizer's corpus, then two it never saw.
        "name[The Golden Fork] | food[Italian] | area[riverside]",
        "The Golden Fork serves English food in the city centre area.",
        "  Cotto   serves\tItalian food.  ",
        "Blue Spice | food[French]",
    ],
)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert " ".join(decoded.split()) == " ".join(text.split())


def test_tokenizer_ascii_alphabet_when_room(texts):
    # With room for it, printable ASCII is in the alphabet, so unseen characters round-trip.
    tok = train_tokenizer(texts, vocab_size=1000)
    text = "Quux & Co. {42} ~ 100% #1 @home"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_deterministic(tokenizer, texts):
    again = train_tokenizer(texts, vocab_size=300)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again(texts)["input_ids"] == tokenizer(texts)["input_ids"]


def test_tokenizer_save_load_same_ids(tokenizer, tmp_path, texts):
    tokenizer.save_pretrained(tmp_path / "tok")
    for loaded in (
        AutoTokenizer.from_pretrained(tmp_path / "tok"),
        load_tokenizer(str(tmp_path / "tok")),
    ):
        assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
        assert loaded.get_vocab() == tokenizer.get_vocab()
        assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)


def test_train_tokenizer_rejects_empty():
    with pytest.raises(ValueError, match="no"):
        train_tokenizer([], vocab_size=100)


# --------------------------------------------------------------------------------------------
# Building


def test_build_model_kinds(tokenizer, archs):
    torch.manual_seed(0)
    t5 = build_model(model_config(archs["t5"]), tokenizer)
    gpt2 = build_model(model_config(archs["gpt2"]), tokenizer)
    assert is_seq2seq(t5) and not is_seq2seq(gpt2)
    for m in (t5, gpt2):
        assert m.config.vocab_size == len(tokenizer)
        assert m.get_input_embeddings().weight.shape[0] == len(tokenizer)
        assert (m.config.pad_token_id, m.config.eos_token_id) == (0, 1)
        assert m.dtype == torch.float32
        unique = {id(p): p.numel() for p in m.parameters()}
        assert count_parameters(m) == sum(unique.values()) > 0
    assert t5.config.decoder_start_token_id == 0
    assert t5.generation_config.decoder_start_token_id == 0
    assert t5.config.d_model == 32 and gpt2.config.n_embd == 32


def test_build_model_dtype(tokenizer, archs):
    m = build_model(model_config(archs["gpt2"]), tokenizer, dtype="bfloat16")
    assert m.dtype == torch.bfloat16


def test_build_model_unknown_key(tokenizer, archs):
    arch = {**archs["t5"], "d_modle": 64, "n_layers": 2}
    with pytest.raises(ConfigError) as err:
        build_model(model_config(arch), tokenizer, where="students.small.model")
    message = str(err.value)
    assert "'d_modle'" in message and "'n_layers'" in message
    assert "students.small.model.architecture" in message


def test_build_model_attribute_map_alias_accepted(tokenizer):
    # GPT-2 maps the standard names (hidden_size, num_hidden_layers) onto its own.
    arch = {"model_type": "gpt2", "hidden_size": 32, "num_hidden_layers": 1, "n_head": 2}
    m = build_model(model_config(arch), tokenizer)
    assert m.config.n_embd == 32 and m.config.n_layer == 1


def test_build_model_unknown_model_type(tokenizer):
    with pytest.raises(ConfigError) as err:
        build_model(model_config({"model_type": "t6", "d_model": 32}), tokenizer)
    assert "'t6'" in str(err.value) and "t5" in str(err.value) and "gpt2" in str(err.value)


def test_build_model_vocab_size_from_tokenizer(tokenizer, archs):
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model(model_config({**archs["gpt2"], "vocab_size": 32000}), tokenizer)
    # An agreeing value is fine.
    build_model(model_config({**archs["gpt2"], "vocab_size": len(tokenizer)}), tokenizer)


def test_build_model_needs_architecture(tokenizer):
    with pytest.raises(ConfigError, match="architecture"):
        build_model(ModelConfig("some/model", None, "auto"), tokenizer)


# --------------------------------------------------------------------------------------------
# dtypes


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", None) is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    assert resolve_dtype("float32", "cpu") is torch.float32
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8", "cpu")


# --------------------------------------------------------------------------------------------
# Saving and loading


def _logits(m, tokenizer, pairs):
    batch = encode_sources(tokenizer, [p for p, _ in pairs[:3]], 64, padding_side="right")
    prompts, targets = [p for p, _ in pairs[:3]], [t for _, t in pairs[:3]]
    labels = encode_pairs(tokenizer, prompts, targets, 64, 32, True)["labels"]
    mask = (labels != IGNORE_INDEX).long()
    with torch.no_grad():
        return token_logits(m, batch, labels, mask) * mask[..., None]


def test_save_load_same_outputs(model, tokenizer, tmp_path, texts, pairs):
    out = save_model(model, tokenizer, tmp_path / "models" / "m")
    assert out == tmp_path / "models" / "m"
    assert sorted(os.listdir(tmp_path / "models")) == ["m"]  # no temporary directories left
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(out))
    loaded = load_model(str(out))
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(_logits(loaded, tokenizer, pairs), _logits(model, tokenizer, pairs))
    reloaded_tok = load_tokenizer(str(out))
    assert reloaded_tok(texts)["input_ids"] == tokenizer(texts)["input_ids"]


def test_load_model_dtype(tokenizer, tmp_path, archs):
    m = build_model(model_config(archs["gpt2"]), tokenizer)
    save_model(m, tokenizer, tmp_path / "m")
    assert load_model(str(tmp_path / "m"), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_model(str(tmp_path / "m"), dtype="float16").dtype == torch.float16
    assert load_model(str(tmp_path / "m"), device="cpu").dtype == torch.float32


def test_save_model_replaces_existing(tokenizer, tmp_path, archs, pairs):
    torch.manual_seed(0)
    first = build_model(model_config(archs["gpt2"]), tokenizer)
    torch.manual_seed(1)
    second = build_model(model_config(archs["gpt2"]), tokenizer)
    save_model(first, tokenizer, tmp_path / "m")
    save_model(second, tokenizer, tmp_path / "m")
    assert os.listdir(tmp_path) == ["m"]
    loaded = load_model(str(tmp_path / "m"))
    assert torch.equal(_logits(loaded, tokenizer, pairs), _logits(second.eval(), tokenizer, pairs))


def test_save_model_interrupted_leaves_nothing(tokenizer, tmp_path, monkeypatch, archs):
    m = build_model(model_config(archs["gpt2"]), tokenizer)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        save_model(m, tokenizer, tmp_path / "m")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json", "tokenizer.json"])
def test_damaged_saved_model_names_the_directory_and_what_to_do(
    tokenizer, tmp_path, archs, damaged
):
    """A cached model cut short (a full disk, a copy interrupted): one clear error, no parser
    traceback."""
    from ketchup.files import CorruptFileError

    save_model(build_model(model_config(archs["t5"]), tokenizer), tokenizer, tmp_path / "m")
    path = tmp_path / "m" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    load = load_tokenizer if damaged == "tokenizer.json" else load_model
    with pytest.raises(CorruptFileError) as err:
        load(str(tmp_path / "m"))
    assert str(err.value).startswith(f"{tmp_path / 'm'}: the ")
    assert f"delete {tmp_path / 'm'} and rerun" in str(err.value)


@pytest.mark.parametrize("relative", [False, True])
def test_load_missing_path_names_it(tmp_path, monkeypatch, relative):
    monkeypatch.chdir(tmp_path)
    missing = "./no/such/model" if relative else str(tmp_path / "no" / "such" / "model")
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_tokenizer(missing)


def test_load_model_from_file_path(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(NotADirectoryError, match="weights.bin"):
        load_model(str(tmp_path / "weights.bin"))


def test_save_model_removes_what_a_killed_save_left(tokenizer, tmp_path, archs):
    """A save killed before its rename leaves `.m.XXXX.tmp`; the next save of m removes it."""
    leftover = tmp_path / ".m.k1ll3d.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".other.k1ll3d.tmp").write_text("another output's")
    save_model(build_model(model_config(archs["gpt2"]), tokenizer), tokenizer, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == [".other.k1ll3d.tmp", "m"]


def test_a_pinned_revision_travels_with_the_hub_id(tmp_path, monkeypatch):
    """`revision:` of a hub model: the jobs pass `id@revision`, and loading asks the hub for
    that revision; a local directory takes no revision."""
    from ketchup.models.loading import local_directory, model_reference

    pinned = ModelConfig("google/flan-t5-xl", None, "auto", revision="7d6315d")
    assert model_reference(pinned) == "google/flan-t5-xl@7d6315d"
    assert model_reference(ModelConfig("t5-base", None, "auto")) == "t5-base"
    assert local_directory("google/flan-t5-xl@7d6315d") is None
    assert local_directory("./models/teacher") == "./models/teacher"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google" / "flan-t5-xl").mkdir(parents=True)  # a local copy under that name
    assert local_directory("google/flan-t5-xl") == "google/flan-t5-xl"
    with pytest.raises(ConfigError, match="a revision pins a hub id only"):
        model_reference(pinned)

    import transformers

    asked = []

    def from_pretrained(name, **kwargs):
        asked.append((name, kwargs.get("revision")))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    for load in (load_model, load_tokenizer):
        with pytest.raises(Exception, match="at revision 7d6315d"):
            load("org/model@7d6315d")
    assert asked == [("org/model", "7d6315d")] * 2


def test_an_offline_hub_load_is_one_line_naming_the_model_and_the_way_around(capsys, tmp_path):
    """HF_HUB_OFFLINE=1 (as in these tests) and a hub id that is not cached: the job's error is
    one line naming the model and how to use a local copy, not the library's traceback."""
    from ketchup.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text('{"id": "a", "source": "x", "target": "y"}\n')
    argv = ["teacher-outputs", "--teacher", "org/not-cached@v2", "--data-dir", str(data)]
    argv += ["--split", "test", "--task-json", '{"dataset": "embedded"}', "--out", "o.jsonl"]
    teacher = (
        '{"mode": "prompted", "model": {"name_or_path": "org/not-cached"}, "max_source_length": 8}'
    )
    argv += ["--config-json", teacher]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    # the tokenizer is loaded first (a model directory without one is refused before its weights)
    assert err.startswith(
        "ketchup teacher-outputs: error: tokenizer 'org/not-cached' at revision v2: not a local "
        "directory, and loading it from the Hugging Face Hub failed: the hub is switched off here"
    ), err
    assert err.endswith(
        "(hf download org/not-cached --revision v2 --local-dir DIR), then set its name_or_path "
        "to DIR"
    ), err


# --------------------------------------------------------------------------------------------
# Vocabulary check


def test_check_same_vocabulary(tokenizer, tmp_path):
    check_same_vocabulary(tokenizer, tokenizer)
    tokenizer.save_pretrained(tmp_path / "tok")
    check_same_vocabulary(tokenizer, load_tokenizer(str(tmp_path / "tok")))


def test_check_same_vocabulary_mismatch(tokenizer):
    other = train_tokenizer(["A completely different corpus of words."] * 3, vocab_size=80)
    with pytest.raises(ValueError) as err:
        check_same_vocabulary(tokenizer, other, teacher_name="teacher", student_name="small")
    message = str(err.value)
    assert "teacher" in message and "small" in message
    assert f"{len(tokenizer)} vs {len(other)}" in message
    assert "first difference at id" in message
    assert "same tokenizer" in message


# --------------------------------------------------------------------------------------------
# Batching


def test_encode_pairs_seq2seq(tokenizer, pairs):
    prompts, targets = [pairs[0][0], "short"], [pairs[0][1], "ok"]
    batch = encode_pairs(tokenizer, prompts, targets, 64, 32, seq2seq=True)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape and ids.shape[0] == labels.shape[0] == 2
    assert mask[0].all() and not mask[1].all() and mask[1, 0] == 1  # right padding
    assert ids[1, mask[1].sum() - 1] == tokenizer.eos_token_id  # prompts end in EOS (T5)
    for row, target in zip(labels, targets, strict=True):
        real = row[row != IGNORE_INDEX]
        assert real[-1] == tokenizer.eos_token_id
        assert (row[len(real) :] == IGNORE_INDEX).all()
        assert tokenizer.decode(real, skip_special_tokens=True) == target


def test_encode_pairs_truncation_keeps_eos(tokenizer, pairs):
    batch = encode_pairs(tokenizer, [pairs[0][0]], [pairs[0][1]], 4, 3, seq2seq=True)
    assert batch["input_ids"].shape == (1, 4) and batch["input_ids"][0, -1] == 1
    assert batch["labels"].shape == (1, 3) and batch["labels"][0, -1] == 1
    causal = encode_pairs(tokenizer, [pairs[0][0]], [pairs[0][1]], 4, 3, seq2seq=False)
    assert causal["input_ids"].shape == (1, 7) and causal["input_ids"][0, -1] == 1


def test_encode_pairs_causal(tokenizer, pairs):
    prompts, targets = [pairs[0][0], "short"], [pairs[0][1], "ok"]
    batch = encode_pairs(tokenizer, prompts, targets, 64, 32, seq2seq=False)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        n_prompt = len(tokenizer(prompt)["input_ids"])
        n_real = int(mask[i].sum())
        assert mask[i, :n_real].all() and not mask[i, n_real:].any()  # right padding
        assert torch.equal(ids[i, :n_prompt], torch.tensor(tokenizer(prompt)["input_ids"]))
        assert (labels[i, :n_prompt] == IGNORE_INDEX).all()
        assert (labels[i, n_real:] == IGNORE_INDEX).all()
        assert torch.equal(labels[i, n_prompt:n_real], ids[i, n_prompt:n_real])
        assert ids[i, n_real - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[i, n_prompt:n_real], skip_special_tokens=True) == target


def test_encode_pairs_loss(model, tokenizer, pairs):
    batch = encode_pairs(
        tokenizer, [p for p, _ in pairs[:4]], [t for _, t in pairs[:4]], 64, 32, is_seq2seq(model)
    )
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0


def _manual_logits(model, prompt_ids, target_ids):
    """Per-token loop: logits scoring target_ids[t] given the prompt and target_ids[:t]."""
    rows = []
    for t in range(len(target_ids)):
        if is_seq2seq(model):
            decoder = [model.config.decoder_start_token_id] + target_ids[:t]
            out = model(
                input_ids=torch.tensor([prompt_ids]), decoder_input_ids=torch.tensor([decoder])
            )
        else:
            out = model(input_ids=torch.tensor([prompt_ids + target_ids[:t]]))
        rows.append(out.logits[0, -1])
    return torch.stack(rows)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_token_logits_matches_per_token_loop(model, tokenizer, padding_side, pairs):
    # Mixed prompt and target lengths, so both kinds of padding occur inside the batch.
    prompts = [pairs[3][0], "Cotto", "name[Zizzi] | area[riverside]"]
    targets = [pairs[3][1], "Cotto serves English food.", "Zizzi"]
    batch = encode_sources(tokenizer, prompts, 64, padding_side=padding_side)
    target_rows = [tokenizer(t)["input_ids"] for t in targets]
    width = max(map(len, target_rows))
    tokens = torch.full((3, width), IGNORE_INDEX)  # padding values must not matter
    target_mask = torch.zeros((3, width), dtype=torch.bool)
    for i, row in enumerate(target_rows):
        tokens[i, : len(row)] = torch.tensor(row)
        target_mask[i, : len(row)] = True
    with torch.no_grad():
        logits = token_logits(model, batch, tokens, target_mask)
        assert logits.shape == (3, width, model.config.vocab_size)
        for i, prompt in enumerate(prompts):
            expected = _manual_logits(model, tokenizer(prompt)["input_ids"], target_rows[i])
            actual = logits[i, : len(target_rows[i])]
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_the_next_state_logits_come_from_the_same_pass(model, tokenizer, pairs):
    """token_logits_and_next: the first T positions are token_logits', and the extra (B, V)
    row is the state after each row's last token, s_L, as a per-token loop computes it."""
    prompts = [pairs[3][0], "Cotto", "name[Zizzi] | area[riverside]"]
    targets = [pairs[3][1], "Cotto serves English food.", "Zizzi"]
    batch = encode_sources(tokenizer, prompts, 64, padding_side="right")
    target_rows = [tokenizer(t)["input_ids"] for t in targets]
    width = max(map(len, target_rows))
    tokens = torch.zeros((3, width), dtype=torch.long)
    target_mask = torch.zeros((3, width), dtype=torch.long)
    for i, row in enumerate(target_rows):
        tokens[i, : len(row)] = torch.tensor(row)
        target_mask[i, : len(row)] = 1
    with torch.no_grad():
        logits, after = token_logits_and_next(model, batch, tokens, target_mask)
        plain = token_logits(model, batch, tokens, target_mask)
        for i, prompt in enumerate(prompts):
            n = len(target_rows[i])
            torch.testing.assert_close(logits[i, :n], plain[i, :n], atol=1e-5, rtol=1e-4)
            # any token after the last one: only its state s_L is read
            expected = _manual_logits(model, tokenizer(prompt)["input_ids"], target_rows[i] + [5])
            torch.testing.assert_close(after[i], expected[n], atol=1e-5, rtol=1e-4)


def test_token_logits_gradients(model, tokenizer, pairs):
    batch = encode_pairs(tokenizer, [pairs[0][0]], [pairs[0][1]], 64, 32, True)
    sources = encode_sources(tokenizer, [pairs[0][0]], 64, padding_side="right")
    labels = batch["labels"]
    logits = token_logits(model, sources, labels, labels != IGNORE_INDEX)
    logits.logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------
# The tokenizer a model was trained with, reloaded from its directory

ARCHS_BY_TYPE = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
}


@pytest.mark.parametrize("model_type", ["t5", "gpt2", "llama", "qwen2"])
def test_a_saved_model_reloads_the_tokenizer_that_trained_it(
    model_type, tokenizer, archs, tmp_path
):
    """The BPE of from-scratch models, saved beside a model of each type, comes back with the
    same ids: beside a qwen2 model, transformers would rebuild it as a Qwen2Tokenizer with Qwen's
    pre-tokenizer ("BlueSpiceserves..."). Every stage loads tokenizers through load_tokenizer."""
    arch = {**archs, **ARCHS_BY_TYPE}[model_type]
    out = save_model(build_model(model_config(arch), tokenizer), tokenizer, tmp_path / "m")
    sentence = "Blue Spice serves Italian food in the riverside area."
    loaded = load_tokenizer(str(out))
    ids = loaded(sentence)["input_ids"]
    assert ids == tokenizer(sentence)["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == sentence


def test_every_stage_loads_tokenizers_through_load_tokenizer():
    """No module but ketchup.models.loading loads a tokenizer from disk or the hub itself."""
    from pathlib import Path

    import ketchup

    package = Path(ketchup.__file__).parent
    for path in package.rglob("*.py"):
        if path.relative_to(package).as_posix() != "models/loading.py":
            text = path.read_text()
            assert "AutoTokenizer" not in text and "Tokenizer.from_pretrained" not in text, path


def test_a_model_directory_without_tokenizer_files_is_refused(tokenizer, archs, tmp_path):
    """Else AutoTokenizer builds a placeholder (104 extra-id tokens for T5, one for GPT-2) whose
    every output is empty."""
    for name, arch in archs.items():
        build_model(model_config(arch), tokenizer).save_pretrained(tmp_path / name)
        with pytest.raises(FileNotFoundError, match="no tokenizer files") as err:
            load_tokenizer(str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)

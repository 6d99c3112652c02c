"""Stand-ins for the paper's hub models and datasets, built on the CPU in seconds.

Nothing can be downloaded in the tests, so the paper's path runs on tiny models of the same
architectures, saved with save_pretrained in the hub's layout and loaded back by path through the
project's own loaders, exactly as a hub id would be:

- T5 family (configs/paper.yaml): a T5 v1.1 / flan-t5 style teacher (gated-gelu feed-forward,
  untied head) and a T5 student (relu, tied head), sharing a SentencePiece unigram tokenizer that
  is trained here with `sentencepiece` and saved as a T5 tokenizer (pad 0, EOS 1, unk 2, 100
  extra ids after the pieces); the models' logits are padded past the vocabulary, as flan-t5's are.
- Qwen2 family (configs/paper_qwen.yaml): a decoder-only teacher (untied head) and student (tied
  head, as Qwen1.5-0.5B) sharing a byte-level BPE tokenizer trained with `tokenizers`, saved as a
  Qwen2 tokenizer with Qwen's special tokens and ChatML chat template.

Each pair is trained on the stand-in data with the tasks' own prompts until, like the pretrained
models they replace, both write short outputs that end in EOS (checked on every task, see
`pretrain`). The data files follow each hub dataset's own row format (xsum, europarl_en_nl,
gsm8k, dailydialog, dart) and are what `tasks.<name>.files` names.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

# The hub's own splits: europarl has only train (validation and test are carved from it, so all
# three `files` entries name the one file) and gsm8k has no validation (carved from train).
HUB_FILES = {
    "xsum": ("train", "validation", "test"),
    "europarl_en_nl": ("train", "train", "train"),
    "gsm8k": ("train", "train", "test"),
    "dailydialog": ("train", "validation", "test"),
    "dart": ("train", "validation", "test"),
}
ROWS = {"train": 40, "validation": 8, "test": 8}
ROWS_SINGLE_SPLIT = 60  # europarl's only split: 3 rows each are carved for validation and test

CITIES = ["Leeds", "Derby", "Bath", "York", "Ely", "Hull", "Wells", "Ripon"]
THINGS = ["bridge", "library", "school", "park", "museum", "station", "market", "harbour"]
DAYS = ["Monday", "Tuesday", "Friday", "Sunday"]
EN_NL = {
    "the": "de",
    "committee": "commissie",
    "parliament": "parlement",
    "council": "raad",
    "will": "zal",
    "discuss": "bespreken",
    "support": "steunen",
    "reject": "verwerpen",
    "report": "verslag",
    "proposal": "voorstel",
    "budget": "begroting",
    "today": "vandaag",
    "tomorrow": "morgen",
}
NAMES = ["Tom", "Ann", "Raj", "Mia", "Leo", "Eva"]
PLACES = ["cinema", "beach", "library", "market"]
FOODS = ["Italian", "French", "Chinese", "Indian"]
AREAS = ["riverside", "city centre"]


def _xsum(rng: random.Random, i: int) -> dict:
    city, thing, day = rng.choice(CITIES), rng.choice(THINGS), rng.choice(DAYS)
    cost = rng.randint(2, 90)
    document = (
        f"The council of {city} approved a new {thing} on {day}. It will cost {cost} million "
        f"pounds. Residents of {city} had asked for the {thing} for years. Work starts next "
        "spring."
    )
    return {"document": document, "summary": f"{city} approves a new {thing}.", "id": str(i)}


def _europarl(rng: random.Random, i: int) -> dict:
    body = rng.choice(["committee", "parliament", "council"])
    verb = rng.choice(["discuss", "support", "reject"])
    thing = rng.choice(["report", "proposal", "budget"])
    when = rng.choice(["today", "tomorrow"])
    words = ["the", body, "will", verb, "the", thing, when]
    en = " ".join(words).capitalize() + "."
    nl = " ".join(EN_NL[w] for w in ["the", body, "will", "the", thing, when, verb])
    return {"translation": {"en": en, "nl": nl.capitalize() + "."}}


def _gsm8k(rng: random.Random, i: int) -> dict:
    # Few sums (25), so that the tiny stand-ins can learn them and end their answers; a model that
    # cannot do the sum loops on "####" instead of writing the number and EOS.
    name, a, b = rng.choice(NAMES), rng.randint(2, 6), rng.randint(2, 6)
    return {
        "question": f"{name} has {a} apples and buys {b} more. How many apples does {name} have?",
        "answer": f"{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
    }


def _dailydialog(rng: random.Random, i: int) -> dict:
    place, hour = rng.choice(PLACES), rng.randint(1, 9)
    dialog = [
        "Hello , how are you ?",
        "I am fine , thanks . And you ?",
        f"Good . Shall we go to the {place} ?",
        f"Yes , let us go to the {place} at {hour} .",
    ]
    return {"dialog": dialog, "act": [2, 2, 3, 4], "emotion": [0, 4, 0, 4]}


def _dart(rng: random.Random, i: int) -> dict:
    name = f"The {rng.choice(['Golden', 'Blue', 'Red', 'Old'])} {rng.choice(['Fork', 'Mill'])}"
    food, area = rng.choice(FOODS), rng.choice(AREAS)
    return {
        "tripleset": [[name, "food", food], [name, "area", area]],
        "subtree_was_extended": False,
        "annotations": {
            "source": ["e2e", "e2e"],
            "text": [
                f"{name} serves {food} food in the {area}.",
                f"In the {area}, {name} serves {food} food.",
            ],
        },
    }


ROW_MAKERS = {
    "xsum": _xsum,
    "europarl_en_nl": _europarl,
    "gsm8k": _gsm8k,
    "dailydialog": _dailydialog,
    "dart": _dart,
}


def write_datasets(out: Path, seed: int = 0) -> dict[str, dict[str, str]]:
    """Each dataset's hub splits as JSONL under `out/<dataset>/`: {dataset: `files` mapping}."""
    files = {}
    for dataset, hub_splits in HUB_FILES.items():
        rng = random.Random(f"{seed}-{dataset}")
        directory = out / dataset
        directory.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split in dict.fromkeys(hub_splits):
            n = ROWS_SINGLE_SPLIT if len(set(hub_splits)) == 1 else ROWS[split]
            rows = [ROW_MAKERS[dataset](rng, i) for i in range(n)]
            path = directory / f"{split}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            paths[split] = str(path)
        files[dataset] = {
            s: paths[h] for s, h in zip(("train", "validation", "test"), hub_splits, strict=True)
        }
    return files


def task_pairs(
    files: dict[str, dict[str, str]], prompts: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(prompt, target) of every training example, through the project's own task loader, with
    `prompts[dataset]` where given and the dataset's default prompt elsewhere."""
    from ketchup.config import TaskConfig, parse_section
    from ketchup.data.registry import format_prompt, load_task, task_prompt

    pairs = []
    for dataset, paths in files.items():
        section = {"dataset": dataset, "files": paths, "prompt": (prompts or {}).get(dataset)}
        task = parse_section(TaskConfig, section, "task", "task")
        template = task_prompt(task)
        pairs += [
            (format_prompt(template, ex["source"]), ex["target"])
            for ex in load_task(dataset, task)["train"]
        ]
    return pairs


# ----------------------------------------------------------------------------------------------
# Tokenizers


def t5_tokenizer(texts: list[str], out: Path):
    """A SentencePiece unigram model trained on `texts`, as a T5 tokenizer (pad 0, EOS 1, unk 2,
    <extra_id_0..99> after the pieces, `</s>` appended to every encoded text)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=400,
        hard_vocab_limit=False,  # as many pieces as the little text has, up to 400
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        # one piece: a run of four '#' pieces is a count a tiny model cannot keep, and it then
        # loops on '#' instead of writing gsm8k's answer and EOS
        user_defined_symbols=["####"],
        num_threads=1,
        minloglevel=2,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "spiece.model").write_bytes(model.getvalue())
    return T5Tokenizer.from_pretrained(str(out), extra_ids=100)


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen1.5's ChatML template.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen2_tokenizer(texts: list[str]):
    """A byte-level BPE trained on `texts` with Qwen2's pre-tokenizer, as a Qwen2 tokenizer
    (EOS and pad `<|endoftext|>`, no BOS, nothing appended, the ChatML chat template)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=600,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    tokenizer.chat_template = CHATML
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Models


def _padded(n: int, multiple: int = 64) -> int:
    """Vocabulary rows of a model: the tokenizer's size rounded up, as flan-t5's and Qwen's."""
    return -(-n // multiple) * multiple


def t5_models(tokenizer):
    """(teacher, student): T5 v1.1 / flan-t5 style (gated-gelu, untied) and T5 (relu, tied)."""
    from transformers import T5Config, T5ForConditionalGeneration

    ids = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    common = {"vocab_size": _padded(len(tokenizer)), "num_heads": 2, "d_kv": 16, **ids}
    teacher = T5Config(
        d_model=64,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        **common,
    )
    student = T5Config(
        d_model=64,  # as wide as needed to learn to end every output from any seed (tested)
        d_ff=128,
        num_layers=2,  # two: one layer cannot learn to copy the answer and end (gsm8k's ####)
        num_decoder_layers=2,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        dropout_rate=0.1,
        **common,
    )
    return T5ForConditionalGeneration(teacher), T5ForConditionalGeneration(student)


def qwen2_models(tokenizer):
    """(teacher, student): Qwen2 decoder-only, the teacher untied (Qwen1.5-4B), the student tied
    (Qwen1.5-0.5B)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    common = {
        "vocab_size": _padded(len(tokenizer)),
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    teacher = Qwen2Config(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        tie_word_embeddings=False,
        **common,
    )
    student = Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        tie_word_embeddings=True,
        **common,
    )
    return Qwen2ForCausalLM(teacher), Qwen2ForCausalLM(student)


# Where a stand-in's greedy outputs must end: below every cap the tests set (40 new tokens), so
# that rollouts end in EOS whatever the processor's floating-point kernels do with the weights.
# The longest target is 31 tokens with its EOS (dart, T5's tokenizer).
ENDS_WITHIN = 36
# At most this share of a task's training prompts may lack EOS: a test's on-policy job draws its
# rollouts from at least 8 distinct training sources (two updates of four), more than the 10% of
# any task's 38-54 training prompts, so some of its rollouts always end.
MAX_UNFINISHED = 0.1
LR = 3e-3


def greedy_unfinished(model, tokenizer, prompts: list[str]) -> list[str]:
    """The prompts whose greedy output, through the project's own generation path, has no EOS
    within ENDS_WITHIN new tokens."""
    from ketchup.config import GenerationConfig
    from ketchup.train.generation import generate_ids

    cfg = GenerationConfig(max_new_tokens=ENDS_WITHIN, batch_size=64, num_beams=1)
    rollout = generate_ids(model, tokenizer, prompts, cfg, max_source_length=96)
    return [p for p, done in zip(prompts, rollout.finished.tolist(), strict=True) if not done]


def pretrain(
    model,
    tokenizer,
    tasks: dict[str, list[tuple[str, str]]],
    steps: int,
    seed: int = 0,
    *,
    rounds: int = 30,
    name: str = "model",
) -> None:
    """Train on the stand-in tasks (`tasks`: dataset -> its training (prompt, target) pairs)
    until, on every task, the greedy output of at least 1 - MAX_UNFINISHED of its training
    prompts ends in EOS within ENDS_WITHIN tokens, as a pretrained model's outputs end (a random
    model rarely ends its outputs): `steps` updates per round, checked after each, at most
    `rounds` rounds, the learning rate halved after each from the fourth on, down to an eighth,
    so that the model settles and still learns what it has not yet learnt. The check, not the
    number of updates, is what the tests rely on: the trajectory that reaches it differs between
    processors, the property does not."""
    import torch

    from ketchup.data.batching import encode_pairs

    torch.manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    seq2seq = model.config.is_encoder_decoder
    pairs = [pair for task_pairs in tasks.values() for pair in task_pairs]
    prompts = {task: list(dict.fromkeys(p for p, _ in rows)) for task, rows in tasks.items()}
    for round_ in range(rounds):
        for group in optimizer.param_groups:
            group["lr"] = LR * max(0.5 ** max(0, round_ - 3), 1 / 8)
        model.train()
        for _ in range(steps):
            batch = rng.sample(pairs, 8)
            encoded = encode_pairs(
                tokenizer, [p for p, _ in batch], [t for _, t in batch], 96, 32, seq2seq
            )
            loss = model(**encoded).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        unfinished = {t: greedy_unfinished(model, tokenizer, ps) for t, ps in prompts.items()}
        short = {t: u for t, u in unfinished.items() if len(u) > MAX_UNFINISHED * len(prompts[t])}
        if not short:
            return
    task, missing = next(iter(short.items()))
    raise RuntimeError(
        f"stand-in {name}: after {rounds} x {steps} updates, {len(missing)} of "
        f"{len(prompts[task])} {task} training prompts still have no EOS within {ENDS_WITHIN} "
        f"greedy tokens (first: {missing[0]!r}); train longer or make the model larger"
    )


@dataclass(frozen=True)
class Family:
    """A teacher and a student of one architecture family, saved as the hub lays them out."""

    teacher: Path
    student: Path


@dataclass(frozen=True)
class StandIns:
    files: dict[str, dict[str, str]]  # dataset -> {train, validation, test}: `files:` of a task
    t5: Family
    qwen2: Family


def build(
    out: Path,
    prompts: dict[str, dict[str, str]] | None = None,
    *,
    teacher_steps: int = 150,
    student_steps: int = 120,
) -> StandIns:
    """Write the datasets and both families' models under `out`; `prompts[family][dataset]`
    are the prompts a family's models are trained on (the study's), else the datasets' own."""
    import torch

    torch.manual_seed(0)
    files = write_datasets(out / "data")
    families = {}
    for name, make_tokenizer, make_models in (
        ("t5", lambda texts: t5_tokenizer(texts, out / "spm"), t5_models),
        ("qwen2", qwen2_tokenizer, qwen2_models),
    ):
        family_prompts = (prompts or {}).get(name)
        tasks = {ds: task_pairs({ds: paths}, family_prompts) for ds, paths in files.items()}
        tokenizer = make_tokenizer(
            [text for rows in tasks.values() for pair in rows for text in pair]
        )
        teacher, student = make_models(tokenizer)
        pretrain(teacher, tokenizer, tasks, teacher_steps, seed=1, name=f"{name} teacher")
        pretrain(student, tokenizer, tasks, student_steps, seed=2, name=f"{name} student")
        paths = {}
        for role, model in (("teacher", teacher), ("student", student)):
            path = out / f"{name}-{role}"
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            if name == "t5":  # the hub's T5 repositories ship the SentencePiece model too
                (path / "spiece.model").write_bytes((out / "spm" / "spiece.model").read_bytes())
            paths[role] = path
        families[name] = Family(**paths)
    return StandIns(files=files, **families)

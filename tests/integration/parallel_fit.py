"""One update of `ketchup.train.loop.fit` on a tiny T5 and a fixed global batch, under whatever
processes started this script (alone, or torchrun with N gloo processes): the helper of
test_parallel.py. Usage: parallel_fit.py OUT_DIR MODE (MODE: ddp or fsdp)."""

from __future__ import annotations

import sys

import torch

from ketchup.config import ModelConfig, TrainConfig
from ketchup.data.tokenizer import train_tokenizer
from ketchup.models.loading import build_model
from ketchup.train.loop import cross_entropy_loss, fit

# Every target has the same number of tokens, so the mean of the processes' token means is the
# token mean of the whole batch: one process and N processes make the same update.
ROWS = [
    {"source": f"name[Place {i}] | food[{food}]", "target": f"serves {food} food."}
    for i in range(4)
    for food in ("Thai", "Greek")
]
ARCH = {
    "model_type": "t5",
    "d_model": 32,
    "d_ff": 64,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 2,
    "d_kv": 16,
    "dropout_rate": 0.0,
}


def initial_model():
    """(model, tokenizer) before any update: the same in every process and every run."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer([t for r in ROWS for t in (r["source"], r["target"])], 100)
    lengths = {len(tokenizer(r["target"]).input_ids) for r in ROWS}
    assert len(lengths) == 1, lengths
    return build_model(ModelConfig(None, ARCH, "float32"), tokenizer), tokenizer


def main(out_dir: str, mode: str) -> None:
    model, tokenizer = initial_model()
    cfg = TrainConfig(
        steps=2,
        batch_size=8,  # the whole of ROWS in each update
        learning_rate=1e-2,
        weight_decay=0.0,
        warmup_steps=1,
        grad_clip=0.5,  # binds: the norm must be the whole gradient's, across shards
        eval_every=2,
        patience=0,
        max_source_length=16,
        max_target_length=16,
        seed=0,
        parallel=mode,
    )
    loss_fn = cross_entropy_loss(tokenizer, "{source}", cfg, torch.device("cpu"), True, "target")
    fit(
        model,
        tokenizer,
        train_rows=ROWS,
        loss_fn=loss_fn,
        evaluate=lambda m: 1.0,
        cfg=cfg,
        out_dir=out_dir,
        fingerprint={"test": mode},
        progress=False,
    )
    print(f"trained as {type(model).__name__}")  # FSDP shards the model in place


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

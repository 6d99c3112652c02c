"""The loss of each distillation method on a batch: the glue between the models, the rollouts
and the equations of `ketchup.math.objectives`.

`Models` holds the student being trained, the no-grad teacher and how both score sequences (one
teacher-forced teacher pass per batch); `kl_loss` is the word-level KL on fixed sequences (the
warm start); `onpolicy_loss` is every on-policy method's loss on rollouts the student samples each
update (batched, KV cache). The `distill` verb (ketchup.stages.distill) builds one and hands it to
the trainer (ketchup.train.loop); `ketchup bench` times the same code.
"""

from __future__ import annotations

from ketchup.config import DistillConfig, GenerationConfig, to_dict

_POLICY_GRADIENT_BASELINES = {
    "llmr": "none",
    "llmr_mean": "mean",
    "llmr_minvar": "minvar",
    "ketchup": "none",
}
# LLMR's code scales the policy-gradient loss by the share of finished rollouts when it drops
# the truncated ones; the divergence methods just leave those rows out of their token means.
_FINISHED_SHARE_SCALED = frozenset({*_POLICY_GRADIENT_BASELINES, "minillm"})


class Models:
    """The student being trained, the no-grad teacher, and how to score sequences with both."""

    def __init__(self, student, teacher, tokenizer, template: str, max_source_length: int):
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.template, self.max_source_length = template, max_source_length
        self.vocab = len(tokenizer)  # some model families pad their logits past the vocabulary

    def logits(self, model, rows, tokens, mask, *, grad: bool, next_state: bool = False):
        """Teacher-forced (B, T, V) logits of `model` over `tokens` given each row's prompt; with
        `next_state`, also (B, V) those of the state after each row's last token, in the same
        pass (:func:`ketchup.data.batching.token_logits_and_next`)."""
        import torch

        from ketchup.data.batching import encode_sources, token_logits, token_logits_and_next
        from ketchup.data.registry import format_prompt
        from ketchup.models.precision import own_dtype

        sources = encode_sources(
            self.tokenizer,
            [format_prompt(self.template, row["source"]) for row in rows],
            self.max_source_length,
            padding_side="right",
        )
        # the no-grad teacher computes in its own dtype, outside the student's autocast;
        # a teacher spread over GPUs takes its inputs on its first and gives logits on its last
        home, there = tokens.device, model.device
        tokens, mask = tokens.to(there), mask.to(there)
        with torch.set_grad_enabled(grad), own_dtype(model, enabled=not grad):
            if next_state:
                logits, after = token_logits_and_next(model, sources, tokens, mask)
                return logits[..., : self.vocab].to(home), after[..., : self.vocab].to(home)
            return token_logits(model, sources, tokens, mask)[..., : self.vocab].to(home)


def kl_loss(models: Models, max_target_length: int):
    """Word-level KL(p_T || p_S) on the teacher's outputs: one no-grad teacher pass per batch."""
    from ketchup.data.batching import encode_target_ids, pad_batch, pad_token_id
    from ketchup.math.divergences import forward_kl

    def loss_fn(model, rows):
        ids, mask = pad_batch(
            encode_target_ids(models.tokenizer, [r["imitate"] for r in rows], max_target_length),
            pad_token_id(models.tokenizer),
            padding_side="right",
        )
        ids, mask = ids.to(model.device), mask.to(model.device)
        teacher_logits = models.logits(models.teacher, rows, ids, mask, grad=False)
        student_logits = models.logits(model, rows, ids, mask, grad=True)
        return forward_kl(student_logits, teacher_logits, mask), int(mask.sum())

    return loss_fn


def _sample(models: Models, model, rows, cfg: DistillConfig, **sampling):
    """Token ids (B, T) the student draws for `rows` (batched, KV cache, the global RNG, so a
    resumed run draws what an uninterrupted one does) and which rows finished with EOS."""
    from ketchup.data.registry import format_prompt
    from ketchup.train.generation import generate_ids

    sample = generate_ids(
        model,
        models.tokenizer,
        [format_prompt(models.template, row["source"]) for row in rows],
        GenerationConfig(cfg.rollout.max_new_tokens, len(rows), 1),
        max_source_length=cfg.rollout.max_source_length,
        **sampling,
    )
    lengths = sample.mask.sum(dim=1).tolist()
    return [row[:n] for row, n in zip(sample.tokens.tolist(), lengths, strict=True)], (
        sample.finished.tolist()
    )


def _rollout_sampling(cfg: DistillConfig) -> dict:
    """`generate_ids` options of the policy-gradient rollouts (`distill.rollout`)."""
    rollout = cfg.rollout
    if rollout.greedy:
        return {"do_sample": False}
    return {"do_sample": True, "top_k": rollout.top_k or None, "temperature": rollout.temperature}


def _batch(models: Models, device, cfg: DistillConfig, sampled, finished, teacher_rows):
    """Pad student samples and teacher sequences into one batch: tokens (B, T), the loss mask
    (truncated samples zeroed when `drop_truncated`), the finished flags and the log's stats."""
    import torch

    from ketchup.data.batching import encode_target_ids, pad_batch, pad_token_id

    sequences = list(sampled)
    if teacher_rows:
        sequences += encode_target_ids(
            models.tokenizer, [row["imitate"] for row in teacher_rows], cfg.train.max_target_length
        )
    keep = torch.tensor(finished + [True] * len(teacher_rows), dtype=torch.bool)
    tokens, mask = pad_batch(sequences, pad_token_id(models.tokenizer), padding_side="right")
    if cfg.rollout.drop_truncated:
        mask = mask * keep[:, None].long()
    n = len(sampled)
    stats = {"student_rows": n}
    if n:  # a GKD update on the teacher's outputs has no rollouts to describe
        stats["rollout_length"] = sum(map(len, sampled)) / n
        stats["finished_share"] = float(keep[:n].float().mean())
    return tokens.to(device), mask.to(device), keep.to(device), stats


def onpolicy_loss(models: Models, method: str, k: int, cfg: DistillConfig):
    """`loss_fn` for :func:`ketchup.train.loop.fit`: draw the method's sequences, run one teacher
    pass and one student pass over them, and return the method's loss.

    - llmr*, ketchup: student rollouts (`distill.rollout`), the policy gradient;
    - minillm: rollouts from the teacher-mixed distribution (`distill.minillm.teacher_mix`);
    - gkd: with probability `distill.gkd.lmbda` (Python's RNG, checkpointed) student samples at
      `distill.gkd.temperature` / `top_k`, else the teacher's outputs (TRL's dataset targets);
    - js, tvd: for every source one student sample and the teacher's output (f-distill).
    """
    import random

    import torch

    from ketchup.math import objectives
    from ketchup.math.policy_gradient import Sampler

    settings = objectives.Reinforce(**to_dict(cfg.policy_gradient))
    minillm = objectives.MiniLLM(**to_dict(cfg.minillm))
    rollout = cfg.rollout
    sampler = Sampler(rollout.greedy, rollout.top_k, rollout.temperature)

    def loss_fn(model, rows):
        teacher_rows = []
        if method == "minillm":
            mix = (models.teacher, minillm.teacher_mix)
            sampled, finished = _sample(models, model, rows, cfg, do_sample=True, teacher_mix=mix)
        elif method == "gkd":
            on_policy = random.random() <= cfg.gkd.lmbda
            sampled, finished = [], []
            if on_policy:
                top_k, temperature = cfg.gkd.top_k or None, cfg.gkd.temperature
                sampled, finished = _sample(
                    models, model, rows, cfg, do_sample=True, top_k=top_k, temperature=temperature
                )
            else:
                teacher_rows = rows
        else:
            sampled, finished = _sample(models, model, rows, cfg, **_rollout_sampling(cfg))
            if method in ("js", "tvd"):
                teacher_rows = rows
        tokens, mask, keep, stats = _batch(
            models, model.device, cfg, sampled, finished, teacher_rows
        )
        scored = rows[: len(sampled)] + teacher_rows
        sequence_end = cfg.sequence_end if method == "ketchup" else "equations"
        # kept rollouts cut by the cap bootstrap their returns from the teacher's V at the cut
        bootstrap = method in _POLICY_GRADIENT_BASELINES and objectives.bootstraps_at_cut(
            cfg.rollout.drop_truncated, sequence_end
        )
        teacher_logits = models.logits(
            models.teacher, scored, tokens, mask, grad=False, next_state=bootstrap
        )
        cut = None
        if bootstrap:
            teacher_logits, after = teacher_logits
            cut = (after, keep)
        student_logits = models.logits(model, scored, tokens, mask, grad=True)
        if method in _POLICY_GRADIENT_BASELINES:
            loss, more = objectives.policy_gradient_objective(
                student_logits,
                teacher_logits,
                tokens,
                mask,
                k=k,
                value=cfg.value,
                baseline=_POLICY_GRADIENT_BASELINES[method],
                sampler=sampler,
                sequence_end=sequence_end,
                settings=settings,
                cut=cut,
            )
        elif method == "minillm":
            loss, more = objectives.minillm_objective(
                student_logits, teacher_logits, tokens, mask, minillm
            )
        elif method in ("js", "tvd"):
            student_rows = torch.arange(len(scored), device=tokens.device) < len(sampled)
            loss, more = objectives.fdistill_objective(
                method, student_logits, teacher_logits, mask, student_rows, beta=cfg.f_distill.beta
            )
        else:
            loss, more = objectives.gkd_objective(
                student_logits, teacher_logits, mask, beta=cfg.gkd.beta
            )
        if cfg.rollout.drop_truncated and method in _FINISHED_SHARE_SCALED:
            loss = loss * keep.float().mean()
        if not loss.requires_grad:  # every rollout truncated: a zero update, still a step
            loss = loss + 0.0 * student_logits.sum()
        return loss, int(mask.sum()), {**stats, **more}

    return loss_fn

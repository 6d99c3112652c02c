"""Stage `distill`: train a student from the teacher with one method (one system, e.g. ketchup_k4).

Word-level methods, from the student's initialisation, on fixed sequences (`students.<s>.train`):
- sft: cross-entropy on the references (the no-distillation row);
- seqkd: cross-entropy on the teacher's greedy outputs (Kim & Rush 2016);
- kl: word-level forward KL(p_T || p_S) on the teacher's greedy outputs, one teacher forward per
  batch under no_grad; this student is also the warm start of every method below (the paper).

On-policy methods, from the kl student of the same seed (`distill.train`), dropout off, on
sequences the student samples each update (batched, KV cache), scored by ONE teacher-forced
teacher pass per batch under no_grad:
- llmr (K = 1), llmr_mean, llmr_minvar (mean / minimum-variance baseline), ketchup_k<K>: REINFORCE
  on the teacher-induced K-step returns (`ketchup.math.objectives.policy_gradient_objective`);
- minillm: MiniLLM's clipped policy gradient on the length-normalised reverse-KL reward-to-go of
  teacher-mixed rollouts, plus its single-step reverse KL (`ketchup.math.objectives`);
- gkd: the generalized JSD on student samples or the teacher's outputs (`distill.gkd.lmbda`);
- js, tvd (f-distill): JS / total variation on one student sample and the teacher's output of
  every source, the halves weighted `distill.f_distill.beta` / 1 - beta.
Rollouts that hit the length cap without EOS are dropped from the loss when
`distill.rollout.drop_truncated` (the policy-gradient losses are then scaled by the finished
share, as LLMR's code).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ketchup.config import (
    TEACHER_FREE_METHODS,
    WARM_STARTED_METHODS,
    ConfigError,
    DistillConfig,
    GenerationConfig,
    StudentConfig,
    TaskConfig,
    method_config_keys,
    parse_section,
    split_system,
    to_dict,
)
from ketchup.files import read_jsonl, write_resolved_config

_POLICY_GRADIENT_BASELINES = {
    "llmr": "none",
    "llmr_mean": "mean",
    "llmr_minvar": "minvar",
    "ketchup": "none",
}
# LLMR's code scales the policy-gradient loss by the share of finished rollouts when it drops
# the truncated ones; the divergence methods just leave those rows out of their token means.
_FINISHED_SHARE_SCALED = frozenset({*_POLICY_GRADIENT_BASELINES, "minillm"})


def _targets(method: str, train_rows: list[dict], teacher_outputs: str | None) -> list[str]:
    """What the student imitates: references (sft) or the teacher's outputs, in train order."""
    if method == "sft":
        return [row["target"] for row in train_rows]
    if teacher_outputs is None:
        raise ConfigError(f"distill: method {method!r} needs --teacher-outputs")
    by_id = {row["id"]: row["output"] for row in read_jsonl(teacher_outputs)}
    missing = [row["id"] for row in train_rows if row["id"] not in by_id]
    if missing:
        raise ConfigError(
            f"{teacher_outputs}: no teacher output for {len(missing)} ids, e.g. {missing[0]}"
        )
    return [by_id[row["id"]] for row in train_rows]


class Models:
    """The student being trained, the no-grad teacher, and how to score sequences with both."""

    def __init__(self, student, teacher, tokenizer, template: str, max_source_length: int):
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.template, self.max_source_length = template, max_source_length
        self.vocab = len(tokenizer)  # some model families pad their logits past the vocabulary

    def logits(self, model, rows, tokens, mask, *, grad: bool, next_state: bool = False):
        """Teacher-forced (B, T, V) logits of `model` over `tokens` given each row's prompt; with
        `next_state`, also (B, V) those of the state after each row's last token, in the same
        pass (:func:`ketchup.batching.token_logits_and_next`)."""
        import torch

        from ketchup.batching import encode_sources, token_logits, token_logits_and_next
        from ketchup.precision import own_dtype
        from ketchup.tasks import format_prompt

        sources = encode_sources(
            self.tokenizer,
            [format_prompt(self.template, row["source"]) for row in rows],
            self.max_source_length,
            padding_side="right",
        )
        # the no-grad teacher computes in the dtype it was loaded in, outside the student's autocast
        with torch.set_grad_enabled(grad), own_dtype(model, enabled=not grad):
            if next_state:
                logits, after = token_logits_and_next(model, sources, tokens, mask)
                return logits[..., : self.vocab], after[..., : self.vocab]
            return token_logits(model, sources, tokens, mask)[..., : self.vocab]


def _kl_loss(models: Models, max_target_length: int):
    """Word-level KL(p_T || p_S) on the teacher's outputs: one no-grad teacher pass per batch."""
    from ketchup.batching import encode_target_ids, pad_batch, pad_token_id
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
    from ketchup.generation import generate_ids
    from ketchup.tasks import format_prompt

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

    from ketchup.batching import encode_target_ids, pad_batch, pad_token_id

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
    """`loss_fn` for :func:`ketchup.training.fit`: draw the method's sequences, run one teacher
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


def training_summary(log: list[dict], last: int = 10) -> dict[str, dict[str, float]]:
    """Means of every numeric statistic of the training log: over all updates ("mean") and the
    last `last` ("last"): the mean return per token, the clipped share, the rollout length, ...
    (what the K-grid table reports beside the scores)."""
    train = [row for row in log if row.get("kind") == "train"]
    keys = [
        key
        for key in dict.fromkeys(k for row in train for k in row)
        if key not in ("kind", "step")
        and all(isinstance(row.get(key, 0.0), (int, float)) for row in train)
    ]

    def means(rows):
        out = {}
        for key in keys:
            values = [float(row[key]) for row in rows if key in row]
            if values:
                out[key] = sum(values) / len(values)
        return out

    return {"updates": len(train), "mean": means(train), "last": means(train[-last:])}


def distill(args) -> int:
    """Train the student as `args.method` says; keep the best checkpoint by validation metric."""
    import torch

    from ketchup.distributed import processes
    from ketchup.models import (
        check_same_vocabulary,
        count_parameters,
        default_device,
        disable_dropout,
        init_model,
        is_seq2seq,
        load_model,
        load_tokenizer,
        resolve_dtype,
    )
    from ketchup.precision import precision_record
    from ketchup.tasks import resolved_task, task_prompt, task_selection_metric
    from ketchup.training import cross_entropy_loss, fit, generation_evaluator

    method, k = split_system(args.method)
    task = parse_section(TaskConfig, args.task_json, "task", "task")
    student_cfg = parse_section(StudentConfig, args.student_json, "student", "student")
    cfg = parse_section(DistillConfig, args.config_json, "distill", "distill")
    generation = parse_section(GenerationConfig, args.generation_json, "generation", "generation")
    warm_started = method in WARM_STARTED_METHODS
    if warm_started and not args.warm_start:
        raise ConfigError(f"distill: method {method!r} needs --warm-start (the kl student)")
    train_cfg = dataclasses.replace(
        cfg.train if warm_started else student_cfg.train, seed=args.seed
    )
    data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
    train_rows = read_jsonl(data_dir / "train.jsonl")
    val_rows = read_jsonl(data_dir / "validation.jsonl")
    if method != "sft":  # every method but sft reads the teacher's outputs or the teacher
        train_rows = [
            dict(row, imitate=t)
            for row, t in zip(
                train_rows, _targets(method, train_rows, args.teacher_outputs), strict=True
            )
        ]
    template, metric = task_prompt(task), task_selection_metric(task)
    device = default_device()

    tokenizer = load_tokenizer(args.tokenizer)
    torch.manual_seed(args.seed)  # the initial weights depend on the seed too
    if warm_started:
        student = disable_dropout(load_model(args.warm_start, dtype="float32", device=device))
    else:
        student = init_model(student_cfg.model, tokenizer, where="student.model").to(device)
    teacher = None
    if method not in TEACHER_FREE_METHODS:
        check_same_vocabulary(load_tokenizer(args.teacher), tokenizer, args.teacher, "student")
        teacher_dtype = resolve_dtype(args.teacher_precision, device)
        teacher = load_model(args.teacher, dtype=teacher_dtype, device=device)
        teacher.eval()
    max_source_length = (
        cfg.rollout.max_source_length if warm_started else train_cfg.max_source_length
    )
    models = Models(student, teacher, tokenizer, template, max_source_length)
    print(
        f"distill {args.method}: student {count_parameters(student):,} parameters, seed "
        f"{args.seed}, metric {metric}"
        + (f", warm start {args.warm_start}" if warm_started else "")
    )

    if warm_started:
        loss_fn = onpolicy_loss(models, method, k, cfg)
    elif method == "kl":
        loss_fn = _kl_loss(models, train_cfg.max_target_length)
    else:
        loss_fn = cross_entropy_loss(
            tokenizer,
            template,
            train_cfg,
            device,
            is_seq2seq(student),
            target_key="target" if method == "sft" else "imitate",
        )
    evaluate = generation_evaluator(
        tokenizer, val_rows, template, metric, generation, train_cfg.max_source_length
    )
    # what this job's training reads, as run (the seed is the job's)
    job_config = {key: to_dict(getattr(cfg, key)) for key in method_config_keys(method)}
    job_config["train"] = to_dict(train_cfg)
    state = fit(
        student,
        tokenizer,
        train_rows=train_rows,
        loss_fn=loss_fn,
        evaluate=evaluate,
        cfg=train_cfg,
        out_dir=out_dir,
        fingerprint={
            "system": args.method,
            "student": to_dict(student_cfg),
            "config": job_config,
            "task": to_dict(task),
            "warm_start": args.warm_start,
        },
        evaluate_initial=warm_started,
        precision=student_cfg.model.precision,
        keep_checkpoints=args.keep_checkpoints,
        empty_loss_hint=(
            f"raise config key 'distill.rollout.max_new_tokens' (now {cfg.rollout.max_new_tokens})"
            " or set distill.rollout.drop_truncated: false"
            if warm_started
            else None
        ),
    )
    if not processes().is_main:
        return 0
    write_resolved_config(
        out_dir / "model",
        "distill",
        job_config,
        system=args.method,
        method=method,
        k=k,
        seed=args.seed,
        student=to_dict(student_cfg),
        task=resolved_task(task),
        teacher=args.teacher,
        warm_start=args.warm_start,
        best_step=state.best_step,
        best_validation_score=state.best_score,
        metric=metric,
        training_summary=training_summary(read_jsonl(out_dir / "log.jsonl")),
        precision=precision_record(student, student_cfg.model.precision, teacher),
    )
    print(
        f"distill {args.method}: best validation {metric} {state.best_score:.2f} at step "
        f"{state.best_step}"
    )
    return 0

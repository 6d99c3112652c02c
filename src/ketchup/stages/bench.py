"""Stage `bench`: the update benchmark on the CPU (`ketchup.ops.bench`), its GPU variant
(`ketchup.ops.bench_gpu`, with --gpu), or the summary of a finished study's benchmark files
(--study).
"""

from __future__ import annotations

from pathlib import Path


def bench_main(args) -> int:
    if args.study:
        from ketchup.ops.bench import study_summary

        return study_summary(Path(args.study))
    if args.gpu:
        from ketchup.ops.bench_gpu import run_gpu_bench

        return run_gpu_bench(args)
    from ketchup.ops.bench import run_update_bench

    return run_update_bench(args)

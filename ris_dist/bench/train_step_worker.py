"""One rank of the train-step backend comparison: time the trainer's steps under the launcher's backend.

``accelerate launch --config_file configs/accelerate/<backend>.yaml -m ris_dist.bench.train_step_worker
--out FILE --steps N --warmup W [overrides]``. Every rank runs the same fixed global batches
through :meth:`Trainer.step_once`; rank 0 writes the per-step wall times (taken after a barrier,
so each one is the slowest rank's step) and what it trained on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ris_dist.bench.train_step_worker")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="configs/phase0.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    from ..data.sampler import rank_slice
    from .train_step import bench_trainer, scenes_sha256

    trainer, chunks = bench_trainer(args.config, args.overrides, args.warmup + args.steps)
    acc, G = trainer.accelerator, trainer.cfg.data.batch_size
    # This rank's share of each global batch, the split the training loop's index stream makes.
    start, stop = rank_slice(G, acc.process_index, trainer.world)
    local = [c[start:stop] for c in chunks]
    times = []
    for i in range(len(chunks)):
        acc.wait_for_everyone()
        t = time.perf_counter()
        trainer.step_once([(local[i], G)])
        acc.wait_for_everyone()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    with trainer.backend.full_parameters() as params:
        from ..train.instrument import parameter_digest

        digest = parameter_digest(params)
    if acc.is_main_process:
        scenes = scenes_sha256(chunks[args.warmup:])
        args.out.write_text(json.dumps({
            "backend": trainer.backend.name, "world_size": trainer.world, "global_batch": G,
            "steps_timed": len(times), "step_s": times, "scenes_sha256": scenes,
            "gate_skips": sum(trainer.state.skipped.values()), "real_steps": trainer.state.real_steps,
            "param_digest": digest}))
    trainer.monitor.close()
    return 0


if __name__ == "__main__":
    from ..train.__main__ import _shutdown

    _shutdown(main())

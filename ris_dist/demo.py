"""``make demo``: the tiny curriculum (phases 0→3) on this CPU, then the evaluation report.

Runs ``python launch/submit.py --phase all --cluster local --profile
configs/cluster/workstation.yaml`` (the same chain the cluster runs, with the same gates; that
profile gives the one training process both cores of the 2-core dev box), writes a frozen
tiny test set once, evaluates the phase-3 model against B1, B2 and the CRB, and prints where
the TensorBoard logdir and the report are. Re-running it resumes finished or interrupted
phases from their checkpoints.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ris_dist.demo", description=__doc__)
    p.add_argument("--run-name", default="demo")
    # 20000 scenes (~4000 per 5-dB SNR bin, 43 MB, about a minute to evaluate): at 1000 a bin holds
    # ~200 scenes, and low-SNR success rates of 1-8% then differ by a few scenes, which the
    # report's paired test cannot tell from chance.
    p.add_argument("--test-scenes", type=int, default=20000)
    p.add_argument("overrides", nargs="*", help="trainer overrides passed to every phase")
    args = p.parse_args(argv)

    from .config import load_system
    from .data import write_split

    test_set = ROOT / "data_out" / f"tiny_test_{args.test_scenes}"
    if not (test_set / "manifest.json").is_file():
        write_split(load_system("tiny"), seed=0, split="test", num_scenes=args.test_scenes, out_dir=test_set)
    rc = subprocess.call([sys.executable, str(ROOT / "launch" / "submit.py"), "--phase", "all", "--cluster", "local",
                          "--profile", str(ROOT / "configs" / "cluster" / "workstation.yaml"),
                          "--run-name", args.run_name, *args.overrides], cwd=ROOT)
    if rc != 0:
        print(f"error: the curriculum stopped with exit code {rc}", file=sys.stderr)
        return rc
    from .evaluate import main as evaluate

    report = ROOT / "reports" / args.run_name
    rc = evaluate(["--checkpoint", str(ROOT / "runs" / args.run_name / "phase3" / "best"),
                   "--test-set", str(test_set), "--out", str(report)])
    print(f"\nTensorBoard logdir: {ROOT / 'runs' / args.run_name}   "
          f"(tensorboard --logdir runs/{args.run_name} --host 127.0.0.1)")
    print(f"Evaluation report:  {report / 'report.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

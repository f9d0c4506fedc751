#!/usr/bin/env python3
"""Submit ris_dist training phases to SLURM (submitit) or run them locally.

    python launch/submit.py --phase all --cluster slurm --profile configs/cluster/example_gpu.yaml
    python launch/submit.py --phase 0 --cluster local max_steps=8

See docs/cluster.md. Runs from the repository root (configs/ and runs/ are relative to it).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RIS_LAUNCH_CWD", os.getcwd())  # relative --profile paths still work
os.chdir(ROOT)

from ris_dist.launch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

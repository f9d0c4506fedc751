"""Benchmarks: ``python -m ris_dist.bench <name> [options]`` (simulate, localize, refine,
train-step, scaling, learnability, gpu).

Each benchmark is a submodule exposing ``add_arguments(parser)`` and ``run(args) -> dict``;
``__main__`` prints the dict as indented JSON on stdout.
"""

#: Benchmark name on the command line → submodule of ris_dist.bench (imported lazily).
BENCHES: dict[str, str] = {
    "simulate": "simulate",
    "localize": "localize",
    "refine": "refine",
    "train-step": "train_step",
    "scaling": "scaling",
    "learnability": "learnability",
    "gpu": "gpu",
}

"""The refinement benchmark: both refinements, the same starts, one process."""

from __future__ import annotations

import argparse

from ris_dist.bench import refine as bench


def test_refine_bench_times_both_refinements_and_they_reach_the_same_optimum():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--tiny-scenes", "12", "--full-scenes", "0", "--iterations", "6"])
    result = bench.run(args)
    assert "full" not in result
    tiny = result["tiny"]
    assert tiny["scenes"] == 12 and tiny["sources"] >= 12
    assert tiny["closed_form_s"] > 0 and tiny["autograd_newton_s"] > 0
    assert tiny["speedup"] == tiny["autograd_newton_s"] / tiny["closed_form_s"]
    # From 0.3 cell off the truth both refinements converge to the same local optimum on most
    # scenes: the median final NLL differs by far less than a nat.
    assert abs(tiny["final_nll_gap_median"]) < 0.1, tiny
    assert tiny["scenes_closed_form_lower_nll"] + tiny["scenes_autograd_lower_nll"] <= 1.0
    for key in ("success_closed_form", "success_autograd"):
        assert 0.0 <= tiny[key] <= 1.0


def test_refine_bench_scores_success_with_the_metrics_rule():
    """Zero iterations from the truth itself: every scene a success, both refinements equal."""
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--tiny-scenes", "8", "--full-scenes", "0", "--iterations", "0", "--offset-cells", "0"])
    tiny = bench.run(args)["tiny"]
    assert tiny["success_closed_form"] == 1.0 and tiny["success_autograd"] == 1.0
    assert tiny["final_nll_gap_median"] == 0.0

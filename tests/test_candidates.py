"""Steering candidates from the Bartlett spectrum (model.candidates): the source's peak comes
first and is refined below the grid step, candidates are distinct peaks, and the option is
validated and changes no checkpoint format beyond the input layers."""

from __future__ import annotations

import pytest
import torch

from ris_dist.config import ConfigError, load_system
from ris_dist.localize.grid import points_steering
from ris_dist.model import build_model, model_config
from ris_dist.model.net import BartlettCandidates


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_an_off_grid_source_is_the_first_candidate_refined_below_the_grid_step(name):
    """Noise-free snapshots x̂_l = s_l·a(η) of one source between grid points: candidate 1 matches
    a(η) better than the best grid point does, and no two candidates are grid neighbours."""
    system = load_system(name)
    search = BartlettCandidates(system, 6, 0.5)
    gen = torch.Generator().manual_seed(0)
    g = torch.tensor([search.steering.shape[0] // 3, search.steering.shape[0] // 2])
    frac = torch.tensor([[0.3, -0.2, 0.25], [-0.35, 0.3, -0.15]])
    points, steps = search.points(torch.device("cpu"))
    truth = points[g] + frac * steps
    a = points_steering(system, truth, "exact")  # [2, N] unit norm
    s = torch.randn(2, 16, 1, generator=gen, dtype=torch.complex64)
    cand, value = search(s * a[:, None, :])
    first = cand[:, :, 0] / system.num_elements ** 0.5
    match_refined = (a.conj() * first).sum(-1).abs() ** 2
    match_grid = (search.steering.conj() @ a.T).abs().amax(0) ** 2  # best grid point per scene
    assert torch.all(match_refined > match_grid + 0.02), (match_refined, match_grid)
    assert torch.all(match_refined > 0.9), match_refined
    assert torch.all(value[:, 0] == 1.0) and torch.all(value > 0) and torch.all(value <= 1.0)
    assert torch.all(value[:, 1:] <= value[:, :-1])  # picked in decreasing order
    picked = search.peaks(search.spectrum(s * a[:, None, :]))  # [2, 6] the grid points refined from
    assert torch.equal(picked[:, 0], search.spectrum(s * a[:, None, :]).argmax(-1))
    for b in range(2):
        d = (search.coords[picked[b]][:, None, :] - search.coords[picked[b]][None, :, :]).abs().amax(-1)
        assert (d + 2 * torch.eye(6, dtype=d.dtype) >= 2).all(), d


def test_candidates_are_validated_and_not_in_the_state_dict():
    with pytest.raises(ConfigError, match="candidates"):
        model_config("tiny", candidates=-1)
    with pytest.raises(ConfigError, match="candidate_spacing_cells"):
        model_config("tiny", candidates=2, candidate_spacing_cells=0.0)
    system = load_system("tiny")
    with pytest.raises(ConfigError, match="model.candidates=100000"):
        build_model(system, model_config("tiny", candidates=100000))
    torch.manual_seed(0)
    with_c = build_model(system, model_config("tiny", candidates=4))
    # The grid buffers are rebuilt from the system, never saved: only the input layers grow.
    assert not any(k.startswith("candidate_search") for k in with_c.state_dict())
    without = build_model(system, model_config("tiny")).state_dict()
    assert set(with_c.state_dict()) == set(without)
    grown = {k for k, v in with_c.state_dict().items() if v.shape != without[k].shape}
    assert grown == {"elem_embed.weight", "glob_embed.0.weight"}


def test_candidates_survive_a_bf16_cast_of_the_module():
    """DeepSpeed's bf16 engine casts the module's floating tensors; the candidate grid must not
    lose precision with it (its coordinates live outside the floating buffers)."""
    from ris_dist.physics import simulate

    system = load_system("tiny")
    torch.manual_seed(0)
    model = build_model(system, model_config("tiny", candidates=4))
    b = simulate(system, torch.arange(8), seed=0, split="train")
    before = model.features(b.y, b.H, b.codes, b.snr_db)["cand"]
    model.bfloat16()  # floating parameters and buffers, as a blanket engine cast does
    after = model.features(b.y, b.H, b.codes, b.snr_db)["cand"]
    assert after.dtype == torch.complex64
    torch.testing.assert_close(after, before)
    out = model(b.y, b.H, b.codes, b.snr_db)  # the bf16 network still runs on them
    assert torch.isfinite(out.R_pred).all()


def test_likelihood_levels_move_full_candidates_onto_one_source():
    """On one-source `full` scenes at 15-20 dB the Bartlett maximum is biased (M < N); four levels
    on the one-source likelihood put the first candidate within the success thresholds far more
    often, and every refined candidate stays inside the configured box."""
    from ris_dist.localize.estimates import Estimates
    from ris_dist.localize.grid import is_feasible, uwr_to_angles
    from ris_dist.metrics import per_scene
    from ris_dist.model.net import second_order_features
    from ris_dist.physics import simulate

    system = load_system("full", max_sources=1, snr_range_db=[15.0, 20.0])
    batch = simulate(system, range(48), 0, "dev")
    x = second_order_features(system, batch.y, batch.H, batch.codes, batch.snr_db)["x"]
    rates = {}
    for levels in (0, 4):
        search = BartlettCandidates(system, 4, 0.5, refine_levels=levels)
        points, _ = search.locate(x, batch.y, batch.H, batch.codes)
        assert bool(is_feasible(system, points).all())
        first = torch.stack(uwr_to_angles(points[:, 0]), -1)[:, None]
        est = Estimates.from_positions(first, torch.ones(48, 1, dtype=torch.bool))
        rates[levels] = float(per_scene(est, batch, system).success.mean())
    assert rates[4] >= 0.8 and rates[4] >= rates[0] + 0.25, rates


def test_likelihood_levels_are_validated_and_need_the_measurements():
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="candidate_refine_levels"):
            model_config("full-lite", candidate_refine_levels=bad)
    search = BartlettCandidates(load_system("tiny"), 2, 0.5, refine_levels=2)
    with pytest.raises(ValueError, match="refine_levels=2: y, H and codes are required"):
        search.locate(torch.zeros(1, 16, 16, dtype=torch.complex64))

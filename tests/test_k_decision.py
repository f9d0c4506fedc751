"""K̂ from the K head: argmax vs the expected-success rule and its calibrated table."""

import numpy as np
import pytest
import torch

from ris_dist.localize import SuccessTable, choose_num_sources, fit_success_table

EDGES = (-5.0, 5.0, 20.0)  # two SNR bins


def test_fit_counts_each_cell_and_smooths():
    # Low bin: K=1 scenes succeed 3 of 4 times with k=1; K=2 scenes never succeed with k=2.
    # High bin: one K=1 scene (fails), two K=2 scenes (both succeed). k != K never succeeds.
    k_true = np.array([1, 1, 1, 1, 2, 2, 1, 2, 2])
    snr = np.array([-9.0, -1, 0, 4.9, -5, 2, 5.0, 12, 30])  # -9 and 30 fall into the end bins
    s1 = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0], bool)
    s2 = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1], bool)
    table = fit_success_table(np.stack([s1, s2], 1), k_true, snr, EDGES)
    assert table.num_scenes == ((4, 2), (1, 2))
    assert np.allclose(table.rate, [[4 / 6, 1 / 4], [1 / 3, 3 / 4]])
    assert SuccessTable.from_json(table.to_json()) == table


def test_success_rule_reports_only_what_it_can_place():
    table = SuccessTable(EDGES, ((0.5, 0.01), (0.5, 0.5)), ((10, 10), (10, 10)))
    logits = torch.log(torch.tensor([[0.2, 0.8], [0.2, 0.8], [0.6, 0.4]]))
    snr = torch.tensor([0.0, 10.0, 10.0])
    assert choose_num_sources(logits, snr, "map").tolist() == [2, 2, 1]
    # Low SNR: 0.8·0.01 < 0.2·0.5, so one source; high SNR: equal q, so the argmax.
    assert choose_num_sources(logits, snr, "success", table).tolist() == [1, 2, 1]


@pytest.mark.parametrize("data, key", [
    ({"snr_edges_db": [5, 0], "rate": [[0.5]], "num_scenes": [[1]]}, "snr_edges_db"),
    ({"snr_edges_db": [0, 5], "rate": [[1.5]], "num_scenes": [[1]]}, "rate"),
    ({"snr_edges_db": [0, 5, 10], "rate": [[0.5]], "num_scenes": [[1]]}, "rate"),
    ({"snr_edges_db": [0, 5], "rate": [[0.5]], "num_scenes": [[-1]]}, "num_scenes"),
    ({"snr_edges_db": [0, 5], "rate": [[0.5]]}, "num_scenes"),
    ([1, 2], "expected an object"),
])
def test_malformed_tables_name_the_key(data, key):
    with pytest.raises(ValueError) as err:
        SuccessTable.from_json(data)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_success_rule_needs_a_table_of_the_right_size():
    logits = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="SuccessTable"):
        choose_num_sources(logits, torch.zeros(2), "success")
    with pytest.raises(ValueError, match="k_probs"):
        SuccessTable((0.0, 1.0), ((0.5, 0.5, 0.5),), ((1, 1, 1),)).choose(torch.ones(2, 2), torch.zeros(2))

"""Phase acceptance gates, evaluated at the end of a phase and written to gate.json.

Each criterion records its value, its reference, the tolerance and pass/fail. The reference
of phases 1-3 is the phase's first validation, taken before the first step (``val.at_start``):
the model the phase started from, i.e. the previous phase's best, on this phase's validation
settings. NMSE is monitored everywhere but gates only phase 0.
"""

from __future__ import annotations

from typing import Any

RMSES = ("rmse_az_deg", "rmse_el_deg", "rmse_range_m")


def _criterion(name: str, value: float, reference: float, tolerance: float, passed: bool, rule: str) -> dict[str, Any]:
    return {"name": name, "value": value, "reference": reference, "tolerance": tolerance, "passed": bool(passed),
            "rule": rule}


def selftest_criteria(selftest: dict[str, float], tol: float) -> list[dict[str, Any]]:
    return [
        _criterion("selftest_nmse_RR", selftest["nmse_RR"], 0.0, tol, abs(selftest["nmse_RR"]) <= tol,
                   "|nmse(R,R)| <= tol"),
        _criterion("selftest_nmse_0R", selftest["nmse_0R"], 1.0, tol, abs(selftest["nmse_0R"] - 1.0) <= tol,
                   "|nmse(0,R) - 1| <= tol"),
        _criterion("selftest_oracle", selftest["oracle_total"], 0.0, tol, abs(selftest["oracle_total"]) <= tol,
                   "|oracle total loss| <= tol"),
    ]


def not_below(name: str, final: dict, first: dict, tol: float) -> dict[str, Any]:
    return _criterion(name, final[name], first[name], tol, final[name] >= first[name] - tol,
                      "final >= first - tolerance")


def not_above_rel(name: str, final: dict, first: dict, tol: float) -> dict[str, Any]:
    return _criterion(name, final[name], first[name], tol, final[name] <= first[name] * (1 + tol),
                      "final <= first x (1 + tolerance)")


def improves(name: str, final: dict, first: dict, higher_is_better: bool, best_possible: float) -> dict[str, Any]:
    """Strictly better than the reference, or already at the best possible value."""
    value, ref = final[name], first[name]
    ok = (value > ref if higher_is_better else value < ref) or value == best_possible
    return _criterion(name, value, ref, 0.0, ok, f"final {'>' if higher_is_better else '<'} first "
                                                 f"(or = {best_possible:g})")


def _rmses(gate) -> tuple[str, ...]:
    return tuple(f"{m}_oracle_k" for m in RMSES) if gate.rmse_k == "oracle" else RMSES


def _require(kind: str, names: tuple[str, ...], first: dict[str, float], final: dict[str, float]) -> None:
    for which, metrics in (("first", first), ("final", final)):
        missing = [name for name in names if name not in metrics]
        if missing:
            raise ValueError(f"gate {kind}: the {which} validation has no {', '.join(missing)} (a run resumed "
                             "across a change of its validation settings? rerun the phase from its start)")


def _rises(metric: str, final, first, gate) -> dict[str, Any]:
    return improves(metric, final, first, True, 1.0)


def _falls(metric: str, final, first, gate) -> dict[str, Any]:
    return improves(metric, final, first, False, 0.0)


def _holds(metric: str, final, first, gate) -> dict[str, Any]:
    return not_below(metric, final, first, gate.drop_tol)


def _within_rmse_tol(metric: str, final, first, gate) -> dict[str, Any]:
    return not_above_rel(metric, final, first, gate.rmse_tol)


#: Each localization phase's criteria besides the RMSEs (which every one of them holds within
#: ``rmse_tol``). Phase 1, "trend the right way": success and k_loc rise, K_acc does not fall.
PHASE_RULES = {
    "phase1": (("success", _rises), ("k_loc", _rises), ("K_acc", _holds)),
    "phase2": (("K_acc", _rises), ("K_under", _falls)),
    "phase3": (("K_acc", _holds), ("success", _holds)),
}


def phase_criteria(kind: str, gate, first: dict[str, float], final: dict[str, float]) -> list[dict[str, Any]]:
    if kind not in PHASE_RULES:
        raise ValueError(f"gate.kind {kind!r} has no localization criteria")
    rules = PHASE_RULES[kind] + tuple((metric, _within_rmse_tol) for metric in _rmses(gate))
    _require(kind, tuple(metric for metric, _ in rules), first, final)
    return [rule(metric, final, first, gate) for metric, rule in rules]


def evaluate_phase_gate(cfg, selftest: dict[str, float], first_val: dict[str, float],
                        last_val: dict[str, float]) -> dict[str, Any]:
    gate = cfg.gate
    if gate.kind == "phase0":
        criteria = selftest_criteria(selftest, gate.selftest_tol)
        if gate.max_val_nmse > 0:
            value = last_val["nmse"]
            criteria.append(_criterion("val_nmse", value, gate.max_val_nmse, 0.0, value <= gate.max_val_nmse,
                                       "final validation NMSE <= reference"))
    else:
        criteria = phase_criteria(gate.kind, gate, first_val, last_val)
    return {"phase": cfg.phase, "kind": gate.kind, "passed": all(c["passed"] for c in criteria),
            "enforced": gate.enforce, "criteria": criteria, "final_val": last_val, "first_val": first_val}

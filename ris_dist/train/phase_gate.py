"""Phase acceptance gates, evaluated at the end of a phase and written to gate.json.

Each criterion records its value, the reference it is compared with, the tolerance and
pass/fail. Phase 0 (the smoke test) gates on NMSE and the loss self-test; later phases
add K and localization criteria.
"""

from __future__ import annotations

from typing import Any


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


def evaluate_phase_gate(cfg, selftest: dict[str, float], first_val: dict[str, float],
                        last_val: dict[str, float]) -> dict[str, Any]:
    criteria = selftest_criteria(selftest, cfg.gate.selftest_tol)
    if cfg.gate.max_val_nmse > 0:
        value = last_val["nmse"]
        criteria.append(_criterion("val_nmse", value, cfg.gate.max_val_nmse, 0.0, value <= cfg.gate.max_val_nmse,
                                   "final validation NMSE <= reference"))
    return {"phase": cfg.phase, "passed": all(c["passed"] for c in criteria), "enforced": cfg.gate.enforce,
            "criteria": criteria, "final_val": last_val, "first_val": first_val}

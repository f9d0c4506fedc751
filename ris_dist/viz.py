"""Pictures of what MUSIC sees: slices of the pseudo-spectrum of one scene's R_eff.

:func:`music_spectrum_slices` renders two panels into an RGB array (HWC uint8, ready for
``Monitor.image`` / ``SummaryWriter.add_image(..., dataformats="HWC")``):

* azimuth–elevation at the range of the strongest true source,
* azimuth–range at the elevation of the strongest true source,

with true sources as white ×, estimated ones as red ○. Markers are projections: a source
away from a slice's fixed coordinate is still drawn, so a missing peak under a marker is
a real miss in that slice, not a plotting artefact.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .config import SystemConfig
from .localize import music_spectrum

log = logging.getLogger(__name__)

Sources = tuple[Any, Any, Any]
"""(azimuth_deg, elevation_deg, range_m): three 1-D array-likes of equal length."""

__all__ = ["Sources", "music_spectrum_slices", "scene_sources"]


def scene_sources(obj: Any, scene: int) -> Sources:
    """The valid sources of scene ``scene`` of a SceneBatch or Estimates, as numpy arrays.

    Both carry ``azimuth_deg``, ``elevation_deg``, ``range_m`` and ``valid`` ([B, K_slots]).
    """
    valid = obj.valid[scene].detach().cpu().numpy().astype(bool)
    return tuple(getattr(obj, name)[scene].detach().cpu().numpy().astype(np.float64)[valid]
                 for name in ("azimuth_deg", "elevation_deg", "range_m"))  # type: ignore[return-value]


def _as_sources(src: Sources, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(src) != 3:
        raise ValueError(f"{what}: expected (azimuth_deg, elevation_deg, range_m), got {len(src)} arrays")
    arrays = tuple(np.atleast_1d(np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float64)) for a in src)
    if not all(a.ndim == 1 and a.shape == arrays[0].shape for a in arrays):
        raise ValueError(f"{what}: azimuth, elevation and range must be 1-D of equal length, "
                         f"got shapes {[a.shape for a in arrays]}")
    return arrays  # type: ignore[return-value]


def _spectrum_db(R: torch.Tensor, system: SystemConfig, k: int, az: np.ndarray, el: np.ndarray,
                 rng_m: np.ndarray) -> np.ndarray:
    """10·log10(P / max P) on a grid; the leading 1 makes the positions per scene (B = 1)."""
    pos = [torch.as_tensor(x, dtype=torch.float64, device=R.device)[None] for x in (az, el, rng_m)]
    p = music_spectrum(R, system, torch.tensor([k], device=R.device), *pos)[0].cpu().numpy()
    return 10.0 * np.log10(p / p.max())


def music_spectrum_slices(R_eff: torch.Tensor, system: SystemConfig, truth: Sources, estimates: Sources,
                          true_powers: Sequence[float] | np.ndarray | None = None, num_sources: int | None = None,
                          grid_points: int = 96, floor_db: float = -30.0, title: str | None = None,
                          dpi: int = 80) -> np.ndarray:
    """Render MUSIC pseudo-spectrum slices of one scene to an ``[H, W, 3]`` uint8 image.

    ``R_eff``: ``[N, N]`` (or ``[1, N, N]``) covariance of one scene, any device.
    ``truth`` / ``estimates``: (azimuth_deg, elevation_deg, range_m) arrays of the valid
    sources only (see :func:`scene_sources`); ``truth`` must hold at least one source.
    The slices go through the strongest true source (largest ``true_powers``; without
    powers, the one where the spectrum is highest). ``num_sources`` fixes the noise
    subspace E_n (default: the number of estimates, else of true sources, within 1..K_max).
    The spectrum is shown in dB relative to its maximum on each slice, clipped at ``floor_db``.
    """
    # An explicit Agg canvas, not pyplot: headless, and no global figure state in the trainer.
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    R = torch.as_tensor(R_eff).detach()
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[0] != 1:
        raise ValueError(f"R_eff: expected one scene [N, N] or [1, N, N], got {tuple(R.shape)}")
    t_az, t_el, t_r = _as_sources(truth, "truth")
    e_az, e_el, e_r = _as_sources(estimates, "estimates")
    if t_az.size == 0:
        raise ValueError("truth: needs at least one source to place the slices")
    k = num_sources if num_sources is not None else (e_az.size or t_az.size)
    k = int(min(max(k, 1), system.max_sources))

    if true_powers is not None:
        powers = np.asarray(true_powers, dtype=np.float64)
        if powers.shape != t_az.shape:
            raise ValueError(f"true_powers: expected shape {t_az.shape}, got {powers.shape}")
        best = int(np.argmax(powers))
    else:
        best = int(np.argmax(_spectrum_db(R, system, k, t_az, t_el, t_r)))
    el0, r0 = t_el[best], t_r[best]  # the slices pass through the strongest true source

    az = np.linspace(*system.azimuth_range_deg, grid_points)
    el = np.linspace(*system.elevation_range_deg, grid_points)
    # Uniform in 1/r: MUSIC peaks have a constant width in 1/r, so a linear range grid would
    # under-sample the near (sharp) end and waste points at the far end.
    r_lo, r_hi = system.range_range_m
    rng_m = 1.0 / np.linspace(1.0 / r_lo, 1.0 / r_hi, grid_points)  # increasing range
    ae = _spectrum_db(R, system, k, az[None, :], el[:, None], np.full((1, 1), r0))  # [el, az]
    ar = _spectrum_db(R, system, k, az[None, :], np.full((1, 1), el0), rng_m[:, None])  # [r, az]

    fig = Figure(figsize=(10, 4), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = ((axes[0], ae, el, t_el, e_el, f"az–el at r = {r0:.2f} m", "elevation (deg)"),
              (axes[1], ar, rng_m, t_r, e_r, f"az–range at el = {el0:.1f}°", "range (m)"))
    for ax, img, y_axis, t_y, e_y, name, ylabel in panels:
        mesh = ax.pcolormesh(az, y_axis, np.maximum(img, floor_db), shading="auto", cmap="viridis",
                             vmin=floor_db, vmax=0.0)
        # Black outline: a white × must stay visible on the bright floor of a flat spectrum.
        ax.scatter(t_az, t_y, marker="x", s=70, linewidths=2, color="white", label="true",
                   path_effects=[patheffects.withStroke(linewidth=4, foreground="black")])
        ax.scatter(e_az, e_y, marker="o", s=90, linewidths=1.8, facecolors="none", edgecolors="red",
                   label="estimate")
        ax.set(xlabel="azimuth (deg)", ylabel=ylabel, title=name,
               xlim=(az[0], az[-1]), ylim=(y_axis[0], y_axis[-1]))
        fig.colorbar(mesh, ax=ax, label="P / max P (dB)")
    axes[0].legend(loc="upper right", fontsize=8, framealpha=0.6)
    fig.suptitle(title or f"MUSIC spectrum (E_n for K = {k}): {t_az.size} true / {e_az.size} estimated")
    fig.tight_layout()
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    log.debug("rendered MUSIC slices %s", rgb.shape)
    return rgb

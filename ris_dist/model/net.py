"""CovarianceNet: coded RIS snapshots + channel + SNR -> low-rank covariance and K logits.

Backbone: a pre-norm transformer encoder over L snapshot tokens, M channel-row tokens and
one SNR token, mean-pooled. Heads: an MLP emitting the complex factor F [B, N, r]
(R_pred = N·F F^H / ‖F‖²_F, Hermitian PSD with trace N by construction) and an MLP
emitting K logits for the classes 1..K_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn
from torch import nn

from ..config import SystemConfig
from .config import ModelConfig


@dataclass
class ModelOutput:
    """What the model predicts for a batch of B scenes."""

    R_pred: torch.Tensor
    """[B, N, N] complex64, Hermitian PSD, trace N."""
    k_logits: torch.Tensor
    """[B, K_max] float32; class j (0-based) means K = j + 1 sources."""
    factor: torch.Tensor | None
    """[B, N, r] complex64 low-rank factor F (None for outputs not made by the network)."""


def _dropout(p: float) -> nn.Module:
    # p == 0 builds no Dropout module at all, so eval/train modes cannot differ.
    return nn.Dropout(p) if p > 0 else nn.Identity()


class _Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, width: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.p = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_mult * width), nn.GELU(), _dropout(dropout),
                                 nn.Linear(ffn_mult * width, width))
        self.drop = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        p = self.p if self.training else 0.0
        a = F_nn.scaled_dot_product_attention(q, k, v, dropout_p=p)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.ffn(self.norm2(x)))


def _mlp(d_in: int, hidden: int, layers: int, d_out: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.GELU(), _dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


def _rms(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # The 1e-30 floor only keeps an all-zero input at 0 instead of 0/0; NaN/inf pass through.
    return torch.sqrt((x.abs() ** 2).mean(dim=dims, keepdim=True)) + 1e-30


def _re_im(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z.real, z.imag], dim=-1)


class CovarianceNet(nn.Module):
    """See the module docstring. Build it with :func:`build_model`."""

    def __init__(self, system: SystemConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.N, self.M, self.L = system.num_elements, system.num_bs_antennas, system.num_snapshots
        self.K_max = system.max_sources
        d = cfg.width
        # Snapshot token: y_l/rms (2M) | code c_l re/im (2N) | matched filter G_l^H y_l (2N).
        self.snap_embed = nn.Linear(2 * self.M + 4 * self.N, d)
        # Channel tokens: one per BS antenna row H[m, :] (2N); the antenna embedding ties
        # row m to entry m of every y_l.
        self.h_embed = nn.Linear(2 * self.N, d)
        # Embeddings are modules, not bare Parameters: ZeRO-3 gathers parameters through
        # module forward hooks, and a bare top-level Parameter would stay partitioned.
        self.antenna_embed = nn.Embedding(self.M, d)
        self.snr_embed = nn.Sequential(nn.Linear(1, d), nn.GELU(), nn.Linear(d, d))
        self.type_embed = nn.Embedding(3, d)
        self.embed_drop = _dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d)
        self.cov_head = _mlp(d, cfg.cov_head_hidden, cfg.cov_head_layers, 2 * self.N * cfg.rank, cfg.dropout)
        self.k_head = _mlp(d, cfg.k_head_hidden, 1, self.K_max, cfg.dropout)
        nn.init.normal_(self.antenna_embed.weight, std=0.02)
        nn.init.normal_(self.type_embed.weight, std=0.02)

    # ---- parameter groups (the trainer gives heads a higher learning rate) ----
    def head_parameters(self) -> list[nn.Parameter]:
        """Covariance head + K head."""
        return list(self.cov_head.parameters()) + list(self.k_head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not in :meth:`head_parameters` (embeddings, blocks, final norm)."""
        head_ids = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def count_parameters(self) -> dict[str, int]:
        backbone = sum(p.numel() for p in self.backbone_parameters())
        head = sum(p.numel() for p in self.head_parameters())
        return {"backbone": backbone, "head": head, "total": backbone + head}

    # ---- forward ----
    def _tokens(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
        """Scale-free input features in float32 (autocast off: complex maths stays exact)."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.to(torch.complex64)
            H = H.to(torch.complex64)
            codes = codes.to(torch.complex64)
            # Per-scene RMS normalization: received power varies by 30+ dB across scenes
            # and the covariance target is trace-normalized, so absolute scale carries no label.
            yn = y / _rms(y, (-2, -1))
            Hn = H / _rms(H, (-2, -1))
            mf = codes.conj() * (yn @ Hn.conj())  # (G_l^H y_l)_n, [B, L, N]
            mf = mf / _rms(mf, (-2, -1))
            snap = torch.cat([_re_im(yn), _re_im(codes), _re_im(mf)], dim=-1)
            rows = _re_im(Hn)  # [B, M, 2N]
            snr = (snr_db.to(torch.float32) / 10.0)[:, None, None]  # ~unit range for -5..20 dB
        kinds = self.type_embed(torch.arange(3, device=snap.device))
        antennas = self.antenna_embed(torch.arange(self.M, device=snap.device))
        t_snap = self.snap_embed(snap) + kinds[0]
        t_h = self.h_embed(rows) + antennas + kinds[1]
        t_snr = self.snr_embed(snr) + kinds[2]
        return self.embed_drop(torch.cat([t_snap, t_h, t_snr], dim=1))

    def forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor) -> ModelOutput:
        """y [B,L,M], H [B,M,N], codes [B,L,N] complex; snr_db [B] -> :class:`ModelOutput`."""
        x = self._tokens(y, H, codes, snr_db)
        for block in self.blocks:
            x = block(x)
        pooled = self.final_norm(x).mean(dim=1)
        raw = self.cov_head(pooled)
        logits = self.k_head(pooled).float()
        with torch.autocast(device_type=y.device.type, enabled=False):
            # The factor is formed from float32 even under bf16 autocast: R_pred is complex64.
            raw = raw.float().view(-1, self.N, self.cfg.rank, 2)
            factor = torch.complex(raw[..., 0], raw[..., 1])
            R = factor @ factor.mH
            # tr(F F^H) = ‖F‖²_F. No ε·I: it is 0 only for an exactly-zero head output, and
            # then the NaN must reach the trainer's step gate rather than be papered over.
            tr = (factor.abs() ** 2).sum(dim=(-2, -1))
            R_pred = R * (self.N / tr)[:, None, None]
            R_pred = 0.5 * (R_pred + R_pred.mH)  # exact Hermitian symmetry despite rounding
        return ModelOutput(R_pred=R_pred, k_logits=logits, factor=factor)


def build_model(system: SystemConfig, cfg: ModelConfig) -> CovarianceNet:
    """The network for ``system`` with hyper-parameters ``cfg``."""
    return CovarianceNet(system, cfg)


"""CovarianceNet: coded RIS snapshots + channel + SNR -> low-rank covariance and K logits.

The network works on second-order statistics, tokenized per RIS element. Inside forward
(no parameters involved, float32, autocast off) it computes, per scene:

* ``R_samp`` = (1/L) Σ_l x̂_l x̂_l^H from the regularized back-projection x̂_l
  (exactly :func:`ris_dist.physics.sample_covariance`), trace-normalized to N;
* the back-projection operator ``Q = H^H (H H^H + δI)^{-1} H`` (x̂_l = (Q ∘ c̄_l c_l^T) x_l for
  unit-modulus codes), which fixes the bias R_samp ≈ (1/L) Σ_l P_l R P_l^H, P_l = D_l^* Q D_l;
* the back-projected noise covariance ``N_z = σ̂²·(1/L) Σ_l D_l^* H^H (H H^H + δI)^{-2} H D_l``
  with σ̂² = mean|y|²/(1 + 10^{SNR/10}), on R_samp's scale (the part of R_samp that is noise);
* the back-projected snapshots x̂_l themselves (first-order, on the same scale).

* optionally (``model.candidates`` = m > 0) m steering candidates a(η_j): the highest peaks
  of the Bartlett spectrum Σ_l |a(η)^H x̂_l|² on a (u, w, 1/r) grid, refined below the grid
  step and optionally on the one-source likelihood (:mod:`ris_dist.model.candidates`). On
  ``full`` R_samp's rows carry almost no phase reference per element; the candidates do
  (docs/full_recipe.md).

Element token n (n = 0..N-1, the design's element order) = row n of R_samp, Q and N_z
(re/im) + x̂_{1..L}[n] (re/im) [+ √N·a_n(η_{1..m}) (re/im)] -> Linear -> + a learned
element-position embedding. One global token carries the SNR and R_samp's sorted
eigenvalues [+ the candidates' relative spectrum values]. A pre-norm transformer attends across
the N + 1 tokens. Heads: the factor F [B, N, r] is emitted PER ELEMENT TOKEN (token n ->
MLP -> r complex values = row n of F), R_pred = N·F F^H / ‖F‖²_F (Hermitian PSD, trace N by
construction, formed in float32 even under bf16 autocast); the K head reads the mean of all
final tokens and emits logits for K = 1..K_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn
from torch import nn

from ..config import SystemConfig
from .candidates import BartlettCandidates
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


def _re_im(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z.real, z.imag], dim=-1)


def _trace(R: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)


def second_order_features(system: SystemConfig, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                          snr_db: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scale-free float32/complex64 features of a batch (see the module docstring).

    Returns ``R_samp`` [B,N,N] (trace N; equal to physics.sample_covariance), ``Q`` [B,N,N],
    ``noise`` [B,N,N] (N_z on R_samp's scale), ``x`` [B,L,N] (x̂_l on R_samp's scale) and
    ``eig`` [B,N] (R_samp's eigenvalues, descending, /N).
    """
    y = y.to(torch.complex64)
    H = H.to(torch.complex64)
    codes = codes.to(torch.complex64)
    M, N = H.shape[-2], H.shape[-1]
    L = y.shape[-2]
    eye = torch.eye(M, dtype=H.dtype, device=H.device)
    # Per-snapshot Gram G_l G_l^H = H diag(|c_l|²) H^H and δ exactly as physics.back_projection.
    gram_l = torch.einsum("bmn,bln,bkn->blmk", H, (codes.abs() ** 2).to(H.dtype), H.conj())
    delta_l = system.samp_delta_rel * torch.diagonal(gram_l, dim1=-2, dim2=-1).real.sum(-1) / M
    inv_l = torch.linalg.inv(gram_l + delta_l[..., None, None] * eye)  # [B, L, M, M]
    z = (inv_l @ y.unsqueeze(-1)).squeeze(-1)  # [B, L, M]
    x = codes.conj() * (z @ H.conj())  # x̂_l = G_l^H z_l  [B, L, N]
    R_raw = x.transpose(-1, -2) @ x.conj() / L
    R_raw = 0.5 * (R_raw + R_raw.mH)
    tr = _trace(R_raw)  # > 0 unless y == 0
    scale = N / tr
    R_samp = R_raw * scale[:, None, None]
    x = x * torch.sqrt(scale)[:, None, None]
    # Q from the snapshot-averaged Gram (all equal for unit-modulus codes).
    inv = inv_l.mean(1)
    Hh = H.mH
    Q = Hh @ inv @ H
    # Back-projected noise: σ² (1/L) Σ_l D_l^* H^H inv_l² H D_l, with σ̂² from the SNR.
    Q2 = Hh[:, None] @ (inv_l @ inv_l) @ H[:, None]  # [B, L, N, N]
    outer = codes.conj()[..., :, None] * codes[..., None, :]
    Nz = (Q2 * outer).mean(1)
    sig2 = (y.abs() ** 2).mean(dim=(-2, -1)) / (1.0 + 10.0 ** (snr_db.to(torch.float32) / 10.0))
    noise = Nz * (sig2 * scale)[:, None, None]
    eig = torch.linalg.eigvalsh(R_samp).flip(-1) / N
    return {"R_samp": R_samp, "Q": Q, "noise": noise, "x": x, "eig": eig}


class CovarianceNet(nn.Module):
    """See the module docstring. Build it with :func:`build_model`."""

    def __init__(self, system: SystemConfig, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.system = system
        self.N, self.M, self.L = system.num_elements, system.num_bs_antennas, system.num_snapshots
        self.K_max = system.max_sources
        d = cfg.width
        # Element token: rows n of R_samp, Q, N_z (3 × 2N) | x̂_{1..L}[n] (2L).
        self.elem_in = 6 * self.N + (2 * self.L if cfg.snapshot_features else 0) + 2 * cfg.candidates
        self.elem_embed = nn.Linear(self.elem_in, d)
        # Parameter-free (no optimizer group); None when off, so the module tree is unchanged.
        self.candidate_search = (BartlettCandidates(system, cfg.candidates, cfg.candidate_spacing_cells,
                                                    cfg.candidate_refine_levels) if cfg.candidates else None)
        # Embeddings are modules, not bare Parameters: ZeRO-3 gathers parameters through
        # module forward hooks, and a bare top-level Parameter would stay partitioned.
        self.pos_embed = nn.Embedding(self.N, d)
        # Global token: SNR/10 and the N eigenvalues of R_samp (sorted, /N).
        self.glob_embed = nn.Sequential(nn.Linear(1 + self.N + cfg.candidates, d), nn.GELU(), nn.Linear(d, d))
        self.type_embed = nn.Embedding(2, d)
        self.embed_drop = _dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(d, cfg.heads, cfg.ffn_mult, cfg.dropout) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d)
        self.cov_head = _mlp(d, cfg.cov_head_hidden, cfg.cov_head_layers, 2 * cfg.rank, cfg.dropout)
        self.k_head = _mlp(d, cfg.k_head_hidden, 1, self.K_max, cfg.dropout)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
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
    def features(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter-free inputs of the network (:func:`second_order_features`), float32."""
        with torch.autocast(device_type=y.device.type, enabled=False):
            f = second_order_features(self.system, y, H, codes, snr_db)
            if self.cfg.candidates > 0:
                f["cand"], f["cand_value"] = self.candidate_search(f["x"], y, H, codes)
            return f

    def _tokens(self, f: dict[str, torch.Tensor], snr_db: torch.Tensor) -> torch.Tensor:
        """[B, N + 1, d]: N element tokens, then the global token."""
        with torch.autocast(device_type=snr_db.device.type, enabled=False):
            parts = [_re_im(f["R_samp"]), _re_im(f["Q"]), _re_im(f["noise"])]
            if self.cfg.snapshot_features:
                parts.append(_re_im(f["x"].transpose(-1, -2)))  # [B, N, 2L]
            glob_parts = [(snr_db.to(torch.float32) / 10.0)[:, None], f["eig"]]
            if self.cfg.candidates > 0:
                parts.append(_re_im(f["cand"]))  # [B, N, 2m]
                glob_parts.append(f["cand_value"])
            elem = torch.cat(parts, dim=-1)
            glob = torch.cat(glob_parts, dim=-1)[:, None, :]
        # A DeepSpeed engine casts the weights to bf16/fp16 and does not autocast: the float32
        # features meet the embedding in its dtype (a no-op in float32 and under autocast).
        dtype = self.type_embed.weight.dtype
        elem, glob = elem.to(dtype), glob.to(dtype)
        kinds = self.type_embed(torch.arange(2, device=elem.device))
        pos = self.pos_embed(torch.arange(self.N, device=elem.device))
        t_elem = self.elem_embed(elem) + pos + kinds[0]
        t_glob = self.glob_embed(glob) + kinds[1]
        return self.embed_drop(torch.cat([t_elem, t_glob], dim=1))

    def forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor) -> ModelOutput:
        """y [B,L,M], H [B,M,N], codes [B,L,N] complex; snr_db [B] -> :class:`ModelOutput`."""
        return self.forward_features(self.features(y, H, codes, snr_db), snr_db)

    def forward_features(self, f: dict[str, torch.Tensor], snr_db: torch.Tensor) -> ModelOutput:
        """The network on given features (:meth:`features`); ``forward`` = this on the real ones.
        Diagnostics (``python -m ris_dist.bench learnability``) substitute a feature here."""
        x = self._tokens(f, snr_db)
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        raw = self.cov_head(x[:, : self.N])  # [B, N, 2r]: row n of F from element token n
        logits = self.k_head(x.mean(dim=1)).float()
        with torch.autocast(device_type=snr_db.device.type, enabled=False):
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

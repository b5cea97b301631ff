"""The steering operators as pure tensor functions; the hook machinery decides where they apply.

Each takes hidden states ``h`` of shape ``(..., hidden)`` and returns new ones; none mutates.
"""

from __future__ import annotations

import torch


def add(h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Activation addition: ``h + delta``."""
    return h + delta


def ablate(
    h: torch.Tensor, basis: torch.Tensor, strength: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """Directional ablation: ``h - strength * (h @ Q^T) @ Q`` for orthonormal rows ``Q``.

    ``basis`` has shape ``(..., k, hidden)`` with orthonormal (or zero) rows; strength 1 removes
    the component of ``h`` in their span entirely.
    """
    coords = h @ basis.transpose(-1, -2)
    return h - strength * (coords @ basis)


def add_norm_preserving(h: torch.Tensor, delta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Addition rescaled to keep each token's norm: ``(h + delta) * |h| / |h + delta|``."""
    out = h + delta
    scale = h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(eps)
    return out * scale


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning ``directions`` ``(k, hidden)``, zero rows after them. From an
    SVD, so collinear directions (``[a, 2a, b]``) still span all of ``b``; singular values under
    1e-6 of the largest (float32 rounding of a collinear copy) count as no direction."""
    keep = directions.norm(dim=-1) > 0
    if not bool(keep.any()):
        return torch.zeros_like(directions)
    u, s, _ = torch.linalg.svd(directions[keep].T.to(torch.float64), full_matrices=False)
    basis = u.T[s > 1e-6 * s.max()].to(directions.dtype)
    out = torch.zeros_like(directions)
    out[: basis.shape[0]] = basis
    return out

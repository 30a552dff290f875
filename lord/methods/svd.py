"""``svd``: plain truncated SVD of the weights, ``min ||W - W'||_F`` (data-free); the bias is kept."""

from __future__ import annotations

import torch

from lord.methods.base import METHODS, Basis, Method


@METHODS.register("svd")
class Svd(Method):
    needs_statistics = False

    def basis(self, W, moments=None, side=None) -> Basis:
        W = W.detach().to(torch.float64)
        if W.shape[0] <= W.shape[1]:  # wide: eigenvectors of the small Gram W W^T are the left singular vectors
            vals, vecs = torch.linalg.eigh(W @ W.T)
            return Basis(vecs.flip(-1), vals.flip(-1).clamp_min(0), None)
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        return Basis(U, S**2, None)

"""``lord_meanfix``: ``lord``'s basis with the output mean kept in the bias.

Bias ``b + (I - Q_r Q_r^T) W mu`` gives ``y' = Q_r Q_r^T (y - ybar) + ybar``: PCA reconstruction, the best
rank-r affine approximation of the outputs in Frobenius norm (Eckart-Young on the centred outputs). ``lord``
has the same linear part but a different bias, so its error on the calibration data can only be larger.
"""

from __future__ import annotations

from lord.methods.base import METHODS
from lord.methods.lord import Lord


@METHODS.register("lord_meanfix")
class LordMeanfix(Lord):
    keeps_mean = True

    def output_bias(self, basis, Qr, b):
        m = basis.mean_z
        return (m - Qr @ (Qr.T @ m)) + (0 if b is None else b)

"""Numbers that need no experiment: Figure 4 (Eq. 6, parity points) and Figure 7 (A.7 storage formats).

Everything is computed from ``lord.ranks`` and the config-only parameter counter; nothing is typed in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lord.architectures import architecture_for
from lord.modules import dense_weight
from lord.params import compressed_parameter_count, count_parameters, load_config, meta_model
from lord.ranks import RankSpec, aspect_ratio, parity_reduction, percent_param_change

FIG4_ALPHAS = (1.0, 0.96, 0.5, 0.33, 0.25, 0.1875, 0.12)  # the aspect ratios paper §3.1 names


def eq6_curves(alphas=FIG4_ALPHAS, reductions=np.linspace(0, 100, 101)) -> pd.DataFrame:
    """% parameter change vs % rank reduction for each aspect ratio (Eq. 6)."""
    return pd.DataFrame([{"alpha": a, "percent_rank_reduction": float(r),
                          "percent_param_change": percent_param_change(a, float(r))}
                         for a in alphas for r in reductions])


def layer_kind_alphas(model_name: str, group: bool = True) -> pd.DataFrame:
    """Aspect ratio and parity point of each layer kind of a real model (block 0), from its config alone."""
    model = meta_model(load_config(model_name))  # a shipped paper or zoo config, or a config.json
    arch = architecture_for(model)
    rows = []
    for kind, rels in arch.kinds.items():
        shapes = [dense_weight(model.get_submodule(f"{arch.blocks}.0.{rel}"))[0].shape for rel in rels]
        d_in = shapes[0][1]
        if group and len(rels) > 1:  # q/k/v as one grouped matrix
            shapes = [(sum(s[0] for s in shapes), d_in)]
        for d_out, d_in_ in shapes[:1]:
            a = aspect_ratio(d_out, d_in_)
            rows.append({"model": model_name, "kind": kind + ("-grouped" if group and len(rels) > 1 else ""),
                         "d_out": d_out, "d_in": d_in_, "alpha": a, "parity_reduction": parity_reduction(a)})
    return pd.DataFrame(rows)


# bits per stored parameter in each format (paper A.7), for 4-bit values
FORMATS = {
    "LoRD (dense)": lambda nonzero, dense: 4 * nonzero,
    "CSR (64-bit indices)": lambda nonzero, dense: (4 + 64) * nonzero,
    "SpQR (16-bit indices)": lambda nonzero, dense: (4 + 16) * nonzero,
    "bitmask (1 bit per dense weight)": lambda nonzero, dense: 4 * nonzero + 1 * dense,
}


def storage_sizes(model_name: str = "bigcode/starcoder", kind: str = "mlp_down",
                  ranks=(6144, 4480, 4096, 3584, 3072, 2560, 2304)) -> pd.DataFrame:
    """4-bit model size (GB) at equal parameter count: LoRD at each rank vs a pruned dense model stored in
    sparse formats with the same number of nonzero parameters (paper Figure 7)."""
    config = load_config(model_name)
    dense = count_parameters(meta_model(config))
    rows = []
    for r in ranks:
        n = compressed_parameter_count(config, [kind], RankSpec("rank", r, force=True))["compressed"]
        for fmt, bits in FORMATS.items():
            rows.append({"model": model_name, "kind": kind, "rank": r, "params": n, "dense_params": dense,
                         "format": fmt, "size_gb": bits(n, dense) / 8 / 1e9})
    return pd.DataFrame(rows)

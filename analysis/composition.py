"""LoRD composed with other compression and with fine-tuning: quantization on top
(``experiment=table2_quantization``, Table 2), pruning on top (``experiment=fig6_pruning``, Fig. 6) and LoRA
after LoRD (``experiment=a5_lora``, A.5, and healing). Pure functions of the results frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.intervals import CI_MISSING

QUANT_COLUMNS = ["model", "compression", "weights", "params (M)", "MiB in memory", "MiB on disk",
                 "blocks' linears MiB", "metric", "value", "95 % CI", "dense value"]
LORA_COLUMNS = ["model", "compression", "LoRA data", "params (M)", "metric", "before LoRA", "after LoRA",
                "after: 95 % CI", "dense value", "gap closed %", "dense + same LoRA", "after vs dense + same LoRA",
                "steps", "tokens/s", "training peak RSS MiB", "weights+adapter state MiB",
                "loss first", "loss last"]
PRUNE_COLUMNS = ["model", "compression", "pruning", "params (M)", "nonzero params (M)", "metric", "value",
                 "95 % CI", "dense value"]


def _compression(r) -> str:
    return "dense" if r.method == "dense" else f"{r.method} {r.layers} {r.rank_value:g}% rank red."


def _metric(r, df: pd.DataFrame | None = None) -> tuple[str, float, float | None]:
    """(metric, value, the dense model's value). Results hold pass@k in %; a HumanEval run's dense value is the
    pass@1 of the dense run (no stage on top) of the same model and experiment in ``df``, when there is one."""
    if r["eval"] == "humaneval":
        return "pass@1 %", r.pass_at_1, None if df is None else _dense_pass_at_1(df, r)
    return "perplexity", r.perplexity, r.dense_perplexity


def _interval(r) -> str:
    """The 95 % interval of a row's metric: of the perplexity increase over the validation windows (n/a for results
    from before per-window NLL), or of pass@1 over tasks."""
    if r["eval"] == "humaneval":
        lo, hi = r.get("pass_at_1_ci_low"), r.get("pass_at_1_ci_high")
        return CI_MISSING if pd.isna(lo) or pd.isna(hi) else f"[{lo:.3g}, {hi:.3g}] %"
    ci = r.get("ppl_increase_ci")
    return ci if isinstance(ci, str) else CI_MISSING


def _dense_pass_at_1(df: pd.DataFrame, r) -> float | None:
    plain = df.quant_bits.isna() & ~df.prune.apply(lambda p: isinstance(p, str))
    if "lora_data" in df:
        plain &= df.lora_data.isna()
    d = df[(df["eval"] == "humaneval") & (df.model == r.model) & (df.experiment == r.experiment)
           & (df.method == "dense") & plain]
    return d.pass_at_1.iloc[0] if len(d) else None


def _mib(v) -> float | None:
    return None if pd.isna(v) else v / 2**20


def quantization_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and compression (dense, or LoRD at a rank): the float model and its 8- and 4-bit versions --
    parameters, bytes in memory and on disk, bytes of the quantized part alone (the blocks' linears; the float
    model's sizes from its quantized runs' records), and the metric. The paper's Table 2 reports pass@1 of
    LoRDCoder at FP16 / 8 / 4 bits (``analysis/paper``)."""
    rows = []
    for (model, comp), g in df.groupby([df.model, df.apply(_compression, axis=1)], sort=True):
        floats = g[g.quant_bits.isna()]
        float_bytes, float_linear = g.float_model_bytes.dropna(), g.float_linear_bytes.dropna()
        float_mib = _mib(float_bytes.iloc[0]) if len(float_bytes) else None
        float_linear_mib = _mib(float_linear.iloc[0]) if len(float_linear) else None
        for _, r in pd.concat([floats, g[g.quant_bits.notna()].sort_values("quant_bits", ascending=False)]).iterrows():
            metric, value, dense = _metric(r, df)
            quantized = not pd.isna(r.quant_bits)
            rows.append([model, comp, f"{int(r.quant_bits)}-bit" if quantized else "float",
                         r.params_compressed / 1e6,
                         _mib(r.model_bytes) if quantized else float_mib,
                         _mib(r.model_bytes_on_disk) if quantized else None,
                         _mib(r.linear_bytes) if quantized else float_linear_mib,
                         metric, value, _interval(r), dense])
    return pd.DataFrame(rows, columns=QUANT_COLUMNS)


def pruning_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and compression: unpruned and Wanda-pruned (50 % unstructured, 2:4) -- parameters, nonzero
    parameters and the metric (Fig. 6 plots HumanEval pass@1 against parameters for StarCoder and LoRDCoder)."""
    rows = []
    for _, r in df.sort_values(["model", "method", "rank_value"]).iterrows():
        metric, value, dense = _metric(r, df)
        pruned = isinstance(r.prune, str)
        rows.append([r.model, _compression(r), r.prune if pruned else "none", r.params_compressed / 1e6,
                     (r.nonzero_params if pruned else r.params_compressed) / 1e6, metric, value, _interval(r),
                     dense])
    return pd.DataFrame(rows, columns=PRUNE_COLUMNS)


def pruning_figure(df: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6's axes: nonzero parameters against the metric, a marker per pruning, dense vs LoRD."""
    import matplotlib.pyplot as plt

    t = pruning_table(df)
    if t.empty:
        return []
    fig, axes = plt.subplots(1, t.model.nunique(), figsize=(5 * t.model.nunique(), 4), squeeze=False)
    for ax, (model, g) in zip(axes[0], t.groupby("model")):
        for comp, c in g.groupby("compression"):
            ax.plot(c["nonzero params (M)"], c["value"], "o-" if comp == "dense" else "s--", label=comp)
            for _, r in c.iterrows():
                ax.annotate(r.pruning, (r["nonzero params (M)"], r["value"]), fontsize=7)
        ax.set(title=model, xlabel="nonzero parameters (M)", ylabel=g.metric.iloc[0])
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out.with_suffix(".png")]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    return paths


def lora_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per trained run: the metric before LoRA (the same compression without the ``lora`` stage; the dense model's
    baseline for a dense run), after, and the dense model's; how much of the compression's gap the training closed,
    ``(before - after) / (before - dense)`` (None for the dense model, or when no untrained run or no gap); the
    control -- the dense model after the same training (same LoRA data and steps) -- and where the run stands
    against it (perplexity: % above it; pass@1: points below it), since training on a corpus like the validation
    set also improves the uncompressed model; the training's cost (tokens/s, peak resident memory, bytes of
    weights + adapters' gradients and AdamW moments) and its loss over the first and last tenth of the steps. The
    paper's A.5: pass@1 after QLoRA 37.80 / 37.62 (LoRDCoder 13.2B / 12.3B) vs 37.74 (StarCoder), 21.2 % less
    memory (``analysis/paper/a5_lora.csv``)."""
    key = ["eval", "model", "method", "layers", "rank_value"]
    untrained = {tuple(r[k] for k in key): r for _, r in df[df.lora_data.isna()].iterrows()}
    control = {(r["eval"], r.model, r.lora_data, r.lora_steps): r
               for _, r in df[df.lora_data.notna() & (df.method == "dense")].iterrows()}
    rows = []
    for _, r in df[df.lora_data.notna()].sort_values(
            ["model", "lora_data", "method", "layers", "rank_value"]).iterrows():
        metric, after, dense = _metric(r, df)
        if r.method == "dense":
            before = dense
        else:
            u = untrained.get(tuple(r[k] for k in key))
            before = None if u is None else _metric(u)[1]
        gap = None
        if r.method != "dense" and before is not None and dense is not None and before != dense:
            gap = 100 * (before - after) / (before - dense)
        c = control.get((r["eval"], r.model, r.lora_data, r.lora_steps))
        trained_dense = None if c is None or r.method == "dense" else _metric(c)[1]
        versus = None
        if trained_dense is not None:
            versus = 100 * (after / trained_dense - 1) if metric == "perplexity" else after - trained_dense
        rows.append([r.model, _compression(r), r.lora_data, r.params_compressed / 1e6, metric, before, after,
                     _interval(r), dense,
                     gap, trained_dense, versus, r.lora_steps, r.lora_tokens_per_s, r.lora_peak_rss_mib,
                     _mib(r.lora_state_bytes), r.lora_loss_first, r.lora_loss_last])
    return pd.DataFrame(rows, columns=LORA_COLUMNS)

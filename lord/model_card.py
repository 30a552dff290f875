"""The ``README.md`` model card of a saved compressed model.

What it states comes from the structure itself (layer kinds, ranks, parameter counts) and from ``card``, a
dict the caller fills with what only it knows: ``base_model`` (e.g. the hub id the weights came from),
``gguf_file_type`` (zoo models), ``licence``, ``method``, ``metrics`` (name -> value, as measured) and
``command`` (what produced those metrics), ``result`` (the result file holding the resolved config). Unknown entries say so rather than being left out.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

LOAD_SNIPPET = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}", trust_remote_code=True)
```

`trust_remote_code=True` (the tokenizer reads `config.json` too) runs `modeling_lord.py` from this folder (torch and transformers only; lord need not
be installed). Without it, loading fails: `config.json` has `model_type: lord`, which transformers does not
know, so it can never build the dense model with random weights in the low-rank layers. For tools that need
plain `nn.Linear` layers, `lord export --merge <this folder> <out>` writes a dense checkpoint (`W = B·A`)."""


def card_from_source(info: dict) -> dict:
    """Card entries from ``lord.models.load_model``'s provenance (zoo: origin, licence, GGUF file type)."""
    card = {"base_model": info.get("origin") or info.get("hub_id") or info.get("path")}
    if info.get("licence"):
        card.update(licence=info["licence"], licence_id=info["licence"].lower())
    if info.get("gguf_file_type"):
        card["gguf_file_type"] = info["gguf_file_type"]
    return card


def _ranks(decompositions) -> list[tuple[str, int, str]]:
    by_kind: dict[str, list[int]] = defaultdict(list)
    for d in decompositions:
        by_kind[d.kind].append(d.rank)
    return [(k, len(r), str(r[0]) if min(r) == max(r) else f"{min(r)}–{max(r)}") for k, r in by_kind.items()]


def card_text(config, decompositions, card: dict, n_params: int | None = None) -> str:
    base = card.get("base_model") or getattr(config, "_name_or_path", "") or "unknown"
    licence = card.get("licence") or "unknown — see the base model's licence"
    method = card.get("method") or "unknown"
    dense_targets = sum(d.dense_params for d in decompositions)
    lowrank_targets = sum(d.lowrank_params for d in decompositions)
    lines = ["---", f"license: {card.get('licence_id') or 'other'}", "library_name: transformers",
             *( [f"base_model: {base}"] if "/" in str(base) else []),
             "tags: [lord, low-rank, compression]", "---", "",
             f"# {base}, compressed with LoRD ({method})", "",
             "Low-rank decomposition (Kaushal, Vaidhya, Rish, *LoRD: Low-Rank Decomposition of Monolingual Code "
             "LLMs for One-Shot Compression*): each listed layer is replaced by two smaller linear layers.", "",
             "| | |", "|---|---|",
             f"| base model | {base} ({config.base_model_type}) |"]
    if card.get("gguf_file_type"):
        lines.append(f"| weights of the base model | GGUF, file type {card['gguf_file_type']} (dequantised to "
                     "float) |")
    lines += [f"| method | {method} |",
              f"| licence | {licence} |",
              f"| decomposed layers | {len(decompositions)} targets |"]
    if n_params is not None:
        dense_total = n_params - lowrank_targets + dense_targets
        lines += [f"| parameters | {n_params:,} (dense: {dense_total:,}; "
                  f"{100 * (1 - n_params / dense_total):.2f} % removed) |"]
    lines += [f"| parameters of the decomposed layers | {lowrank_targets:,} (dense: {dense_targets:,}) |", "",
              "| layer kind | targets | rank |", "|---|--:|--:|"]
    lines += [f"| {k} | {n} | {r} |" for k, n, r in _ranks(decompositions)]
    lines += ["", "## Measured", ""]
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|--:|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines += ["", f"Produced by: `{card.get('command') or 'unknown (a call of experiments.run.run)'}`"]
        if card.get("result"):
            lines.append(f"Result file, with the resolved config: `{card['result']}`")
    else:
        lines.append("Nothing measured was given when this model was saved.")
    lines += ["", "## Load", "", LOAD_SNIPPET.format(path=card.get("path", "<this folder>")), ""]
    return "\n".join(lines)


def write_model_card(directory: Path, config, decompositions, card: dict, n_params: int | None = None) -> None:
    (Path(directory) / "README.md").write_text(card_text(config, decompositions, card, n_params))

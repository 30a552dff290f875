"""The ``README.md`` model card of a saved compressed model, and of its dense export.

A card is Markdown for people under a YAML header for the Hugging Face Hub, written with ``huggingface_hub``'s
``ModelCardData`` / ``EvalResult`` (so ``ModelCard.load`` reads it back, metrics included):

* ``base_model``: the hub id the weights came from (only a hub id: a local folder is never written), with
  ``base_model_relation: finetune``. The Hub knows four relations: ``adapter`` (separate weights applied on
  top of the unchanged base, e.g. LoRA), ``merge`` (weights combined from several models), ``quantized`` (the
  base's weights stored at a lower precision) and ``finetune`` (weights derived from the base and changed).
  LoRD replaces the base's matrices by products of new factors computed from them: a change of the base's
  weights, stored as a whole model, hence ``finetune`` -- also for a LoRD checkpoint whose factors were then
  quantized (the ``hqq`` tag says so) and for its merged export (a single model again, not a ``merge`` of
  several). Only a checkpoint whose one change is HQQ quantization (no layer decomposed) is ``quantized``.
* ``pipeline_tag: text-generation``, ``library_name: transformers``, ``language: [code]`` (the Hub's code for
  programming languages; the models are Python code models, tag ``python``), ``tags`` and ``license``;
* ``model-index``: what was measured on this model, with the data it was measured on -- perplexity on the
  validation split (corpus, split, content sha256 as the revision, windows) and HumanEval pass@k (dataset
  ``openai_humaneval``); timings are left out (they measure the machine, not the model);
* ``lord``: the lord version and git commit that wrote the folder, the method, the result file (its name
  relative to the results folder) and its identity, and the identity of the base weights.

What it states about the structure comes from the structure itself; the rest from ``card``, a dict the caller
fills with what only it knows: ``base_model``, ``licence``/``licence_id``, ``gguf_file_type`` (zoo models),
``method``, ``dense_params`` (the dense model's parameter count, as measured before compressing),
``evaluation`` (``{"name", "metrics", "data", "options"}``: an evaluation's metrics and the data it read, as
a result file holds them), ``metrics`` (further ``label -> value`` entries for the table only), ``command``,
``result``, ``result_identity`` and ``weights`` (``experiments.run`` fills all of them).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from lord.errors import LordError

CARD = "README.md"
EXPORT_REPORT = "lord_export.json"
LANGUAGE = ["code"]
TAGS = ["lord", "low-rank", "compression", "code", "python"]
PAPER = ("Low-rank decomposition (Kaushal, Vaidhya, Rish, *LoRD: Low-Rank Decomposition of Monolingual Code LLMs "
         "for One-Shot Compression*): each listed layer is replaced by two smaller linear layers.")

# perplexity evaluation: metric -> label (in this order; other metrics of that evaluation are not shown)
PERPLEXITY_LABELS = {
    "perplexity": "Perplexity",
    "dense_perplexity": "Perplexity of the dense model",
    "perplexity_increase_percent": "Perplexity increase over the dense model (%)",
    "mean_nll": "Mean negative log-likelihood (nats per token)",
    "n_tokens": "Tokens scored",
    "n_windows": "Validation windows",
}

LOAD_SNIPPET = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path}", trust_remote_code=True)
```

`trust_remote_code=True` (the tokenizer reads `config.json` too) runs `modeling_lord.py` from this folder: it
imports only the standard library, torch, transformers and safetensors (lord need not be installed; a quantized
checkpoint needs `hqq`). Without it, loading fails: `config.json` has `model_type: lord`, which transformers does
not know (where lord is imported, lord's own copy of that code loads it). `architectures` is `["LordForCausalLM"]`,
so nothing that dispatches on it builds a dense model; but a dense class called directly
(`{dense_class}.from_pretrained(<this folder>)`) cannot be stopped: it loads with random weights in every
decomposed layer behind transformers' table of missing and unexpected keys. For tools that need plain `nn.Linear`
layers, `lord export --merge <this folder> <out>` writes a dense checkpoint (`W = B·A`)."""


def is_hub_id(name) -> bool:
    """``owner/name`` that is not a path on this machine."""
    s = str(name or "")
    return (s.count("/") == 1 and not s.startswith(("/", ".", "~")) and all(s.split("/"))
            and not Path(s).expanduser().exists())


def card_from_source(info: dict) -> dict:
    """Card entries from ``lord.models.load_model``'s provenance (zoo: origin, licence, GGUF file type; a hub
    id; a saved LoRD checkpoint: its own card's base model and licence). A local folder's path is not kept."""
    if info.get("source") == "lord-compressed":
        data = read_card(info["path"]).data if (Path(info["path"]) / CARD).is_file() else None
        if data is None:
            return {}
        return {k: v for k, v in {"base_model": data.base_model, "licence_id": data.license}.items() if v}
    base = info.get("origin") or info.get("hub_id")
    card = {"base_model": base} if is_hub_id(base) else {}
    if info.get("licence"):
        card.update(licence=info["licence"], licence_id=info["licence"].lower())
    if info.get("gguf_file_type"):
        card["gguf_file_type"] = info["gguf_file_type"]
    return card


def card_command(program: str, overrides) -> str:
    """``program`` with its Hydra ``overrides`` as a card states them: without the ``paths.*`` ones (where files
    go: they change no number) and with any other value that is a path on this machine written
    ``<local path>``."""
    kept = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~").startswith("paths."):
            continue
        if value.startswith(("/", "~", "./", "../")) or ("/" in value and Path(value).expanduser().exists()):
            override = f"{key}=<local path>"
        kept.append(override)
    return " ".join([program, *kept])


def read_card(directory):
    """The ``ModelCard`` of a folder (parsed by huggingface_hub: a malformed header raises ValueError)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(Path(directory) / CARD)


def provenance() -> dict:
    """The lord version and git commit writing a card (``-dirty`` with the sha256 of the uncommitted change, as
    results record it, where the code differs from the commit)."""
    from lord.environment import git_state, lord_version

    git = git_state() or {}
    out = {"version": lord_version(), "commit": git.get("commit")}
    if git.get("dirty"):
        out.update(commit=f"{git['commit']}-dirty", diff_sha256=git.get("diff_sha256"))
    return out


# ---------------------------------------------------------------------------------------------- numbers

def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,}" if isinstance(v, int) else f"{v:.6g}"


def _is_timing(key: str) -> bool:
    return key.endswith(("_s", "seconds", "per_second", "per_s")) or key in ("seconds", "speed")


def _dense_skeleton(config):
    """The dense base model of a LoRD config, on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lord.hf.modeling_lord import base_config_dict

    base = base_config_dict(config.to_dict())
    model_type = base.pop("model_type")
    base.pop("transformers_version", None)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **base))


def dense_target_params(config, decompositions) -> int:
    """The dense weights and biases of the decomposed targets as the base architecture has them: a bias that a
    method added (``lord_meanfix``) is not counted, where ``Decomposition.dense_params`` counts it."""
    from lord.modules import dense_weight

    dense, total = _dense_skeleton(config), 0
    for d in decompositions:
        for member in d.members:
            W, b = dense_weight(dense.get_submodule(member))
            total += W.numel() + (b.numel() if b is not None else 0)
    return total


def resized_params_removed(config) -> int:
    """Parameters the layers in ``lord.resized`` (MLP neuron selection) have fewer than the base architecture's."""
    from lord.modules import dense_weight

    resized = (getattr(config, "lord", None) or {}).get("resized") or {}
    if not resized:
        return 0
    dense, total = _dense_skeleton(config), 0
    for name, (d_in, d_out, bias) in resized.items():
        W, b = dense_weight(dense.get_submodule(name))
        total += W.numel() + (b.numel() if b is not None else 0) - d_in * d_out - (d_out if bias else 0)
    return total


def dense_model_params(config, decompositions, n_params: int) -> int | None:
    """The dense model's parameter count from the compressed one's: each decomposed target's low-rank parameters
    replaced by its dense ones (``dense_target_params``), and the neurons the resized MLP layers dropped added back.
    None where an embedding or head was decomposed: that unties a tied pair, and the structure does not record
    whether the pair was tied."""
    if any(d.kind in ("embed", "lm_head") for d in decompositions):
        return None
    return (n_params - sum(d.lowrank_params for d in decompositions) + dense_target_params(config, decompositions)
            + resized_params_removed(config))


def _ranks(decompositions) -> list[tuple[str, int, str]]:
    by_kind: dict[str, list[int]] = defaultdict(list)
    for d in decompositions:
        by_kind[d.kind].append(d.rank)
    return [(k, len(r), str(r[0]) if min(r) == max(r) else f"{min(r)}–{max(r)}") for k, r in by_kind.items()]


# ---------------------------------------------------------------------------------------------- measurements

def _dataset(corpus: dict, data: dict) -> dict:
    """The dataset fields of a perplexity measurement (never a local path: a folder corpus is named so)."""
    name = corpus.get("name", "")
    if name == "stdlib":
        version = corpus.get("python_version")
        dtype, label = "cpython-stdlib", (f"CPython {version} standard library" if version else
                                          "CPython standard library (of a Lib folder given in the config)")
    elif name.startswith("folder:"):
        dtype, label = "local-python-files", "Python files of a local folder"
    elif is_hub_id(corpus.get("source")):
        dtype = label = corpus["source"]
    else:
        dtype = label = name or "unknown"
    args = {"files": corpus.get("n_files"), "windows": data.get("validation_windows"),
            "window_tokens": data.get("seq_len"), "min_chars": data.get("min_chars"),
            "validation_percent": corpus.get("validation_percent")}
    return {"dataset_type": dtype, "dataset_name": f"{label}, lord's {corpus.get('split', 'validation')} split",
            "dataset_split": corpus.get("split", "validation"),
            "dataset_revision": f"sha256:{corpus['content_sha256']}" if corpus.get("content_sha256") else None,
            "dataset_args": {k: v for k, v in args.items() if v is not None}}


def measured(evaluation: dict | None, extra: dict | None = None) -> tuple[list[tuple[str, str]], list, str]:
    """(table rows ``(label, value)``, ``EvalResult`` list, a sentence on the data) of an evaluation."""
    from huggingface_hub import EvalResult

    rows, results, where = [], [], ""
    evaluation = evaluation or {}
    name, metrics = evaluation.get("name"), evaluation.get("metrics") or {}
    data = evaluation.get("data") or {}
    if name == "perplexity":
        rows = [(label, _number(metrics[k])) for k, label in PERPLEXITY_LABELS.items() if k in metrics]
        corpus = data.get("validation") or {}
        if "perplexity" in metrics and corpus:
            ds = _dataset(corpus, data)
            results.append(EvalResult(task_type="text-generation", task_name="Text Generation",
                                      metric_type="perplexity", metric_name="Perplexity",
                                      metric_value=float(metrics["perplexity"]), **ds))
            where = (f"Perplexity on {ds['dataset_name']} ({_number(corpus.get('n_files'))} files, "
                     f"{_number(data.get('validation_windows'))} windows of {_number(data.get('seq_len'))} tokens; "
                     f"content {ds['dataset_revision']}).")
    elif name == "humaneval":
        preset = metrics.get("preset") or {}
        n_tasks = metrics.get("n_tasks")
        for k, v in metrics.items():
            if not (k.startswith("pass@") and isinstance(v, dict) and "mean" in v):
                continue
            interval = (f" (95 % bootstrap interval over tasks {v['ci_low']:.2f}–{v['ci_high']:.2f})"
                        if "ci_low" in v and "ci_high" in v else "")
            rows.append((f"HumanEval {k} (%)", f"{v['mean']:.2f}{interval}"))
            args = {"tasks": n_tasks, "preset": preset.get("name"), "samples_per_task": preset.get("n"),
                    "temperature": preset.get("temperature"), "max_new_tokens": preset.get("max_new_tokens"),
                    "seeds": metrics.get("seeds")}
            results.append(EvalResult(task_type="text-generation", task_name="Text Generation",
                                      dataset_type="openai_humaneval", dataset_name="HumanEval", dataset_split="test",
                                      dataset_args={a: b for a, b in args.items() if b is not None},
                                      metric_type=k, metric_name=f"{k} (%)", metric_value=float(v["mean"])))
        if results:
            where = (f"HumanEval ({_number(n_tasks)} tasks, preset {preset.get('name')!r}), generated completions "
                     "executed in lord's sandbox.")
    elif metrics:  # another evaluation: its numeric metrics under readable names, timings left out
        rows = [(k.replace("_", " ").capitalize(), _number(v)) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not _is_timing(k)]
    rows += [(str(k), _number(v)) for k, v in (extra or {}).items()]
    return rows, results, where


# ---------------------------------------------------------------------------------------------- cards

def _header(data) -> str:
    return "---\n" + data.to_yaml() + "\n---\n"


def _dense_class(config) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = getattr(config, "base_architectures", None) or []
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.base_model_type) or (names[0] if names else
                                                                             "AutoModelForCausalLM")


def _relation(decompositions, quantization) -> str:
    return "quantized" if quantization and not decompositions else "finetune"


def card_text(config, decompositions, card: dict, n_params: int | None = None) -> str:
    from huggingface_hub import ModelCardData

    base = card.get("base_model") if is_hub_id(card.get("base_model")) else None
    method = card.get("method") or "unknown"
    quantization = (getattr(config, "lord", None) or {}).get("quantization")
    dense_targets = dense_target_params(config, decompositions) if decompositions else 0
    lowrank_targets = sum(d.lowrank_params for d in decompositions)
    rows, results, where = measured(card.get("evaluation"), card.get("metrics"))
    lord = {**provenance(), "method": method, "format_version": (getattr(config, "lord", None) or {}).get(
        "format_version")}
    for key in ("result", "result_identity", "weights"):
        if card.get(key):
            lord[key] = card[key]
    title = f"{base or 'A ' + config.base_model_type + ' model'}, compressed with LoRD ({method})"
    tags = TAGS + (["hqq", f"{sorted({q['bits'] for q in quantization['modules'].values()})[0]}-bit"]
                   if quantization else [])
    data = ModelCardData(
        base_model=base, base_model_relation=_relation(decompositions, quantization) if base else None,
        license=card.get("licence_id"), library_name="transformers", pipeline_tag="text-generation",
        language=LANGUAGE, tags=tags, model_name=title if results else None, eval_results=results or None,
        lord={k: v for k, v in lord.items() if v is not None})
    lines = [f"# {title}", "", PAPER, "", "| | |", "|---|---|",
             f"| base model | {base or 'not a hub model (a local folder)'} ({config.base_model_type}) |"]
    if card.get("gguf_file_type"):
        lines.append(f"| weights of the base model | GGUF, file type {card['gguf_file_type']} (dequantised to "
                     "float) |")
    lines += [f"| method | {method} |",
              f"| licence | {card.get('licence') or card.get('licence_id') or 'unknown: see the base model'} |",
              f"| decomposed layers | {len(decompositions)} targets |"]
    resized = (getattr(config, "lord", None) or {}).get("resized")
    if resized:
        lines.append(f"| smaller MLP layers (neuron selection) | {len(resized)} layers, "
                     f"{resized_params_removed(config):,} parameters fewer |")
    if quantization:
        bits = sorted({(q["bits"], q["group_size"]) for q in quantization["modules"].values()})
        lines.append(f"| quantized layers | {len(quantization['modules'])} (HQQ, "
                     + ", ".join(f"{b}-bit in groups of {g}" for b, g in bits) + ") |")
    if n_params is not None:
        dense = card.get("dense_params")
        dense = dense if isinstance(dense, int) else dense_model_params(config, decompositions, n_params)
        if dense:
            lines.append(f"| parameters | {n_params:,} (dense: {dense:,}; {100 * (1 - n_params / dense):.2f} % "
                         "removed) |")
        else:
            lines.append(f"| parameters | {n_params:,} (dense: not known from the structure, a decomposed embedding "
                         "or head untied a tied pair) |")
    lines += [f"| parameters of the decomposed layers | {lowrank_targets:,} (dense: {dense_targets:,}) |", "",
              "| layer kind | targets | rank |", "|---|--:|--:|"]
    lines += [f"| {k} | {n} | {r} |" for k, n, r in _ranks(decompositions)]
    lines += ["", "## Measured", ""]
    if rows:
        lines += ["| metric | value |", "|---|--:|", *[f"| {label} | {value} |" for label, value in rows], ""]
        if where:
            lines += [where, ""]
        lines.append(f"Produced by: `{card.get('command') or 'unknown (not a run of experiments.run)'}`")
        if card.get("result"):
            lines.append(f"Result file (under the results folder, with the resolved config): `{card['result']}`"
                         + (f", identity `{card['result_identity']}`" if card.get("result_identity") else ""))
    else:
        lines.append("Nothing measured was given when this model was saved.")
    lines += ["", "## Provenance", "",
              f"Written by lord {lord.get('version') or '(version unknown)'}, commit "
              f"`{lord.get('commit') or 'unknown'}`"
              + (f"; base weights `{card['weights']}`" if card.get("weights") else "") + ".",
              "", "## Load", "", LOAD_SNIPPET.format(path="<this folder>", dense_class=_dense_class(config)), "",
              "## Fine-tune with peft", "",
              "LoRA can wrap the factors (plain `nn.Linear` layers), not a decomposed layer as a whole: use "
              "`target_modules=\"all-linear\"` (also peft's default for this model type), or "
              "`model.lora_target_modules([\"q_proj\", \"v_proj\"])`, which turns layer names into the names of "
              "their factors.", ""]
    return _header(data) + "\n" + "\n".join(lines)


def write_model_card(directory: Path, config, decompositions, card: dict, n_params: int | None = None) -> None:
    (Path(directory) / CARD).write_text(card_text(config, decompositions, card, n_params))


def export_card_text(source, report: dict) -> str:
    """The card of a dense export (``lord export --merge``): base model and licence from the source checkpoint's
    card; what it measured is not claimed here (the export computes the same function up to rounding, checked on
    a probe, not measured)."""
    from huggingface_hub import ModelCardData

    source_data = read_card(source).data if (Path(source) / CARD).is_file() else None
    base = getattr(source_data, "base_model", None)
    base = base if is_hub_id(base) else None
    source_lord = (source_data.to_dict().get("lord") if source_data is not None else None) or {}
    data = ModelCardData(base_model=base, base_model_relation="finetune" if base else None,
                         license=getattr(source_data, "license", None), library_name="transformers",
                         pipeline_tag="text-generation", language=LANGUAGE, tags=TAGS + ["merged"],
                         lord={**{k: v for k, v in provenance().items() if v is not None},
                               "merged_from": {k: v for k, v in source_lord.items()
                                               if k in ("version", "commit", "method", "result", "result_identity")}})
    method = source_lord.get("method", "unknown")
    lines = [f"# {base or 'A ' + report['base_model_type'] + ' model'}, LoRD ({method}) merged into a dense "
             f"{report['architecture']} model", "",
             f"Merged from a LoRD checkpoint: {PAPER[0].lower()}{PAPER[1:]} Here each pair is multiplied back into "
             "one dense matrix (`W = B·A`, biases folded in), so the folder loads as a plain transformers model "
             "with no remote code, at the dense model's size.", "",
             "| | |", "|---|---|",
             f"| base model | {base or 'not a hub model (a local folder)'} ({report['base_model_type']}) |",
             f"| method of the LoRD checkpoint | {method} |",
             f"| architecture | {report['architecture']} |",
             f"| parameters | {report['n_params']:,} |",
             f"| merged targets | {report['merged_targets']} |",
             f"| largest logit difference from the LoRD checkpoint | {report['max_logit_error_relative']:.1e} of "
             f"their scale ({report['probe_tokens']} probe tokens) |", "",
             "What the LoRD checkpoint measured is on its own card"
             + (f" (result `{source_lord['result']}`)" if source_lord.get("result") else "") + ".", "",
             "## Provenance", "",
             f"Merged by lord {provenance()['version'] or '(version unknown)'}, commit "
             f"`{provenance()['commit'] or 'unknown'}`, from a checkpoint written by lord "
             f"{source_lord.get('version', '(unknown)')}, commit `{source_lord.get('commit', 'unknown')}`.", "",
             "## Load", "", "```python", "from transformers import AutoModelForCausalLM",
             "", 'model = AutoModelForCausalLM.from_pretrained("<this folder>")', "```", ""]
    return _header(data) + "\n" + "\n".join(lines)


def card_of(directory) -> str:
    """The card of a lord checkpoint or of its export, checked by huggingface_hub's parser; else one line."""
    directory = Path(directory)
    if not (directory / CARD).is_file():
        raise LordError(f"{directory} has no {CARD}; re-save it with lord.save_compressed (an export: run lord "
                        "export --merge again)")
    try:
        read_card(directory)
    except ValueError as e:
        raise LordError(f"{directory / CARD}: its metadata does not parse ({e})") from None
    return (directory / CARD).read_text()


def is_export(directory) -> bool:
    try:
        return "architecture" in json.loads((Path(directory) / EXPORT_REPORT).read_text())
    except (OSError, json.JSONDecodeError, TypeError):
        return False

"""Saved checkpoints loaded where only torch and transformers are installed (no lord, no hqq, no peft).

    python -m experiments.benchmarks.clean_env_load --python /path/to/venv/bin/python [--model smollm2-135m]

``--python``: the interpreter of a virtual environment holding only torch and transformers (and their
dependencies), e.g. ``python3.11 -m venv /tmp/bare && /tmp/bare/bin/pip install torch transformers``. Saves one
tiny random checkpoint per architecture lord maps (compressed, grouped where the architecture has groups), a
4-bit HQQ one, and ``--model`` (a real model, ``svd`` on MLP-down at 50 %, with its tokenizer and card); then,
in that interpreter, loads each with ``trust_remote_code=True`` and compares its logits with lord's own loader's
(bit for bit: both processes use the same number of torch threads), expects the quantized one to fail in one
line naming hqq, and runs ``pipeline("text-generation")`` on the real one, checking that transformers does not
log "not supported". Writes results/benchmarks/clean-env-load.json (``bare_environment``: what that interpreter
holds; ``environment``: this one).

Time: a few minutes on a 2-core CPU, estimated (not recorded: six tiny checkpoints, a 4-bit one and SmolLM2-135M)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from experiments.benchmarks.common import parser, write
from lord.checkpoint import load_compressed, save_compressed
from lord.compress import CompressionConfig, compress_model
from lord.models import load_model, random_model
from lord.quantization import quantize_model
from lord.ranks import RankSpec

THREADS = 2
VOCAB = 97
TINY = {  # architecture: (config, kinds, group, method) -- the mappings of tests/test_hf_checkpoint.py
    "qwen2": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=VOCAB), ["all"], True, "lord_meanfix"),
    "llama": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=VOCAB), ["mlp_down", "attn_out"], False, "lord_meanfix"),
    "gpt2": (dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64), ["all", "embed", "lm_head"],
             False, "whiten"),
    "codegen": (dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, rotary_dim=4, n_ctx=64),
                ["attn_qkv"], False, "svd"),
    "gpt_bigcode": (dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, multi_query=True),
                    ["all"], False, "lord_meanfix"),
    "starcoder2": (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=VOCAB), ["all"], True, "lord"),
}

CHECK = r"""
import importlib.util, io, json, logging, sys
from pathlib import Path
import torch, transformers
from transformers import AutoModelForCausalLM, pipeline
torch.set_num_threads(int(sys.argv[2]))
root, out = Path(sys.argv[1]), {}
out["bare_environment"] = {name: importlib.util.find_spec(name) is not None for name in ("lord", "hqq", "peft")}
out["bare_environment"].update(torch=torch.__version__, transformers=transformers.__version__)
for name in json.loads((root / "names.json").read_text()):
    ref = torch.load(root / f"{name}.pt")
    model = AutoModelForCausalLM.from_pretrained(root / name, trust_remote_code=True)
    with torch.no_grad():
        got = model(ref["probe"]).logits
    out[name] = {"class": type(model).__name__, "architectures": model.config.architectures,
                 "identical_logits": torch.equal(got, ref["logits"]),
                 "max_abs_difference": float((got - ref["logits"]).abs().max())}
try:
    AutoModelForCausalLM.from_pretrained(root / "quantized", trust_remote_code=True)
    out["quantized"] = {"loaded": True}
except ImportError as e:
    out["quantized"] = {"loaded": False, "error": f"{type(e).__name__}: {e}"}
log = io.StringIO()
transformers.logging.get_logger().addHandler(logging.StreamHandler(log))
generate = pipeline("text-generation", model=str(root / "real"), trust_remote_code=True)
text = generate("def fib(n):", max_new_tokens=8, do_sample=False)[0]["generated_text"]
out["pipeline"] = {"generated": text, "not_supported_logged": "not supported" in log.getvalue()}
print(json.dumps(out))
"""


def _save_reference(model, folder: Path, name: str, probe: torch.Tensor, decompositions, **kw) -> None:
    save_compressed(model, folder / name, decompositions, **kw)
    ours, _ = load_compressed(folder / name, with_tokenizer=False)
    with torch.no_grad():
        torch.save({"probe": probe, "logits": ours(probe).logits}, folder / f"{name}.pt")


def main() -> int:
    ap = parser(__doc__, model="smollm2-135m")
    ap.add_argument("--python", required=True, help="interpreter of a venv with only torch and transformers")
    args = ap.parse_args()
    from transformers import AutoConfig

    torch.set_num_threads(THREADS)
    probe = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))
    batches = [torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        root, names = Path(tmp), []
        for arch, (config, kinds, group, method) in TINY.items():
            model = random_model(AutoConfig.for_model(arch, **config), bias_std=0.5)
            rep = compress_model(model, CompressionConfig(method=method, kinds=kinds, group=group,
                                                          rank=RankSpec("reduction", 50, force=True)),
                                 batches=batches, progress=False)
            _save_reference(model, root, arch, probe, rep["decompositions"])
            names.append(arch)
            if arch == "qwen2":
                quantize_model(model, bits=4, group_size=16, progress=False)
                save_compressed(model, root / "quantized", rep["decompositions"])
        model, tok, info = load_model(args.model)
        rep = compress_model(model, CompressionConfig(method="svd", kinds=["mlp_down"],
                                                      rank=RankSpec("reduction", 50)), progress=False)
        _save_reference(model, root, "real", tok("def fib(n):", return_tensors="pt").input_ids, rep["decompositions"],
                        tokenizer=tok, card={"base_model": info.get("origin"), "method": "svd"})
        names.append("real")
        (root / "names.json").write_text(json.dumps(names))
        p = subprocess.run([args.python, "-c", CHECK, str(root), str(THREADS)], capture_output=True, text=True,
                           timeout=1800, cwd=root, env={"PATH": "/usr/bin:/bin", "HOME": str(root),
                                                        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        return 1
    report = json.loads(p.stdout.strip().splitlines()[-1])
    report["real_model"] = args.model
    write("clean-env-load", report)
    ok = (not any(report["bare_environment"][k] for k in ("lord", "hqq", "peft"))
          and all(report[n]["identical_logits"] for n in names) and not report["quantized"]["loaded"]
          and not report["pipeline"]["not_supported_logged"])
    print("clean environment:", "every check passed" if ok else "a check FAILED",
          "(results/benchmarks/clean-env-load.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

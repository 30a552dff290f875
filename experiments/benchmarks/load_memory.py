"""Peak memory of loading a saved compressed model, against the size of its weights.

    python -m experiments.benchmarks.load_memory [--model qwen2.5-coder-0.5b] [--kinds all] [--reduction 60]

Compresses the model (``svd``, data-free, q/k/v and gate/up grouped), saves it with ``save_compressed``, then
loads it in fresh processes three ways — ``lord.load_compressed``, ``AutoModelForCausalLM`` with
``trust_remote_code`` and, for reference, the dense model — and records each one's peak resident memory
above what the process held just before the load (interpreter, torch and transformers imported), measured
after every weight was read once (``VmHWM``, the kernel's high-water mark of this process, which a fresh
``exec`` resets), and the anonymous (non file-backed) memory among it: transformers maps the safetensors file,
so weights may stay file-backed pages. Both compressed paths build the model on the meta device, so the peak
should be about the compressed weights, not the dense model. Writes results/benchmarks/load-memory-<model>.json.

Time: a few minutes on a 2-core CPU, estimated (not recorded: compress and save the 0.5B model, then three loads in
fresh processes)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.benchmarks.common import parser, write
from lord import zoo
from lord.checkpoint import WEIGHTS, save_compressed
from lord.compress import CompressionConfig, compress_model
from lord.models import load_model
from lord.params import count_parameters
from lord.ranks import RankSpec

PROBE = r"""
import json, sys, torch, transformers
from pathlib import Path
def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out
how, path = sys.argv[1], sys.argv[2]
import lord.checkpoint
before = status()
if how == "lord":
    model, _ = lord.checkpoint.load_compressed(path, with_tokenizer=False)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                              trust_remote_code=how == "remote_code")
loaded = status()
with torch.no_grad():  # fault every weight in (a forward pass would)
    touched = sum(float(p.float().sum()) for p in model.parameters())
used = status()
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"before": before, "after_load": loaded, "after_touching_every_weight": used,
                  "peak_above_before": used["VmHWM"] - before["VmRSS"],
                  "anonymous_above_before": used["RssAnon"] - before["RssAnon"], "parameter_bytes": params}))
"""


def _probe(how: str, path: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, how, str(path)], capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(f"{how} load failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = parser(__doc__, kinds=["all"])
    ap.add_argument("--reduction", type=float, default=60.0)
    args = ap.parse_args()
    dense_dir = zoo.fetch(args.model) if args.model in zoo.ZOO else Path(args.model)
    model, _, _ = load_model(args.model)
    dense_params = count_parameters(model)
    report = compress_model(model, CompressionConfig(method="svd", kinds=args.kinds, group=True,
                                                     rank=RankSpec("reduction", args.reduction)), progress=False)
    compressed_params = count_parameters(model)
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_compressed(model, Path(tmp) / "m", report["decompositions"])
        del model
        loads = {how: _probe(how, saved) for how in ("lord", "remote_code")}
        loads["dense"] = _probe("dense", dense_dir)
        weights = {"compressed": (saved / WEIGHTS).stat().st_size,
                   "dense": sum(f.stat().st_size for f in dense_dir.glob("*.safetensors"))}
    for how, r in loads.items():
        size = weights["dense" if how == "dense" else "compressed"]
        r["peak_over_weights_file"] = r["peak_above_before"] / size
        r["anonymous_over_weights_file"] = r["anonymous_above_before"] / size
    write(f"load-memory-{Path(args.model).name}", {
        "model": args.model, "compression": {"method": "svd", "kinds": args.kinds, "group": True,
                                             "reduction": args.reduction, "targets": len(report["decompositions"])},
        "parameters": {"dense": dense_params, "compressed": compressed_params},
        "weights_file_bytes": weights, "loads": loads})
    return 0


if __name__ == "__main__":
    sys.exit(main())

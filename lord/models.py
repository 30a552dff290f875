"""Load any model lord can work on: an offline zoo name, a saved compressed model, a local Hugging Face
directory, or a hub id (paper models such as ``Salesforce/codegen-16B-mono``, for users with a network)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from lord import zoo
from lord.checkpoint import is_compressed_dir, load_compressed
from lord.errors import LordError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint, bounded in time (name resolution included); no retries."""
    import socket

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    ok = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(ok)


def hub_access(name: str) -> dict:
    """How to load a hub model: ``{}`` (the hub answers), ``{"local_files_only": True}`` (cached, hub
    unreachable), or a one-line ``LordError`` at once when it is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and _hub_reachable():
        return {}
    if cached:
        return {"local_files_only": True}
    raise LordError(
        f"cannot load {name!r}: it is not in the local Hugging Face cache and the hub is "
        f"{'switched off (HF_HUB_OFFLINE=1)' if offline else 'unreachable'}; offline models you can use instead: "
        f"{', '.join(zoo.ZOO)} (with the model cached elsewhere, point HF_HOME there and set HF_HUB_OFFLINE=1)")


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise LordError(f"unknown dtype {dtype!r}; choose from: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name: str, dtype="float32", device: str = "cpu", device_map=None, cache_root=None):
    """(model, tokenizer, info). ``info`` records where the weights came from (and the GGUF file type)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dt = resolve_dtype(dtype)
    path = Path(str(name)).expanduser()
    if name in zoo.ZOO:
        path = zoo.fetch(name, cache_root)
        info = {"source": "zoo", **zoo.zoo_info(name, cache_root)}
    elif path.is_dir() and is_compressed_dir(path):
        model, tok = load_compressed(path, dtype=dt, device=device)
        return model, tok, {"source": "lord-compressed", "path": str(path)}
    elif path.is_dir():
        info = {"source": "local", "path": str(path)}
    else:
        info = {"source": "hub", "hub_id": name}
    kwargs = {"dtype": dt, **(hub_access(name) if info["source"] == "hub" else {})}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path if info["source"] != "hub" else name, **kwargs)
        tok = AutoTokenizer.from_pretrained(path if info["source"] != "hub" else name,
                                            local_files_only=kwargs.get("local_files_only", False))
    except OSError as e:
        if info["source"] == "hub":
            raise LordError(
                f"cannot load {name!r}: the model hub is unreachable and it is not in the local cache; "
                f"offline models you can use instead: {', '.join(zoo.ZOO)}"
            ) from None
        raise LordError(f"cannot load a model from {path} ({e})") from None
    if device_map is None:
        model.to(device)
    model.eval()
    return model, tok, info


def load_config_only(name: str, cache_root=None):
    """The model's transformers config without its weights: shipped with lord for the zoo and the paper's
    models (no fetch, no network), a saved LoRD checkpoint's (read by lord, no remote code), else from the
    model directory or the hub."""
    from transformers import AutoConfig

    from lord.params import load_config, paper_model_configs, zoo_model_configs

    if name in zoo_model_configs() or name in paper_model_configs():
        return load_config(name)
    path = Path(str(name)).expanduser()
    if name in zoo.ZOO:
        path = zoo.fetch(name, cache_root)
    if path.is_dir() and is_compressed_dir(path):  # lord's own code for its checkpoints: none from the folder
        from lord.checkpoint import saved_config

        return saved_config(path)[0]
    try:
        if path.is_dir():
            return AutoConfig.from_pretrained(path)
        return AutoConfig.from_pretrained(name, **hub_access(name))
    except OSError:
        raise LordError(
            f"cannot load the config of {name!r}: the model hub is unreachable and it is not in the local cache; "
            f"offline models you can use instead: {', '.join(zoo.ZOO)}"
        ) from None


def random_model(config, seed: int = 0, device=None, dtype=torch.float32, blocks: int | None = None,
                 bias_std: float | None = None):
    """A model of ``config``'s architecture with random weights (tests, speed at scale, CUDA checks).

    ``blocks`` keeps only the first transformer blocks; ``bias_std`` redraws every bias from N(0, bias_std^2)
    so that bias handling is really exercised (transformers initialises biases to zero).
    """
    import copy

    from transformers import AutoModelForCausalLM

    from lord.params import with_blocks

    config = with_blocks(copy.deepcopy(config), blocks)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if bias_std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, bias_std)
    return model.eval()

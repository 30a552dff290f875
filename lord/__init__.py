"""lord: low-rank decomposition (LoRD) of Hugging Face causal LMs.

The calls most users need::

    from lord import CompressionConfig, RankSpec, compress_model, load_model, save_compressed, load_compressed
    from lord import Compressor        # sweeps: targets, statistics and bases shared across ranks and methods

They are imported on first use (PEP 562), so importing a light module (``lord.errors``, ``lord.presets``, the
``lord`` command's) does not import torch and transformers, which takes tens of seconds on a small machine.
"""

from importlib import import_module

_WHERE = {"CompressionConfig": "lord.compress", "Compressor": "lord.compress", "LordError": "lord.errors",
          "RankSpec": "lord.ranks", "compress_model": "lord.compress", "load_compressed": "lord.checkpoint",
          "load_model": "lord.models", "save_compressed": "lord.checkpoint"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'lord' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

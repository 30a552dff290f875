"""lord: low-rank decomposition (LoRD) of Hugging Face causal LMs.

The calls most users need::

    from lord import CompressionConfig, RankSpec, compress_model, load_model, save_compressed, load_compressed
    from lord import Compressor        # sweeps: targets, statistics and bases shared across ranks and methods
"""

from lord.checkpoint import load_compressed, save_compressed
from lord.compress import CompressionConfig, Compressor, compress_model
from lord.errors import LordError
from lord.models import load_model
from lord.ranks import RankSpec

__all__ = ["CompressionConfig", "Compressor", "LordError", "RankSpec", "compress_model", "load_compressed", "load_model",
           "save_compressed"]

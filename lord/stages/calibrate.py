"""``calibrate`` (config group ``calibration``, layer selection from ``layers``): the calibration windows and
the owner of everything later stages share -- a ``Compressor`` with the targets, the oneshot statistics
(gathered on first use, cached on disk per model, windows and targets) and the bases (reused across runs
through the disk cache when ``calibration.reuse_bases``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from lord.compress import CALIBRATION_MODES, Compressor
from lord.errors import LordError, check_skip_first, positive_int
from lord.run_context import STDLIB_CALIBRATION_CORPORA
from lord.stages.base import STAGES, Stage


def architecture(cfg):
    return OmegaConf.to_container(cfg.architecture, resolve=True) if cfg.get("architecture") else None


def layer_selection(cfg) -> dict:
    """The Compressor's selection: layers, architecture, and neuron selection of the MLP blocks (``neurons``)."""
    ly = cfg.layers
    return dict(kinds=list(ly.kinds), group=bool(ly.group), layers=None if ly.indices is None else list(ly.indices),
                architecture=architecture(cfg), neurons=neuron_settings(cfg))


def neuron_settings(cfg):
    """``NeuronSettings`` of config ``neurons`` (None when off), checked in one line."""
    from lord.neuron_selection import NeuronSettings

    node = cfg.get("neurons")
    return NeuronSettings.from_config(OmegaConf.to_container(node) if OmegaConf.is_config(node) else node)


@STAGES.register("calibrate")
class Calibrate(Stage):
    def check_config(self) -> None:
        c = self.cfg.calibration
        if c.mode not in CALIBRATION_MODES:
            raise LordError(f"calibration.mode={c.mode!r} is unknown; allowed: {', '.join(CALIBRATION_MODES)}")
        positive_int("calibration.n_windows", c.n_windows, allow_none=True)
        positive_int("calibration.batch_size", c.batch_size)
        seq_len = c.get("seq_len")
        if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2):
            raise LordError(f"calibration.seq_len={seq_len!r} must be null (data.seq_len) or an integer >= 2")
        check_skip_first("calibration.skip_first", c.skip_first, seq_len or self.cfg.data.get("seq_len"))
        draw = c.get("draw")
        if draw is not None and (isinstance(draw, bool) or not isinstance(draw, int) or draw < 0):
            raise LordError(f"calibration.draw={draw!r} must be null (the first n_windows windows) or a seed >= 0, "
                            "e.g. calibration.draw=1")
        corpus = self.cfg.data.get("calibration_corpus")
        if corpus is not None and self.cfg.data.name == "stdlib" and corpus not in STDLIB_CALIBRATION_CORPORA:
            raise LordError(f"data.calibration_corpus={corpus!r} is unknown; allowed: "
                            f"{', '.join(STDLIB_CALIBRATION_CORPORA)}")

    def check(self, model) -> None:
        if any(s.uses_layer_selection() for s in self.later):
            Compressor(model, **layer_selection(self.cfg), progress=False)  # the selection exists in this model

    def apply(self, ctx) -> dict | None:
        c = self.cfg.calibration
        if not any(s.uses_layer_selection() for s in self.later):
            return None
        batches = None
        if any(s.needs_calibration_data() for s in self.later):
            batches = list(ctx.data.windows("calibration").split(c.batch_size))
        ctx.compressor = Compressor(ctx.model, **layer_selection(self.cfg), batches=batches,
                                    cache=ctx.cache if c.mode == "oneshot" else None,
                                    reuse_bases=bool(c.reuse_bases) and c.mode == "oneshot",
                                    skip_first=c.skip_first)
        return {"mode": c.mode, "windows": None if batches is None else sum(len(b) for b in batches),
                "skip_first": c.skip_first, "draw": c.get("draw")}

"""Names for how a run departs from the profile's own settings, shared by result paths and analysis.

``setting_tag`` is what the result folder appends to the method name: ``-sequential``, ``-skip<k>`` (statistics
without the first k positions), ``-cal<n>`` (n calibration windows instead of ``budget.calibration_windows``),
``-len<L>`` (calibration windows of L tokens), ``-<corpus>`` (another calibration corpus), ``-draw<k>``
(calibration windows drawn at random with seed k), ``-neurons`` (MLP neuron selection; ``-neurons-ridge<x>``,
``-refitridge<y>`` for ridges other than the defaults), ``+<stage>`` (each
stage besides calibrate and decompose, with its settings: ``+quantize4bit``); "" for the profile's own
calibration and stages. Analysis keeps runs whose ``intervention_tag`` differs apart as different settings.

``method_tag`` comes first, right after the method's name: ``-<option><number>`` or ``-<word>`` for each of the
method's options that differs from its registered default (``kfac-damping0.1``, ``kfac-diagonal``); "" at the
defaults, so a method's default runs keep their folder.
"""

from __future__ import annotations

DEFAULT_STAGES = ("calibrate", "decompose")


def _get(node, key, default=None):
    return node.get(key, default) if node is not None else default


def method_tag(cfg) -> str:
    """``-<option><number>`` (or ``-<word>`` for a string option) for each option of the run's method that differs
    from the method's own default (the ``config_class`` of ``lord.methods``), in the order of its fields; "" when all
    are at their defaults."""
    import dataclasses

    from lord.methods import METHODS

    method = cfg["method"]
    name = method["name"]
    if name not in METHODS:
        return ""
    changed = [(f.name, method[f.name]) for f in dataclasses.fields(METHODS.get(name).config_class)
               if f.name != "name" and f.name in method and method[f.name] != f.default]
    return "".join(f"-{value}" if isinstance(value, str) else f"-{key}{value:g}" for key, value in changed)


def setting_tag(cfg) -> str:
    """The tag of a resolved run config (a DictConfig or the plain dict stored in a result)."""
    c, data, budget = cfg["calibration"], _get(cfg, "data"), _get(cfg, "budget")
    tag = "-sequential" if c["mode"] == "sequential" else ""
    tag += f"-skip{c['skip_first']}" if _get(c, "skip_first") else ""
    windows = _get(budget, "calibration_windows")
    tag += f"-cal{c['n_windows']}" if windows not in (None, c["n_windows"]) else ""
    tag += f"-len{c['seq_len']}" if _get(c, "seq_len") is not None else ""
    corpus = _get(data, "calibration_corpus")
    tag += f"-{corpus}" if corpus not in (None, "stdlib") else ""
    tag += f"-draw{c['draw']}" if _get(c, "draw") is not None else ""
    return tag + neurons_tag(cfg) + stages_tag(cfg)


def neurons_tag(cfg) -> str:
    """``-neurons`` when MLP blocks keep whole neurons (config ``neurons``), with its ridges when not the defaults."""
    from lord.identity import ADDED_KEYS

    n, default = _get(cfg, "neurons"), ADDED_KEYS["neurons"]
    if not _get(n, "enabled"):
        return ""
    tag = "-neurons"
    tag += f"-ridge{n['ridge']:g}" if _get(n, "ridge", default["ridge"]) != default["ridge"] else ""
    return tag + (f"-refitridge{n['refit_ridge']:g}"
                  if _get(n, "refit_ridge", default["refit_ridge"]) != default["refit_ridge"] else "")


def sensitivity_tag(cfg) -> str:
    """``-grid<f1>.<f2>...``, ``-klwindows<n>``, ``-kllen<L>`` for each setting of the measured allocation's KL table
    (config ``sensitivity``) that differs from its default; "" at the defaults, so those runs keep their names."""
    from lord.identity import ADDED_KEYS

    s, default = _get(cfg, "sensitivity"), ADDED_KEYS["sensitivity"]
    grid = sorted(_get(s, "grid", default["grid"]))  # the run sorts it (stage decompose)
    tag = "-grid" + ".".join(f"{f:g}" for f in grid) if grid != default["grid"] else ""
    tag += f"-klwindows{s['windows']}" if _get(s, "windows", default["windows"]) != default["windows"] else ""
    return tag + (f"-kllen{s['seq_len']}" if _get(s, "seq_len", default["seq_len"]) != default["seq_len"] else "")


def stages_tag(cfg) -> str:
    """``+<stage><its tag>`` for each stage besides calibrate and decompose (``+quantize4bit``, ``+prune2of4``:
    ``Stage.tag``; a stage this process does not know, such as one a user's script registered, adds its name)."""
    from lord.stages import STAGES

    return "".join(f"+{s}{STAGES.get(s).tag(cfg) if s in STAGES else ''}"
                   for s in _get(cfg, "stages", DEFAULT_STAGES) if s not in DEFAULT_STAGES)


def intervention_tag(cfg) -> str:
    """The part of the setting tag that changes what is measured rather than how well (statistics without the
    first positions, neuron selection, extra stages): runs that differ in it are different settings, while other
    calibration differences (windows, window length, corpus, mode) are variants of one setting."""
    skip = _get(cfg["calibration"], "skip_first")
    return (f"-skip{skip}" if skip else "") + neurons_tag(cfg) + stages_tag(cfg)

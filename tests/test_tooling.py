"""What the repository's own tooling promises: ``lord ls`` lists every preset and benchmark from their files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lord import presets
from lord.cli import main as lord_main
from lord.errors import LordError

ROOT = Path(__file__).resolve().parents[1]
HARDWARE = ("CPU", "GPU", "H100", "H200", "A100")


def test_every_preset_and_benchmark_states_what_it_makes_and_how_long_on_what():
    items = presets.runnables()
    names = {(r.kind, r.name) for r in items}
    assert {("preset", p.stem) for p in (ROOT / "conf/experiment").glob("*.yaml")} <= names
    scripts = {p.stem for p in (ROOT / "experiments/benchmarks").glob("*.py")} - {"__init__", "common"}
    assert {("benchmark", s) for s in scripts} <= names
    for r in items:
        assert r.summary and r.timings, r.name
        for t in r.timings:
            assert t.source in ("measured", "estimated") and any(h in t.hardware for h in HARDWARE), (r.name, t)
            assert t.duration and " on " not in t.duration, (r.name, t)
        if r.kind == "preset":
            assert r.points >= 1 and r.command == f"python -m experiments.main experiment={r.name}"
        else:
            assert r.points is None and r.command == f"python -m experiments.benchmarks.{r.name}"
    main = next(r for r in items if r.name == "main")
    assert main.points == 5 and main.analysis == ["main_summary"]


def test_a_time_line_splits_into_entries_only_outside_parentheses():
    line = "~9 min on a 2-core CPU, measured (5 points; one process); minutes on one GPU, estimated"
    first, second = presets.parse_time(line, "x")
    assert (first.duration, first.hardware, first.source, first.note) == ("~9 min", "2-core CPU", "measured",
                                                                          "5 points; one process")
    assert (second.duration, second.hardware, second.source, second.note) == ("minutes", "GPU", "estimated", "")
    for bad in ("~9 min on a 2-core CPU", "~9 min, measured", "~9 min on a CPU, guessed (x)"):
        with pytest.raises(LordError, match="is not '<duration> on <hardware>, measured|estimated"):
            presets.parse_time(bad, "conf/experiment/x.yaml")


def _preset(folder: Path, header: str, body: str = "experiment_name: x\n") -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "x.yaml"
    path.write_text(f"# @package _global_\n{header}{body}")
    return path


def test_a_preset_without_its_lines_or_with_bad_yaml_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "experiment"
    with pytest.raises(LordError, match=r"x.yaml: needs exactly one non-empty 'Time:' line, found 0"):
        presets.read_preset(_preset(folder, "# Artefact: Fig. 9\n"))
    with pytest.raises(LordError, match=r"x.yaml: needs exactly one non-empty 'Artefact:' line, found 2"):
        presets.read_preset(_preset(folder, "# Artefact: a\n# Artefact: b\n# Time: 1 s on a CPU, measured\n"))
    with pytest.raises(LordError, match=r"x.yaml is not valid YAML"):
        presets.read_preset(_preset(folder, "# Artefact: a\n# Time: 1 s on a CPU, measured\n", "a: [1\n"))
    # the points are the sweeper's: plus first, then the grid's product
    sweep = "hydra:\n  sweeper:\n    plus: [[method=dense]]\n    grid: {rank.value: [1, 2, 3], method: [a, b]}\n"
    ok = presets.read_preset(_preset(folder, "# Artefact: a\n# Time: 1 s on a CPU, measured\n", sweep))
    assert ok.points == 7 and ok.timings[0].hardware == "CPU"
    _preset(folder, "# Artefact: a\n")
    monkeypatch.setattr(presets, "PRESETS", folder)
    assert lord_main(["ls"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "x.yaml: needs exactly one non-empty 'Time:'" in err and err.count("\n") == 1


def test_lord_ls_lists_everything_in_text_and_json_without_importing_torch():
    code = ("import sys; from lord.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'lord ls imported torch'; sys.exit(rc)")
    text = subprocess.run([sys.executable, "-c", code, "ls"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    listed = subprocess.run([sys.executable, "-m", "lord", "ls", "--json"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [(r["kind"], r["name"]) for r in items] == [(r.kind, r.name) for r in presets.runnables()]
    for r in items:
        assert r["name"] in text.stdout and r["time"] in text.stdout
        assert set(r) == {"kind", "name", "command", "file", "summary", "time", "timings", "points", "analysis"}


def test_imports_follow_the_written_layers_with_no_cycle(monkeypatch, capsys):
    """import-linter's contracts in pyproject.toml (ARCHITECTURE.md, Layers): every import goes down the layer
    order, every module of lord sits in a layer, and no package's modules import each other in a cycle."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)  # lint-imports finds the packages and pyproject.toml from the working directory
    status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert status == 0, out
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", out), out


def test_the_tree_passes_ruff_check():
    """ruff with [tool.ruff] of pyproject.toml (pyflakes, pycodestyle errors and warnings, 120 columns) finds
    nothing in the repository, notebooks included."""
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, f"ruff check . found problems:\n{p.stdout}{p.stderr}"

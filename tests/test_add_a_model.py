"""docs/add-a-model.md, run as written: its commands, on a tiny random model of a family lord has no mapping for
(GPT-NeoX), through the real command line, with only ``profile=quick`` and a temporary results folder added. The
outputs the page shows are checked against what the commands print, its model file and its Python snippet too."""

import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments import records
from lord.architectures import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "add-a-model.md"
SHOWN = "/path/to/your/model"  # how the page writes the model folder
# the tiny model the page's example output was printed for
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            max_position_embeddings=2048)


def blocks(info: str) -> list[str]:
    """The page's fenced code blocks with this info string ("" for plain output blocks), in order."""
    return [b for i, b in re.findall(r"^```(\w*)\n(.*?)^```", PAGE.read_text(), re.S | re.M) if i == info]


def commands() -> list[str]:
    """Every `python -m experiments.run` command of the page's bash blocks, continuation lines joined."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("python -m experiments.run"):
                out.append(line.split("python -m experiments.run", 1)[1])
    return out


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """A tiny random GPT-NeoX model saved as a folder with a real tokenizer (SmolLM2's, from the zoo)."""
    from transformers import AutoConfig, AutoTokenizer

    from lord import zoo
    from lord.models import random_model

    assert "gpt_neox" not in ARCHITECTURES, "GPT-NeoX got a built-in mapping: pick another family for this page"
    tok = AutoTokenizer.from_pretrained(zoo.fetch("smollm2-135m"))
    config = AutoConfig.for_model("gpt_neox", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, **TINY)
    folder = tmp_path_factory.mktemp("model") / "neox"
    random_model(config, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def cli(args: str, monkeypatch) -> int:
    """``python -m experiments.run <args>`` in this process: its exit status."""
    from experiments.run import cli as run_cli

    monkeypatch.setattr(sys, "argv", ["experiments.run", *shlex.split(args)])
    try:
        run_cli()
    except SystemExit as e:
        return e.code
    return 0


def test_the_add_a_model_page_runs_as_written(neox, tmp_path, monkeypatch, capsys):
    steps = commands()
    assert len(steps) == 3, steps  # see what lord finds; dry run with the mapping; the first sweep
    results = tmp_path / "results"
    extra = f" profile=quick paths.results_dir={results}"
    error_shown, dry_run_shown = blocks("")

    # 1. no mapping: one line naming the linear modules and the key, exit 2, before any weights load
    assert cli(steps[0].replace("$MODEL", str(neox)) + extra, monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == error_shown.strip()
    assert not results.exists() or not any(results.rglob("*.json"))

    # 2. the dry run with the mapping prints what the page shows (the tiny model's numbers), writes nothing
    assert cli(steps[1].replace("$MODEL", str(neox)) + extra, monkeypatch) == 0
    out = capsys.readouterr().out
    for line in dry_run_shown.strip().splitlines():
        if line.strip() == "...":
            continue
        if "result:" in line:
            pattern = re.escape(line.strip().replace("results/", f"{results}/", 1)
                                .replace(SHOWN.replace("/", "--"), str(neox).replace("/", "--")))
            assert re.search(pattern.replace(re.escape("<id8>"), "[0-9a-f]{8}"), out), (line, out)
        else:
            assert line.replace(SHOWN, str(neox)) in out, (line, out)
    assert not results.exists() or not any(results.rglob("*.json"))

    # 3. the first sweep: four results, and the summary line the page quotes
    assert cli(steps[2].replace("$MODEL", str(neox)) + extra, monkeypatch) == 0
    found = sorted(results.rglob("*.json"))
    assert len(found) == 4, found
    assert "sweep: 4 jobs: 4 ran, 0 skipped (already done), 0 failed" in capsys.readouterr().err


def test_the_pages_model_file_composes_and_selects_the_mapped_layers(neox, tmp_path):
    """Step 4: the page's conf/model file (its `_global_` package sets `architecture` next to `model`)."""
    (yaml,) = blocks("yaml")
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    name = re.search(r"conf/model/(\S+)\.yaml", yaml)[1]
    (conf / "model" / f"{name}.yaml").write_text(re.sub(r"name: \S+", f"name: {neox}", yaml, count=1))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", "profile=quick", "layers=all", "dry_run=true",
                                           f"paths.results_dir={tmp_path / 'results'}"])
    stages, evaluation = records.validate(cfg)
    plan = records.dry_run(cfg, stages, evaluation)
    assert [t["kind"] for t in plan["targets"]] == ["attn_qkv", "attn_out", "mlp_up", "mlp_down"] * 2


def test_the_pages_python_snippet_compresses_the_mapped_layers(neox):
    from lord.models import load_model

    (snippet,) = blocks("python")
    model, _, _ = load_model(str(neox))
    scope = {"model": model}
    exec(snippet, scope)  # noqa: S102 (the page's own code)
    assert [d.name for d in scope["report"]["decompositions"]] == [
        f"gpt_neox.layers.{i}.mlp.dense_4h_to_h" for i in range(2)]


def test_a_dry_run_sweep_checks_every_job_and_a_budget_lists_its_targets(neox, tmp_path, monkeypatch, capsys):
    """-m ... dry_run=true: each job checked and printed, none run; at rank.unit=budget the ranks come later."""
    mapping = re.search(r"(architecture='[^']*')", commands()[2])[1]
    common = f"model.name={neox} {mapping} profile=quick paths.results_dir={tmp_path}"
    assert cli(f"-m {common} method=lord,svd rank.value=25,50 dry_run=true", monkeypatch) == 0
    captured = capsys.readouterr()
    assert captured.out.count("dry run (no weights loaded, nothing written)") == 4
    assert "sweep: 4 jobs: 0 ran, 0 skipped (already done), 4 checked (dry run), 0 failed" in captured.err
    assert not list(tmp_path.rglob("*.json"))
    assert cli(f"{common} layers=all rank.unit=budget rank.value=20 dry_run=true", monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count("rank chosen from the spectra") == 8 and "the budget removes 20 % of them" in out

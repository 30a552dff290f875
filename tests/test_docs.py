"""The user guide: generated regions hold exactly the committed generated tables, the mkdocs site builds in strict
mode offline, the README keeps its two Quickstart commands and links only to files that exist."""

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import docs_regions
from analysis.docs_regions import fill, fill_pages, region_body
from analysis.tables import run_times_table
from lord.errors import LordError

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "docs" / "generated"
# regions that name a table another piece of work will generate (none today)
EXPECTED_LATER: set[str] = set()


def _page(*names, before="intro", after="outro"):
    parts = [before]
    for n in names:
        parts += [f"<!-- table: {n} -->", "stale text", "<!-- /table -->", "between"]
    return "\n".join(parts + [after]) + "\n"


def test_fill_puts_each_generated_file_between_its_markers_and_nothing_else_changes(tmp_path):
    rng = random.Random(0)
    for _ in range(20):
        names = [f"t{i}.md" for i in range(rng.randint(1, 4))]
        texts = {}
        for n in names:
            rows = [" | ".join(str(rng.random()) for _ in range(3)) for _ in range(rng.randint(0, 5))]
            texts[n] = f"caption {n}\n\n" + "\n".join(rows) + "\n" * rng.randint(0, 2)
            (tmp_path / n).write_text(texts[n])
        page = _page(*names)
        filled, regions = fill(page, tmp_path)
        assert [r.status for r in regions] == ["out of date"] * len(names)
        for n in names:  # the region holds the file's text, one blank line each side
            block = "\n".join(region_body(texts[n]))
            assert f"<!-- table: {n} -->\n{block}\n<!-- /table -->" in filled
        assert filled.startswith("intro\n") and filled.endswith("outro\n") and filled.count("between") == len(names)
        again, regions = fill(filled, tmp_path)  # filling is idempotent, and a filled page checks as up to date
        assert again == filled and all(r.status == "up to date" for r in regions)


def test_a_missing_file_leaves_its_region_alone_and_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("a table\n")
    page = _page("missing.md", "there.md")
    filled, regions = fill(page, tmp_path)
    assert [(r.name, r.status) for r in regions] == [("missing.md", "missing"), ("there.md", "out of date")]
    assert "<!-- table: missing.md -->\nstale text\n<!-- /table -->" in filled
    assert docs_regions.report(regions, check=True) == ["<page>:2: missing.md missing (left as it is)",
                                                         "<page>:6: there.md out of date"]


def test_markers_inside_code_blocks_are_examples_not_regions(tmp_path):
    (tmp_path / "t.md").write_text("real\n")
    page = "```markdown\n<!-- table: t.md -->\nexample\n<!-- /table -->\n```\n" + _page("t.md")
    filled, regions = fill(page, tmp_path)
    assert len(regions) == 1 and filled.startswith("```markdown\n<!-- table: t.md -->\nexample\n")


@pytest.mark.parametrize("page, message", [
    ("<!-- table: a.md -->\nno end\n", "region 'a.md' is not closed"),
    ("<!-- table: a.md -->\n<!-- table: b.md -->\n<!-- /table -->\n", "region 'a.md' is not closed"),
    ("text\n<!-- /table -->\n", ":2: '<!-- /table -->' without an opening"),
    ("<!-- table: ../x.md -->\n<!-- /table -->\n", "must name a file inside the generated folder"),
])
def test_malformed_regions_are_one_line_errors_naming_page_and_line(tmp_path, page, message):
    with pytest.raises(LordError, match=re.escape(message)):
        fill(page, tmp_path, Path("p.md"))


def test_check_mode_changes_nothing_and_exits_1_when_a_region_is_stale(tmp_path, capsys):
    gen, docs = tmp_path / "gen", tmp_path / "docs"
    gen.mkdir(), docs.mkdir()
    (gen / "t.md").write_text("new\n")
    (docs / "p.md").write_text(_page("t.md"))
    assert docs_regions.main(["--check", "--generated", str(gen), str(docs)]) == 1
    assert "stale text" in (docs / "p.md").read_text() and "t.md out of date" in capsys.readouterr().out
    assert docs_regions.main(["--generated", str(gen), str(docs)]) == 0
    assert docs_regions.main(["--check", "--generated", str(gen), str(docs)]) == 0
    assert docs_regions.main(["--generated", str(tmp_path / "none"), str(docs)]) == 2  # one line, no traceback


def test_every_region_of_the_readme_and_the_docs_equals_its_committed_generated_file():
    """A regenerated table and the page that shows it are committed together (python -m analysis.docs_regions)."""
    regions = fill_pages([ROOT / "README.md", ROOT / "docs"], GENERATED, check=True)
    stale = [f"{r.page.relative_to(ROOT)}:{r.line} {r.name}" for r in regions if r.status == "out of date"]
    assert not stale, f"run python -m analysis.docs_regions: out of date {stale}"
    missing = {r.name for r in regions if r.status == "missing"}
    assert missing <= EXPECTED_LATER, f"regions naming no generated file: {sorted(missing - EXPECTED_LATER)}"
    shown = {r.page.relative_to(ROOT).as_posix() for r in regions}
    findings = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "findings").glob("*.md")} - {
        "docs/findings/index.md", "docs/findings/figs4-7.md"}  # figures only: analytic, no table of results
    assert findings <= shown and "README.md" in shown  # every findings page embeds generated tables


def test_the_site_builds_in_strict_mode_offline(tmp_path):
    """Broken links and anchors fail the build; the theme fetches no fonts (mkdocs.yml: font: false)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    html = (tmp_path / "site" / "findings" / "table1" / "index.html").read_text()
    assert "<table>" in html and "fonts.googleapis" not in html


def test_the_readme_keeps_its_quickstart_commands_and_links_only_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    ci_command = ci.split("&& ", 1)[1] if ci.startswith("cd ") else ci
    assert ci_command in readme  # README command 2 is what CI runs
    assert ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python -m "
            "experiments.main") in readme
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_run_times_sum_each_runs_timings_per_experiment_model_and_device():
    rows = [dict(experiment="e", model="m", eval="perplexity", device="CPU (2 cores)", run_seconds=s)
            for s in (60.0, 120.0, 30.0)]
    rows += [dict(experiment="e", model="m", eval="perplexity", device="GPU", run_seconds=6.0),
             dict(experiment="f", model="m", eval="humaneval", device=None, run_seconds=600.0),
             dict(experiment="f", model="m", eval="humaneval", device=None, run_seconds=None)]
    t = run_times_table(pd.DataFrame(rows)).set_index(["experiment", "device"])
    assert t.loc[("e", "CPU (2 cores)"), "runs"] == 3
    assert t.loc[("e", "CPU (2 cores)"), "minutes, all runs"] == pytest.approx(3.5)
    assert t.loc[("e", "CPU (2 cores)"), "minutes per run, median"] == pytest.approx(1.0)
    assert t.loc[("e", "GPU"), "minutes, all runs"] == pytest.approx(0.1)
    assert t.loc[("f", "unknown"), "runs"] == 1  # a run without timings is not counted

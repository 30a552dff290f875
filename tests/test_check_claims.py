"""analysis.check_claims: numbers in prose with no committed source are listed; traced ones, code and generated
regions are not."""

import json

from analysis.check_claims import Sources, check


def test_unsourced_numbers_are_listed_and_sourced_ones_are_not(tmp_path):
    run = tmp_path / "results" / "published" / "x" / "r.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"experiment": "x", "metrics": {"perplexity": 5.763826,
                                                              "perplexity_increase_percent": 54.612},
                               "stage_memory": {"decompose": {"rss_peak_mib": 6656.0}},
                               "timings": {"load_s": 100.0, "eval_s": 400.0},
                               "config": {"calibration": {"n_windows": 8}},
                               "metrics_extra": {"window_nll": [123.456] * 100}}))
    (tmp_path / "results" / "benchmarks").mkdir()
    (tmp_path / "results" / "benchmarks" / "b.json").write_text(json.dumps(
        {"benchmark": "b", "runs": {"wall_s": {"shared": 634.0}}, "near_tie_flips": {"differing": 3, "samples": 40}}))
    (tmp_path / "docs" / "generated").mkdir(parents=True)
    (tmp_path / "docs" / "generated" / "table_a.md").write_text("| a |\n|--:|\n| 181.4 |\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "analysis" / "paper").mkdir(parents=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text("\n".join([
        "Dense perplexity 5.764, SVD-LLM +54.6 % and +181 % (a table), peak 6.5 GiB, 8.3 min in all.",  # sourced
        "3 of 40 samples differ; 8 windows of calibration; one step took 10 min 34 s.",  # sourced: pair, count, time
        "4 of 40 differed with the old batching, and the first 16 tasks rerun gave identical completions.",
        "The run peaked at 20.1 GB and took 10 min 31 s; plain SVD lost +1.0 × 10⁹ %.",  # no source
        "A value only inside per-window data: 123.456; Table 2 and Fig. 6 are references, 8 a bare count.",
        "```", "python -m experiments.run rank.value=27.08 # 99.99 in code", "```",
        "<!-- table: table_a.md -->", "| 777.7 |", "<!-- /table -->",
    ]) + "\n")
    got = {c.text for c in check([page], Sources(tmp_path), set())}
    # 10 min 31 s is 631 s: a recording of 634 s does not round to it; 4 and 40 sit in no object together; no key
    # that counts tasks holds 16
    assert got == {"20.1 GB", "10 min 31 s", "+1.0 × 10⁹ %", "123.456", "4 of 40", "16 tasks"}
    allowed = {c.text for c in check([page], Sources(tmp_path), {(str(page), "20.1 GB")})}  # file:number
    assert allowed == got - {"20.1 GB"}

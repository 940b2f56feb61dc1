"""xbc bench: the benchmark runs end to end on small models and its numbers are consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xbc import bench
from xbc.cli import main
from xbc.layer import empty_program


@pytest.fixture(scope="module")
def quick_text():
    """One end-to-end `xbc bench --quick` on a tiny model (every section on)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["bench", "--quick", "--models", "tiny_cnn", "--samples", "2", "--quiet"])
    return rc, buf.getvalue()


class FakeTTY:
    def __init__(self):
        self.parts = []

    def isatty(self):
        return True

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass


@pytest.fixture(scope="module")
def tty():
    return FakeTTY()


@pytest.fixture(scope="module")
def tiny_report(tty):
    from xbc.progress import Progress

    with Progress(True, tty, interval=0.0) as prog:
        return bench.run_bench(["tiny_cnn"], targets=("sme", "isaac"), samples=3, placement=False, sim=False,
                               progress=prog)


def test_quick_cli_prints_every_section(quick_text):
    rc, out = quick_text
    assert rc == 0, out
    assert "== tiny_cnn: 6 crossbar layers (1 depthwise), 24,224 weights" in out
    for col in ("configuration", "crossbars", "non-empty", "vs dense", "vs isaac", "top-1 agree %", "SQNR dB",
                "compile s", "peak RSS MB"):
        assert col in out
    for row in ("sme dense", "sme +squeeze", "sme +orchestrate-bits", "sme +reorder", "isaac"):
        assert f"\n   {row} " in out, row
    assert "paper (SME, arXiv 2103.01705 (abstract))" in out
    assert "seconds per pass:" in out and "quantize" in out and "total compile" in out
    assert "placement (sme), greedy vs CP-SAT:" in out and "cp-sat" in out
    assert "simulator (sme): " in out and "bit-serial" in out and "ms/image" in out
    assert "sme summary crossbars: isaac" in out
    table = out.split("paper (")[0]
    assert "n/a" not in table and "error" not in table


def test_report_numbers_are_consistent(tiny_report):
    (m,) = tiny_report["models"]
    assert m["crossbar_layers"] == 6 and m["weights"] == 24224
    rows = {r["label"]: r for r in m["rows"]}
    assert list(rows) == ["sme", "sme dense", "sme +squeeze", "sme +orchestrate-bits", "sme +reorder", "isaac"]
    for r in rows.values():
        assert "error" not in r, r
        assert isinstance(r["crossbars"], int) and r["crossbars"] > 0
        assert r["vs_isaac"] == round(rows["isaac"]["crossbars"] / r["crossbars"], 4)
        assert r["nonempty"] <= r["crossbars"]
        f = r["fidelity"]
        assert 0.0 <= f["top1_agree_pct"] <= 100.0 and f["n"] == 3
        assert np.isfinite(f["sqnr_db"]) and f["sqnr_db"] > 10.0
        assert 0.0 <= f["offset_pct"] <= 100.0
        assert set(r["pass_seconds"]) == set(bench.pipeline_names(r["pipeline"]))
        assert r["peak_rss_mb"] > 0 and r["rss_increase_mb"] >= 0
    dense = rows["sme dense"]["crossbars"]
    assert rows["sme dense"]["vs_dense"] == 1.0
    assert rows["sme +squeeze"]["crossbars"] <= dense
    # the last ablation row maps exactly what the full pipeline maps
    assert rows["sme +reorder"]["crossbars"] == rows["sme"]["crossbars"]
    assert rows["sme"]["vs_dense"] == round(dense / rows["sme"]["crossbars"], 4)
    # the dense ablation row is slice-bits' dense mapping, the summary's "dense" count
    assert rows["sme"]["summary_crossbars"]["dense"] == dense
    assert rows["sme"]["summary_crossbars"]["physical"] == rows["sme"]["crossbars"]
    assert rows["isaac"]["summary_crossbars"]["isaac"] == rows["isaac"]["crossbars"]
    assert "vs_dense" not in rows["isaac"]          # isaac has no sparsity passes: no dense row
    assert m["placement"] == {"na": "disabled (--no-placement)"}
    text = bench.render_text(tiny_report)
    assert "placement (sme): n/a (disabled (--no-placement))" in text
    assert "simulator (sme): n/a (disabled (--no-sim))" in text


def test_progress_on_a_terminal(tiny_report, tty):
    out = "".join(tty.parts)
    for stage in ("building tiny_cnn", "tiny_cnn: compiling for sme", "tiny_cnn: sme +squeeze", "fidelity isaac",
                  "\rorchestrate-bits", "\rsqueeze"):
        assert stage in out, stage
    assert out.endswith("\r") and out.split("\r")[-2].strip() == ""   # erased at the end


def test_json_output_for_onnx_files(tmp_path):
    """--model FILE (a dynamic-batch file fixed by --input-shape, and the README example) --json."""
    import io
    import os
    from contextlib import redirect_stdout

    import onnx

    models = bench.load_builders()
    dyn = tmp_path / "dyn.onnx"
    onnx.save(models.tiny_cnn(seed=5, batch=None), str(dyn))
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "tiny_cnn.onnx")
    reps = []
    for args in (["--model", str(dyn), "--input-shape", "input=2,3,32,32"], ["--model", example]):
        buf = io.StringIO()
        with redirect_stdout(buf):
            rc = main(["bench", *args, "--targets", "isaac", "--samples", "1", "--no-placement", "--no-sim", "--json"])
        assert rc == 0
        reps.append(json.loads(buf.getvalue()))
    for rep, name, n in zip(reps, ("dyn", "tiny_cnn"), (2, 1)):
        assert rep["schema"] == "xbc.bench" and rep["targets"] == ["isaac"]
        (m,) = rep["models"]
        (row,) = m["rows"]
        assert m["model"] == name and row["label"] == "isaac" and row["crossbars"] == 21
        assert row["fidelity"]["n"] == n          # batch 2 -> two top-1 decisions per sample


def test_ablation_pipelines():
    from xbc import targets

    sme = bench.ablation_pipelines(targets.load("sme").pipeline)
    assert sme == [
        ("dense", "fold-batchnorm,quantize,bias-correct,slice-bits"),
        ("+squeeze", "fold-batchnorm,quantize,bias-correct,slice-bits,squeeze"),
        ("+orchestrate-bits", "fold-batchnorm,quantize,orchestrate-bits,bias-correct,slice-bits,squeeze"),
        ("+reorder", "fold-batchnorm,quantize,orchestrate-bits,bias-correct,reorder,slice-bits,squeeze"),
    ]   # bias-correct is not a sparsity pass: every row keeps it
    assert bench.ablation_pipelines(targets.load("isaac").pipeline) == []
    assert [lbl for lbl, _ in bench.ablation_pipelines(targets.load("mars").pipeline)] == [
        "dense", "+squeeze", "+cim-sparsity"]
    # options survive
    (_, p), *_ = bench.ablation_pipelines("quantize{weight-bits=4},squeeze,place")
    assert p == "quantize{weight-bits=4}"


def test_count_crossbars_counts_programmed_ones():
    class L:
        def __init__(self, prog):
            self.layer = type("X", (), {"program": prog, "stats": {}})()

    class G:
        def __init__(self, nodes):
            self._n = nodes

        def layers(self):
            return iter(self._n)

    p = empty_program(4, 4)
    p.cells = np.zeros((3, 4, 4), np.uint8)
    p.cells[0, 1, 2] = 1
    p.cells[2, 3, 3] = 1
    assert bench.count_crossbars(G([L(p), L(None)])) == (3, 2)
    assert bench.count_crossbars(G([L(None)])) is None


def test_missing_part_is_reported_not_silent(monkeypatch, tiny_report):
    """A section whose code is missing says n/a with the reason."""
    def boom(res):
        raise ImportError("no module named xbc.passes.place_instance")

    monkeypatch.setattr(bench, "_placement_instance", boom)
    sec = bench._placement_section(object(), bench.BenchOptions())
    assert sec["na"].startswith("cannot build the placement instance (ImportError: no module named")
    rep = json.loads(json.dumps(tiny_report))
    rep["models"][0]["placement"] = sec
    assert "placement (sme): n/a (cannot build the placement instance (ImportError" in bench.render_text(rep)


def test_bad_options(capsys):
    assert main(["bench", "--models", "vgg16", "--no-sim"]) == 2
    assert "unknown model 'vgg16'" in capsys.readouterr().err
    assert main(["bench", "--models", "tiny_cnn", "--targets", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "--model", "/nonexistent/m.onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_peak_rss_sees_an_allocation():
    import time
    with bench.PeakRSS() as mem:
        a = np.ones(64 * 2**20 // 8)       # 64 MB, touched
        time.sleep(0.05)
        del a
    assert mem.peak >= mem.start
    if mem.method == "statm":
        assert mem.delta_mb > 40

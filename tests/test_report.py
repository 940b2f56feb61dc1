"""``xbc report``: structure, the numbers behind the panels, determinism, errors, and a real render
in headless Chromium (every image decoded and painted)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from tests import graphs
from xbc import plots, report
from xbc.bundle import read_bundle, write_bundle
from xbc.cli import cli, main
from xbc.compiler import compile_model

PIPELINE = "fold-batchnorm,quantize,orchestrate-bits,reorder,slice-bits,squeeze,adc-size,place"
IMG_RE = re.compile(r'<img([^>]*) src="([^"]*)" width="(\d+)" height="(\d+)"')


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    model = graphs.tiny_cnn()
    onnx.save(model, d / "tiny.onnx")
    res = compile_model(str(d / "tiny.onnx"), "sme", pipeline=PIPELINE)
    write_bundle(res, d / "bundle")
    write_bundle(res, d / "bundle.xbc", zip=True)
    # a bundle without adc-size and place: those panels must say so
    bare = compile_model(model, "sme", pipeline="fold-batchnorm,quantize,slice-bits")
    write_bundle(bare, d / "bare")
    return d


@pytest.fixture(scope="module")
def sim_json(work):
    """The real simulator's JSON (xbc simulate --compare --json)."""
    r = CliRunner().invoke(cli, ["simulate", str(work / "bundle"), "--random", "2", "--compare", "--model",
                                 str(work / "tiny.onnx"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    p = work / "sim.json"
    p.write_text(r.output)
    return p


@pytest.fixture(scope="module")
def page(work, sim_json):
    out = work / "report.html"
    r = CliRunner().invoke(cli, ["report", str(work / "bundle"), "-o", str(out), "--sim", str(sim_json)])
    assert r.exit_code == 0, r.output
    return out


def _images(text: str) -> list[tuple[str, bytes, int, int]]:
    out = []
    for attrs, src, w, h in IMG_RE.findall(text):
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append((attrs, base64.b64decode(src.split(",", 1)[1], validate=True), int(w), int(h)))
    return out


def _section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


# ----------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------

def test_sections_and_embedded_pngs(page, work):
    text = page.read_text(encoding="utf-8")
    for sid in report.SECTIONS:
        assert text.count(f'<section id="{sid}">') == 1, sid
    # self-contained: no scripts, no external resources
    low = text.lower()
    assert "<script" not in low and "<link" not in low and "@import" not in low
    assert not re.search(r'(src|href)="(?!data:image/png;base64,|#)', text)
    assert "http://" not in low and "https://" not in low
    imgs = _images(text)
    assert len(imgs) == text.count("<img")
    b = read_bundle(work / "bundle")
    X = max(s.program.n_crossbars for s in b.layers.values())
    # steps, heatmap, occupancy images, tile map, tile bars, ADC histogram, ADC per layer, SQNR
    assert len(imgs) == 7 + min(X, report.DEFAULT_MAX_CROSSBARS)
    for attrs, png, w, h in imgs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert plots.png_size(png) == (w, h)
        im = Image.open(io.BytesIO(png))
        im.load()                                   # decodes every byte of the image data
        assert im.size == (w, h)
        px = np.asarray(im.convert("RGB"))
        assert px.std() > 10, f"blank image {attrs}"
    # every section's figure is present where expected
    for sid in ("crossbars", "bits", "occupancy", "tiles", "adc", "sqnr"):
        assert "<img" in _section(text, sid), sid
    assert "Not in this bundle" not in text


def test_summary_numbers(page, work):
    text = page.read_text(encoding="utf-8")
    b = read_bundle(work / "bundle")
    m = b.mapping
    phys = sum(len(e["crossbars"]) for e in m["layers"])
    tot = report.totals(m)
    assert tot["physical"] == phys == m["stats"]["crossbars"]["physical"]
    assert tot["dense"] == m["stats"]["crossbars"]["dense"] and tot["isaac"] == m["stats"]["crossbars"]["isaac"]
    s = _section(text, "summary")
    assert f"{phys:,}" in s and m["model"]["sha256"] in s and m["pipeline"] in s
    assert f"{tot['dense'] / phys:.2f}×" in s and f"{tot['isaac'] / phys:.2f}×" in s
    tiles = {c["tile"] for e in m["layers"] for c in e["crossbars"]}
    assert f"{len(tiles)} / {m['target']['tiles']}" in s
    need = max(e["adc_bits"]["max"] for e in m["layers"])
    assert f"{need} / {m['target']['adc_bits']}" in s
    # per-layer step counts come from stats.layers, physical from the bundle
    st = report.step_counts(m)
    by_id = {d["id"]: d for d in m["stats"]["layers"]}
    for i, e in enumerate(m["layers"]):
        assert st["physical"][i] == len(e["crossbars"]) == by_id[e["id"]]["physical"]
        assert st["dense"][i] == by_id[e["id"]]["dense"] and st["sliced"][i] == by_id[e["id"]]["sliced"]


def test_bit_density_matches_cells(work):
    """Heatmap counts: an independent per-column loop over the cells and the splice table, and the
    total equals the bundle's programmed-cell count of every layer."""
    b = read_bundle(work / "bundle")
    d = report.bit_density(b)
    cb = b.target["cell_bits"]
    for li, (lid, spec) in enumerate(b.layers.items()):
        p = spec.program
        want = np.zeros_like(d["counts"][li])
        for x in range(p.cells.shape[0]):
            for j in range(p.cells.shape[2]):
                if p.col_sign[x, j] != 0:
                    want[p.col_shift[x, j] // cb, 0 if p.col_sign[x, j] > 0 else 1] += np.count_nonzero(p.cells[x, :, j])
        assert np.array_equal(d["counts"][li], want), lid
        e = b.layer_entry(lid)
        assert d["counts"][li].sum() == sum(c["programmed_cells"] for c in e["crossbars"])
        assert d["possible"][li] == spec.groups * spec.rows * spec.cols
    assert d["signs"] == [1, -1]                      # sme splits signs
    assert d["n_planes"] == 8                         # 8-bit signed-digit weights in 1-bit cells


def test_tiles_and_adc_facts(work):
    b = read_bundle(work / "bundle")
    m = b.mapping
    tu = report.tile_usage(m)
    per_tile: dict[int, int] = {}
    for e in m["layers"]:
        for c in e["crossbars"]:
            per_tile[c["tile"]] = per_tile.get(c["tile"], 0) + 1
    assert {t: sum(n for _, n in v) for t, v in tu["tiles"].items()} == per_tile
    adc = report.adc_table(m)
    for i, e in enumerate(m["layers"]):
        cab = b.array(e["col_adc_bits"])[b.array(e["splice"])[..., 0] >= 0]
        for k, bits in enumerate(adc["bits"]):
            assert adc["hist"][i, k] == np.count_nonzero(cab == bits)
        assert adc["max"][i] == cab.max()


def test_sim_panel(page, sim_json):
    text = page.read_text(encoding="utf-8")
    s = _section(text, "sqnr")
    d = json.loads(sim_json.read_text())
    for lf in d["compare"]["layers"]:
        assert f"{lf['sqnr_db']:.2f}" in s, lf["layer_id"]
    assert f"{d['compare']['sqnr_db']:.1f} dB" in s
    assert f"{100 * d['compare']['top1_agreement']:.1f}%" in s


def test_sim_plain_format(work, tmp_path):
    b = read_bundle(work / "bundle")
    ids = list(b.layers)
    plain = {"layers": {ids[0]: {"sqnr_db": 41.25}, ids[-1]: {"sqnr_db": float("inf")},
                        "L999_other": {"sqnr_db": 3.0}},
             "output": {"sqnr_db": 30.5, "top1": 0.75}}
    p = tmp_path / "plain.json"
    p.write_text(json.dumps(plain))
    sim = report.load_sim(p)
    assert sim["layers"][ids[-1]]["sqnr_db"] == float("inf") and sim["layers"][ids[0]]["cosine"] is None
    assert sim["output"] == {"sqnr_db": 30.5, "cosine": None, "top1": 0.75}
    s = _section(report.build_report(b, sim=p), "sqnr")
    assert "41.25" in s and "30.5 dB" in s and "75.0%" in s and "<img" in s
    assert "L999_other" in s and "does not have" in s    # a layer the bundle lacks is named
    # the simulator's JSON without --compare: clipping per layer, no SQNR
    nocmp = {"conversions": 10, "layers": [{"layer": ids[0], "clipped_fraction": 0.25}], "samples": 1}
    p.write_text(json.dumps(nocmp))
    sim = report.load_sim(p)
    assert sim["layers"] == {ids[0]: {"sqnr_db": None, "cosine": None, "clipped_fraction": 0.25}}
    assert sim["format"] == "xbc simulate --json" and sim["output"] == {}


def test_missing_fields_are_labelled(work, tmp_path):
    text = report.build_report(work / "bare")
    for sid in report.SECTIONS:
        assert f'<section id="{sid}">' in text
    assert "Not in this bundle:</b> a placement" in _section(text, "tiles")
    assert "Not in this bundle:</b> ADC bits per column" in _section(text, "adc")
    assert "<img" not in _section(text, "tiles") and "<img" not in _section(text, "adc")
    assert "<img" in _section(text, "occupancy") and "<img" in _section(text, "bits")
    s = _section(text, "sqnr")   # no --sim: a labelled panel telling how to get one
    assert "No simulation result given" in s and "--compare --json" in s and "<img" not in s
    # stats without per-layer step counts (e.g. a bundle from another writer), and a simulation
    # result without per-layer SQNR
    b = read_bundle(work / "bundle")
    b.mapping["stats"] = {}
    p = tmp_path / "nocmp.json"
    p.write_text(json.dumps({"conversions": 10, "layers": [{"layer": list(b.layers)[0], "clipped_fraction": 0.0}]}))
    text = report.build_report(b, sim=p)
    assert "Not in this bundle:</b> the dense crossbar count" in text
    assert "Not in this bundle:</b> per-layer counts for ISAAC baseline, dense (no sparsity), sliced" in text
    assert "<img" in _section(text, "crossbars")  # the physical counts are always there
    s = _section(text, "sqnr")
    assert "no per-layer SQNR" in s and "<img" not in s


def test_layer_option_and_max_crossbars(page, work):
    b = read_bundle(work / "bundle")
    ids = list(b.layers)
    n = {i: b.layers[i].program.n_crossbars for i in ids}
    # default layer: the one with the most crossbars (first in graph order on a tie)
    most = max(ids, key=lambda i: (n[i], -ids.index(i)))
    s = _section(page.read_text(encoding="utf-8"), "occupancy")
    assert f"<b>{most}</b>" in s and s.count("<img") == min(n[most], report.DEFAULT_MAX_CROSSBARS)
    lid = next(i for i in ids if i != most and n[i] >= 2)
    s = _section(report.build_report(b, layer=lid, max_crossbars=1), "occupancy")
    assert f"<b>{lid}</b>" in s and s.count("<img") == 1
    assert f"{n[lid] - 1:,} more crossbars not shown" in s


# ----------------------------------------------------------------------------------------
# determinism
# ----------------------------------------------------------------------------------------

def test_deterministic_bytes(page, work, sim_json, tmp_path):
    # another process, another hash seed, the zip form of the same bundle: the same bytes
    out = tmp_path / "again.html"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    r = subprocess.run([sys.executable, "-m", "xbc.cli", "report", str(work / "bundle.xbc"), "-o", str(out),
                        "--sim", str(sim_json)], capture_output=True, text=True, env=env, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == page.read_bytes()
    # PNG bytes carry no timestamp or software chunk
    for _, png, _, _ in _images(page.read_text(encoding="utf-8")):
        chunks, pos = [], 8
        while pos < len(png):
            n = int.from_bytes(png[pos:pos + 4], "big")
            chunks.append(png[pos + 4:pos + 8])
            pos += 12 + n
        assert not {b"tEXt", b"iTXt", b"zTXt", b"tIME"} & set(chunks), chunks


def test_png_encoder_roundtrip():
    rgb = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 5 % 256).astype(np.uint8)
    png = plots.png_rgb(rgb)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), rgb)
    assert plots.png_size(png) == (7, 5)
    assert zlib.crc32(png[12:29]) & 0xFFFFFFFF == int.from_bytes(png[29:33], "big")  # IHDR CRC


# ----------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------

def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_errors(work, tmp_path, capsys):
    out = str(tmp_path / "r.html")
    junk = tmp_path / "junk.xbc"
    junk.write_bytes(b"not a zip at all")
    code, err = _run(["report", str(junk), "-o", out], capsys)
    assert code == 2 and err.startswith("error: bundle") and "zip" in err and len(err.strip().splitlines()) == 1
    code, err = _run(["report", str(tmp_path / "nowhere"), "-o", out], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    # corrupted arrays.bin
    bad = tmp_path / "bad"
    shutil.copytree(work / "bundle", bad)
    data = bytearray((bad / "arrays.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "arrays.bin").write_bytes(bytes(data))
    code, err = _run(["report", str(bad), "-o", out], capsys)
    assert code == 2 and "arrays.bin" in err and "sha256" in err and len(err.strip().splitlines()) == 1
    # unknown layer: the valid ids are listed
    code, err = _run(["report", str(work / "bundle"), "-o", out, "--layer", "L9_nope"], capsys)
    ids = list(read_bundle(work / "bundle").layers)
    assert code == 2 and "L9_nope" in err and all(i in err for i in ids) and len(err.strip().splitlines()) == 1
    # bad --sim files
    s = tmp_path / "s.json"
    s.write_text("{not json")
    code, err = _run(["report", str(work / "bundle"), "-o", out, "--sim", str(s)], capsys)
    assert code == 2 and "--sim" in err and "not valid JSON" in err
    s.write_text(json.dumps({"hello": 1}))
    code, err = _run(["report", str(work / "bundle"), "-o", out, "--sim", str(s)], capsys)
    assert code == 2 and "xbc simulate BUNDLE --compare --json" in err
    code, err = _run(["report", str(work / "bundle"), "-o", str(tmp_path / "no" / "dir.html")], capsys)
    assert code == 2 and "does not exist" in err
    assert not Path(out).exists()       # nothing written on any error


# ----------------------------------------------------------------------------------------
# a real browser
# ----------------------------------------------------------------------------------------

def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    pytest.fail("headless Chromium is needed to check that the report renders: install it with "
                "'sudo apt-get install chromium' (Debian/Ubuntu; .ci/run does this on CI) and rerun")


def _chrome(tmp: Path, url_file: Path, *extra: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    ud = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={ud}", *extra, url_file.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    return r


def _screenshot(tmp: Path, html: Path, name: str) -> np.ndarray:
    shot = tmp / f"{name}.png"
    _chrome(tmp, html, f"--screenshot={shot}", "--window-size=1280,4000")
    assert shot.is_file(), f"Chromium wrote no screenshot for {html}"
    return np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)


def test_renders_in_chromium(page, tmp_path):
    text = page.read_text(encoding="utf-8")
    imgs = _images(text)
    # 1. every <img> decoded by the browser, at the PNG's own size (a script in a probe copy only)
    probe = tmp_path / "probe.html"
    js = ('<script>window.addEventListener("load",()=>{document.body.setAttribute("data-probe",JSON.stringify('
          'Array.from(document.images).map(i=>[i.complete,i.naturalWidth,i.naturalHeight])));});</script>')
    probe.write_text(text.replace("</body>", js + "</body>"), encoding="utf-8")
    dom = _chrome(tmp_path, probe, "--dump-dom").stdout.decode("utf-8", "replace")
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, "the page did not finish loading in Chromium"
    got = json.loads(m.group(1).replace("&quot;", '"'))
    assert got == [[True, w, h] for _, _, w, h in imgs]
    # 2. the images are painted: the same page with every image replaced by a blank one of the
    # same size (identical layout) looks substantially different
    blank = "data:image/png;base64," + base64.b64encode(plots.png_rgb(np.full((1, 1, 3), 255, np.uint8))).decode()
    noimg = tmp_path / "noimg.html"
    noimg.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', f'src="{blank}"', text), encoding="utf-8")
    a = _screenshot(tmp_path, page, "page")
    b = _screenshot(tmp_path, noimg, "noimg")
    assert a.shape == b.shape == (4000, 1280, 3)
    nonwhite = np.mean(np.any(a < 235, axis=-1))
    assert nonwhite > 0.10, f"screenshot nearly blank ({100 * nonwhite:.1f}% non-white pixels)"
    q = a // 16
    colors = np.count_nonzero(np.bincount((q[..., 0] * 256 + q[..., 1] * 16 + q[..., 2]).ravel(), minlength=4096))
    assert colors > 100, f"only {colors} distinct colors: charts did not render"
    differ = np.mean(np.any(np.abs(a - b) > 24, axis=-1))
    assert differ > 0.05, f"only {100 * differ:.2f}% of the pixels change when the images are blanked"
    # the text (outside the images) renders identically, so the layout did not move
    assert np.array_equal(a[:60], b[:60])

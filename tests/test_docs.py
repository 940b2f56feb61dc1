"""The documentation that is generated from code is up to date."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_passes_md_matches_the_registry():
    spec = importlib.util.spec_from_file_location("gen_pass_docs", ROOT / "examples" / "gen_pass_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        mod.main()
    assert buf.getvalue() == (ROOT / "docs" / "passes.md").read_text(), \
        "docs/passes.md is stale: run python examples/gen_pass_docs.py > docs/passes.md"


def test_every_target_pipeline_is_documented():
    from xbc import targets

    text = (ROOT / "docs" / "targets.md").read_text()
    for name in ("isaac", "sme", "bitslice", "mars"):
        assert f"`{targets.load(name).pipeline}`" in text, name

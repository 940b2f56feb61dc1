"""Pass manager: pipeline strings (parse/print), option errors, the verifier between passes,
failure messages, --print-after and --no-verify (API and CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import onnx
import pytest

from graphs import tiny_cnn
from xbc.cli import main
from xbc.errors import OptionError, PassError
from xbc.frontend import load_model
from xbc.passmanager import REGISTRY, Pass, PassContext, PassManager, PassResult, parse_pipeline, pipeline_spec, \
    register, registry
from xbc.targets import load as load_target


def _register(cls):
    """Register a test-only pass (idempotent when the module is imported twice)."""
    return REGISTRY[cls.name] if cls.name in REGISTRY else register(cls)


@dataclass(frozen=True)
class _Opts(Pass):
    name: ClassVar[str] = "test-opts"
    summary: ClassVar[str] = "test only: every option type, does nothing"
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    mode: Literal["fast", "exact"] = "fast"
    taps: tuple[int, ...] = (1, 2)
    limit: int | None = 5
    label: str = "x"

    def run(self, graph, ctx):
        return PassResult(changed=False)


@dataclass(frozen=True)
class _BreakUses(Pass):
    """Corrupts a use list: appends an input to a node behind the IR's back."""

    name: ClassVar[str] = "test-break-uses"
    summary: ClassVar[str] = "test only: breaks the IR"

    def run(self, graph, ctx):
        node = next(graph.layers())
        node.inputs.append(graph.inputs[0])
        return PassResult(changed=True)


@dataclass(frozen=True)
class _Fail(Pass):
    name: ClassVar[str] = "test-fail"
    summary: ClassVar[str] = "test only: raises at the second crossbar layer"

    def run(self, graph, ctx):
        for i, node in enumerate(ctx.each_layer(graph)):
            if i == 1:
                raise ValueError("boom")
        return PassResult(changed=False)


@dataclass(frozen=True)
class _Count(Pass):
    name: ClassVar[str] = "test-count"
    summary: ClassVar[str] = "test only: records that it ran"

    def run(self, graph, ctx):
        ctx.extra.setdefault("ran", []).append(self.name)
        return PassResult(changed=False, stats={"nodes": len(graph.nodes)})


Opts, BreakUses, Fail, Count = (_register(c) for c in (_Opts, _BreakUses, _Fail, _Count))


@pytest.fixture()
def graph():
    return load_model(tiny_cnn())


@pytest.fixture()
def ctx():
    return PassContext(target=load_target("sme"))


CANONICAL = [
    "cleanup",
    "cleanup{fold-limit=100}",
    "cleanup{fold-limit=100,max-rounds=2}",
    "test-opts",
    "test-opts{count=3,ratio=0.25,flag=true,mode=exact,taps=1:2:3,limit=7,label=abc}",
    "test-opts{limit=none},cleanup{max-rounds=1},test-opts{ratio=2}",
    "test-opts{ratio=1e-06,taps=4}",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_pipeline_prints_back_identically(text):
    passes = parse_pipeline(text)
    assert pipeline_spec(passes) == text
    assert pipeline_spec(parse_pipeline(pipeline_spec(passes))) == text
    assert PassManager(text).spec == text


def test_pipeline_normalizes_to_canonical():
    p = parse_pipeline(" test-opts { label = abc , count = 3 } , cleanup{fold-limit=10000000}, test-opts{ratio=2.0,count=1}")
    assert pipeline_spec(p) == "test-opts{count=3,label=abc},cleanup,test-opts{ratio=2}"
    opts = p[0]
    assert isinstance(opts, Opts) and opts.count == 3 and opts.label == "abc" and opts.taps == (1, 2)
    assert parse_pipeline("test-opts{taps=8:16,flag=yes,limit=none}")[0] == Opts(taps=(8, 16), flag=True, limit=None)
    assert parse_pipeline("") == []


@pytest.mark.parametrize("text, match", [
    ("cleanup,,cleanup", r"malformed pipeline at character 9"),
    ("cleanup{fold-limit=1", r"malformed pipeline at character 1: 'cleanup\{fold-limit=1'"),
    ("cleanup,", r"trailing ','"),
    ("cleanup cleanup", r"malformed pipeline"),
    ("no-such-pass", r"unknown pass 'no-such-pass' in pipeline; known passes: .*cleanup"),
    ("cleanup{bogus=1}", r"pass 'cleanup' has no option 'bogus'; its options: fold-limit, max-rounds"),
    ("cleanup{fold-limit}", r"pass 'cleanup': option 'fold-limit' needs a value"),
    ("cleanup{fold-limit=abc}", r"pass 'cleanup': option 'fold-limit' expects int, got 'abc'"),
    ("cleanup{fold-limit=-1}", r"pass 'cleanup': fold-limit must be >= 0"),
    ("test-opts{mode=slow}", r"option 'mode' is 'slow'; allowed: fast, exact"),
    ("test-opts{flag=maybe}", r"option 'flag' expects bool, got 'maybe'"),
    ("test-opts{ratio=half}", r"option 'ratio' expects float, got 'half'"),
    ("test-opts{taps=1:x}", r"option 'taps' expects int, got 'x'"),
])
def test_bad_pipelines_name_the_problem(text, match):
    with pytest.raises(OptionError, match=match):
        parse_pipeline(text)


def test_every_registered_pass_is_a_frozen_dataclass_with_a_summary():
    reg = registry()
    assert "cleanup" in reg
    for name, cls in reg.items():
        assert cls.name == name and cls.summary, name
        assert pipeline_spec([cls()]) == name  # defaults print as the bare name


def test_passes_run_in_order_with_stats_and_timings(graph, ctx):
    pm = PassManager("test-count,cleanup,test-count")
    results = pm.run(graph, ctx)
    assert len(results) == 3 and ctx.extra["ran"] == ["test-count", "test-count"]
    assert ctx.stats["test-count"] == {"nodes": len(graph.nodes)}
    assert set(ctx.timings) == {"test-count", "cleanup"}


def test_verifier_catches_a_broken_pass(graph, ctx):
    with pytest.raises(PassError) as e:
        PassManager("cleanup,test-break-uses,test-count").run(graph, ctx)
    msg = str(e.value)
    assert "verifier failed after pass 'test-break-uses'" in msg
    assert "use list of 'x' misses input 3 of node 'conv1'" in msg
    assert "(passes run: cleanup, test-break-uses)" in msg
    assert "ran" not in ctx.extra                # the pass after it never ran
    assert e.value.exit_code == 1


def test_no_verify_skips_the_verifier(graph, ctx):
    PassManager("cleanup,test-break-uses,test-count", verify=False).run(graph, ctx)
    assert ctx.extra["ran"] == ["test-count"]


def test_verifier_runs_on_the_frontend_output(graph, ctx):
    graph.nodes[0].outputs[0].shape = None
    with pytest.raises(PassError, match=r"verifier failed after the frontend: output '\w+' of node 'conv1'.*no concrete shape"):
        PassManager("test-count").run(graph, ctx)


def test_failure_names_pass_node_and_previous_passes(graph, ctx):
    with pytest.raises(PassError) as e:
        PassManager("cleanup,test-count,test-fail").run(graph, ctx)
    assert str(e.value) == ("pass 'test-fail' failed at node 'dw2' (Conv): ValueError: boom; "
                            "passes before it: cleanup, test-count")
    with pytest.raises(PassError, match=r"pass 'test-fail' failed at node 'dw2' \(Conv\): ValueError: boom; "
                                        r"it was the first pass"):
        PassManager("test-fail").run(graph, ctx)


def test_print_after(graph, ctx):
    printed: list[str] = []
    PassManager("test-opts{count=2},cleanup,test-count", print_after=["cleanup"], print_fn=printed.append).run(graph, ctx)
    assert len(printed) == 1
    assert printed[0].startswith("// ----- IR after cleanup -----\ngraph tiny_cnn(%x: float[1x3x16x16]) {")
    assert "# layer L000_conv1 conv G=1 27x16" in printed[0]
    printed.clear()
    PassManager("test-opts{count=2},cleanup", print_after=["all"], print_fn=printed.append).run(graph, ctx)
    assert [p.splitlines()[0] for p in printed] == ["// ----- IR after test-opts{count=2} -----",
                                                     "// ----- IR after cleanup -----"]
    with pytest.raises(OptionError, match="--print-after: unknown pass 'nope'"):
        PassManager("cleanup", print_after=["nope"])


def test_cli_print_after_and_no_verify(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), str(path))
    args = ["compile", str(path), "-q", "-p", "cleanup,test-break-uses,test-fail", "--print-after", "cleanup"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "// ----- IR after cleanup -----" in err and "graph tiny_cnn" in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: verifier failed after pass 'test-break-uses': use list of 'x' misses input 3 of node "
                      "'conv1' (passes run: cleanup, test-break-uses)"]
    assert main(args + ["--no-verify"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: pass 'test-fail' failed at node 'dw2' (Conv): ValueError: boom; passes before it: "
                      "cleanup, test-break-uses"]
    assert "Traceback" not in err


def test_pass_options_reach_the_pass(graph, ctx):
    (p,) = parse_pipeline("cleanup{fold-limit=0,max-rounds=1}")
    assert (p.fold_limit, p.max_rounds) == (0, 1)
    res = p.run(graph, ctx)
    assert res.stats["rounds"] == 1 and not res.changed

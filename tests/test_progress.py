"""xbc.progress: output on a terminal only, rate limited, erased on close."""

from __future__ import annotations

import io

import pytest

from xbc.progress import Progress, is_terminal


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("XBC_NO_PROGRESS", raising=False)


def test_tty_gets_bar_and_close_erases():
    s = FakeTTY()
    p = Progress(True, s)
    assert p.enabled
    p.update("squeeze", 3, 10)
    out = s.getvalue()
    assert out.startswith("\rsqueeze")
    assert "[#######.................]" in out   # 24 * 3/10 = 7 filled
    assert " 3/10" in out
    p.close()
    tail = s.getvalue()[len(out):]
    assert tail.startswith("\r") and tail.endswith("\r") and tail.strip() == ""
    # erasing covers exactly the drawn line
    assert len(tail) == len(out) + 1  # "\r" + line  vs  "\r" + spaces + "\r"
    p.close()
    assert s.getvalue() == out + tail          # second close writes nothing


def test_non_tty_and_quiet_and_env_get_nothing(monkeypatch):
    plain = io.StringIO()
    p = Progress(True, plain)
    assert not p.enabled
    p.update("quantize", 1, 2)
    p.message("building")
    list(p.track(range(5), "x"))
    p.close()
    assert plain.getvalue() == ""

    quiet = FakeTTY()
    q = Progress(False, quiet)
    q.update("quantize", 1, 2)
    q.message("hello")
    q.close()
    assert quiet.getvalue() == ""

    monkeypatch.setenv("XBC_NO_PROGRESS", "1")
    e = FakeTTY()
    r = Progress(True, e)
    r.update("quantize", 1, 2)
    assert e.getvalue() == "" and not r.enabled


def test_rate_limit_but_stage_changes_and_completion_always_drawn():
    s = FakeTTY()
    clk = Clock()
    p = Progress(True, s, interval=0.5, clock=clk)
    p.update("a", 0, 100)
    n0 = s.getvalue().count("\r")
    for i in range(1, 50):                   # same instant: rate-limited
        p.update("a", i, 100)
    assert s.getvalue().count("\r") == n0
    clk.t += 0.6
    p.update("a", 60, 100)                   # interval passed: drawn
    assert s.getvalue().count("\r") == n0 + 1
    p.update("b", 0, 3)                      # new stage: drawn even at the same instant
    assert s.getvalue().rstrip().endswith("0/3  0.0s")
    p.update("b", 3, 3)                      # completion: drawn
    assert "[########################] 3/3" in s.getvalue()
    clk.t += 2.0
    p.update("b", 3, 3)
    assert s.getvalue().rstrip().endswith("3/3  2.0s")


def test_shorter_line_overwrites_longer_and_message():
    s = FakeTTY()
    p = Progress(True, s)
    p.message("building resnet50 (this takes a while)")
    first = s.getvalue()
    p.message("ok")
    second = s.getvalue()[len(first):]
    assert second == "\rok" + " " * (len(first) - 1 - 2)


def test_context_manager_and_track():
    s = FakeTTY()
    with Progress(True, s) as p:
        assert list(p.track([10, 20, 30], "items")) == [10, 20, 30]
        assert "3/3" in s.getvalue()
    assert s.getvalue().endswith("\r") and s.getvalue().split("\r")[-2].strip() == ""


def test_zero_total_and_closed_stream():
    s = FakeTTY()
    p = Progress(True, s)
    p.update("empty", 0, 0)
    assert "[########################] 0/0" in s.getvalue()
    s.close()
    p.update("other", 1, 2)                  # writing to a closed stream never raises
    assert not p.enabled
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)           # isatty() raises ValueError on a closed stream
    assert not is_terminal(object())


def test_passcontext_signature():
    """update() plugs into PassContext.progress: a pass walking layers draws its stage."""
    import sys
    from dataclasses import dataclass
    from typing import ClassVar

    sys.path.insert(0, "tests")
    from graphs import tiny_cnn
    from xbc.frontend import load_model
    from xbc.passmanager import Pass, PassContext, PassManager, PassResult
    from xbc.targets import load

    @dataclass(frozen=True)
    class Walk(Pass):  # not registered: run by instance
        name: ClassVar[str] = "walk-layers"

        def run(self, graph, ctx):
            for _ in ctx.each_layer(graph):
                pass
            return PassResult(changed=False)

    s = FakeTTY()
    graph = load_model(tiny_cnn())
    n = len(list(graph.layers()))
    with Progress(True, s) as p:
        PassManager([Walk()]).run(graph, PassContext(target=load("sme"), progress=p.update))
    out = s.getvalue()
    assert "\rwalk-layers" in out and f"{n}/{n}" in out and f"0/{n}" in out

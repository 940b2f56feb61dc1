"""Passes, the pass registry, pipeline strings, and the pass manager.

A pass is a frozen dataclass whose fields are its options, registered under a kebab-case name::

    @register
    @dataclass(frozen=True)
    class Quantize(Pass):
        name: ClassVar[str] = "quantize"
        weight_bits: int | None = None     # option "weight-bits"
        def run(self, graph, ctx) -> PassResult: ...

Pipelines are strings ``a,b{opt=1,other=x},c``: option names are the kebab-case field names,
values are parsed by the field's type (``none`` for an optional option left to the target).
:func:`pipeline_spec` prints a pipeline back; printing a parsed canonical string gives it
back identically (options that differ from their defaults, in field order).

:class:`PassManager` runs passes in order, runs the verifier between passes (unless
``verify=False``), times them, prints the IR after chosen passes, and turns any failure into a
:class:`~xbc.errors.PassError` that names the pass, the node being processed (``ctx.node``) and
the passes that ran before it.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from .errors import OptionError, PassError, XbcError
from .ir import Graph, Node, verify
from .targets import Target


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Diagnostic:
    level: str     # "info" | "warning"
    pass_name: str
    node: str | None
    message: str

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.level}: {self.pass_name}{where}: {self.message}"


@dataclass
class PassContext:
    """What a pass may read besides its options: target, calibration data, diagnostics."""

    target: Target
    calibration: dict[str, np.ndarray] | None = None
    seed: int = 0
    quiet: bool = False
    diagnostics: list[Diagnostic] = field(default_factory=list)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None
    node: Node | None = None          # the node a pass is working on (for error messages)
    current_pass: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str, node: Node | None = None) -> None:
        self.diagnostics.append(Diagnostic("warning", self.current_pass,
                                           getattr(node or self.node, "name", None), message))

    def info(self, message: str, node: Node | None = None) -> None:
        self.diagnostics.append(Diagnostic("info", self.current_pass,
                                           getattr(node or self.node, "name", None), message))

    def each_layer(self, graph: Graph) -> Iterator[Node]:
        """Iterate crossbar layer nodes, keeping ``ctx.node`` set for error messages and
        reporting progress."""
        layers = list(graph.layers())
        for i, node in enumerate(layers):
            self.node = node
            if self.progress is not None:
                self.progress(self.current_pass, i, len(layers))
            yield node
        self.node = None
        if self.progress is not None and layers:
            self.progress(self.current_pass, len(layers), len(layers))


class Pass:
    """Base class; subclasses are frozen dataclasses registered with :func:`register`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def spec(self) -> str:
        opts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if default is dataclasses.MISSING or v != default:
                opts.append(f"{kebab(f.name)}={format_option(v)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"pass {cls.__name__} must be a frozen dataclass")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", cls.name or ""):
        raise TypeError(f"pass {cls.__name__} needs a kebab-case name, got {cls.name!r}")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"pass name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Pass]]:
    import xbc.passes  # noqa: F401  (registers the built-in passes)
    return REGISTRY


def kebab(name: str) -> str:
    return name.replace("_", "-")


def format_option(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    if isinstance(v, tuple):
        return ":".join(format_option(x) for x in v)
    return str(v)


def _parse_option(pass_name: str, opt: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if text.strip().lower() == "none":
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if origin is typing.Literal:
            if text not in args:
                raise OptionError(f"pass {pass_name!r}: option {opt!r} is {text!r}; allowed: {', '.join(map(str, args))}")
            return text
        if origin is tuple:
            inner = args[0]
            return tuple(_parse_option(pass_name, opt, t, inner) for t in text.split(":") if t)
    except ValueError:
        pass
    else:
        raise OptionError(f"pass {pass_name!r}: option {opt!r} has unsupported type {tp}")
    name = getattr(tp, "__name__", str(tp))
    raise OptionError(f"pass {pass_name!r}: option {opt!r} expects {name}, got {text!r}")


_PIPE_RE = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(\{[^{}]*\})?\s*(,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """Parse ``a,b{opt=1},c`` into pass instances; errors name the pass or option."""
    reg = registry()
    passes: list[Pass] = []
    text = text.strip()
    if not text:
        return passes
    pos = 0
    while pos < len(text):
        m = _PIPE_RE.match(text, pos)
        if not m or m.end() == pos:
            raise OptionError(f"malformed pipeline at character {pos + 1}: {text[pos:pos + 30]!r}; "
                              f"expected 'pass' or 'pass{{option=value,...}}' separated by commas")
        name, body, sep = m.group(1), m.group(2), m.group(3)
        if name not in reg:
            raise OptionError(f"unknown pass {name!r} in pipeline; known passes: {', '.join(sorted(reg))}")
        cls = reg[name]
        hints = typing.get_type_hints(cls)
        fields = {kebab(f.name): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        if body:
            inner = body[1:-1].strip()
            for item in [s for s in inner.split(",") if s.strip()] if inner else []:
                if "=" not in item:
                    raise OptionError(f"pass {name!r}: option {item.strip()!r} needs a value (option=value)")
                k, v = (s.strip() for s in item.split("=", 1))
                if k not in fields:
                    known = ", ".join(fields) or "none"
                    raise OptionError(f"pass {name!r} has no option {k!r}; its options: {known}")
                kwargs[fields[k].name] = _parse_option(name, k, v, hints[fields[k].name])
        try:
            passes.append(cls(**kwargs))
        except (TypeError, ValueError) as e:
            raise OptionError(f"pass {name!r}: {e}") from None
        pos = m.end()
        if sep == "" and pos < len(text):
            raise OptionError(f"malformed pipeline at character {pos + 1}: expected ','")
        if sep == "," and pos >= len(text):
            raise OptionError("malformed pipeline: trailing ','")
    return passes


def pipeline_spec(passes: list[Pass]) -> str:
    return ",".join(p.spec() for p in passes)


class PassManager:
    """Runs a pipeline with the verifier between passes."""

    def __init__(self, passes: list[Pass] | str, *, verify: bool = True,
                 print_after: tuple[str, ...] | list[str] = (), print_fn: Callable[[str], None] | None = None):
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.verify = verify
        self.print_after = set(print_after)
        unknown = self.print_after - set(registry()) - {"all"}
        if unknown:
            raise OptionError(f"--print-after: unknown pass {sorted(unknown)[0]!r}")
        self.print_fn = print_fn or (lambda s: print(s, file=sys.stderr))

    @property
    def spec(self) -> str:
        return pipeline_spec(self.passes)

    def run(self, graph: Graph, ctx: PassContext) -> list[PassResult]:
        results = []
        done: list[str] = []
        if self.verify:
            self._verify(graph, "the frontend", done)
        for p in self.passes:
            ctx.current_pass = p.name
            ctx.node = None
            t0 = time.perf_counter()
            try:
                res = p.run(graph, ctx)
            except Exception as e:  # noqa: BLE001 - re-raised with context
                raise self._wrap(e, p.name, ctx, done) from e
            ctx.timings[p.name] = ctx.timings.get(p.name, 0.0) + time.perf_counter() - t0
            if res.stats:
                ctx.stats[p.name] = res.stats
            results.append(res)
            done.append(p.name)
            if self.verify:
                self._verify(graph, f"pass {p.name!r}", done)
            if p.name in self.print_after or "all" in self.print_after:
                self.print_fn(f"// ----- IR after {p.spec()} -----\n{graph.dump()}")
        ctx.current_pass = ""
        return results

    def _verify(self, graph: Graph, after: str, done: list[str]) -> None:
        try:
            verify(graph)
        except XbcError as e:
            raise PassError(f"verifier failed after {after}: {e}"
                            + (f" (passes run: {', '.join(done)})" if done else "")) from e

    @staticmethod
    def _wrap(e: Exception, name: str, ctx: PassContext, done: list[str]) -> PassError:
        node = f" at node {ctx.node.name!r} ({ctx.node.op_type})" if ctx.node is not None else ""
        before = f"; passes before it: {', '.join(done)}" if done else "; it was the first pass"
        msg = str(e) if isinstance(e, XbcError) else f"{type(e).__name__}: {e}"
        err = PassError(f"pass {name!r} failed{node}: {msg}{before}")
        if isinstance(e, XbcError):
            err.exit_code = e.exit_code
        return err

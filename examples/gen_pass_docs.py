"""Regenerate docs/passes.md from the pass registry (names, options, defaults, docstrings).

Run: python examples/gen_pass_docs.py > docs/passes.md
"""

import dataclasses
import inspect
import sys

from xbc.passmanager import format_option, kebab, registry


def main() -> None:
    out = ["# Passes", "",
           "Generated from the pass registry by `examples/gen_pass_docs.py`; `xbc passes` prints the same",
           "options. A pipeline is a string such as",
           "`fold-batchnorm,quantize{weight-bits=8},orchestrate-bits{error-budget=0.5},slice-bits,squeeze`;",
           "options are the kebab-case field names, `none` leaves an option to the target.", ""]
    reg = registry()
    order = ["cleanup", "fold-batchnorm", "quantize", "orchestrate-bits", "reorder", "cim-sparsity", "bias-correct",
             "slice-bits", "squeeze", "adc-size", "place", "estimate"]
    reg = {n: c for n, c in reg.items() if c.__module__.startswith("xbc.passes.")}   # xbc's own passes only
    names = [n for n in order if n in reg] + sorted(set(reg) - set(order))
    out.append("| pass | summary |")
    out.append("|---|---|")
    for n in names:
        out.append(f"| [`{n}`](#{n}) | {reg[n].summary} |")
    out.append("")
    for n in names:
        cls = reg[n]
        out.append(f"## {n}")
        out.append("")
        out.append(f"Class `{cls.__module__}.{cls.__name__}`.")
        out.append("")
        fields = dataclasses.fields(cls)
        if fields:
            out.append("| option | default |")
            out.append("|---|---|")
            for f in fields:
                d = f.default if f.default is not dataclasses.MISSING else None
                out.append(f"| `{kebab(f.name)}` | `{format_option(d)}` |")
            out.append("")
        mod = sys.modules[cls.__module__]
        doc = inspect.getdoc(mod) or ""
        cdoc = inspect.getdoc(cls) or ""
        for text in (doc, cdoc if cdoc != doc else ""):
            if text:
                out.append(text)
                out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()

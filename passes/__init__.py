"""xbc's passes, one per file; importing this package registers them all.

See ``xbc passes`` for the list with options, and DESIGN.md's Passes table for what each does.
"""

from importlib import import_module

PASS_MODULES = (
    "cleanup",
    "fold_batchnorm",
    "quantize",
    "orchestrate_bits",
    "reorder",
    "cim_sparsity",
    "bias_correct",
    "slice_bits",
    "squeeze",
    "adc_size",
    "place",
    "estimate",
)

for _m in PASS_MODULES:
    import_module(f"{__name__}.{_m}")

"""Targets as data: TOML files in ``xbc/targets/`` loaded into a frozen :class:`Target`.

Every key is declared once in :data:`KEYS` with its type, unit, allowed range and meaning; the
docs table (``xbc targets --keys``) is generated from it. Unknown keys and out-of-range values
are errors naming the key and the file. ``--set key=value`` overrides a key after loading
(``cost.e_adc_pj=2.5`` reaches into the ``[cost]`` table). The resolved target is hashed
(sha256 of its canonical JSON) and recorded in the bundle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore

from .errors import OptionError


@dataclass(frozen=True)
class Key:
    type: type
    unit: str
    range: tuple | None  # (lo, hi) for numbers, tuple of choices for strings
    doc: str


KEYS: dict[str, Key] = {
    "name": Key(str, "", None, "Target name, as given to --target."),
    "description": Key(str, "", None, "One line describing the hardware the target models."),
    "technology": Key(str, "", ("reram", "sram"), "Cell technology (ReRAM crossbar or SRAM CIM macro)."),
    "rows": Key(int, "word lines", (2, 4096), "Rows (inputs) of one physical crossbar / macro, R."),
    "cols": Key(int, "bit lines", (2, 4096), "Columns (outputs) of one physical crossbar / macro, C."),
    "cell_bits": Key(int, "bits", (1, 4), "Bits stored per cell; a weight is sliced into planes of this many bits."),
    "weight_bits": Key(int, "bits", (2, 16), "Signed weight precision after quantization (symmetric, |w| <= 2^(b-1)-1)."),
    "input_bits": Key(int, "bits", (1, 16), "Unsigned precision of crossbar inputs (activations) after quantization."),
    "dac_bits": Key(int, "bits", (1, 8), "Input bits applied per cycle (bit-serial when 1); input_bits/dac_bits cycles per input."),
    "adc_bits": Key(int, "bits", (1, 16), "Resolution of the column ADCs; a column sum above 2^adc_bits-1 saturates."),
    "weight_encoding": Key(str, "", ("split", "offset"), "'split': positive and negative digits in separate column sets; 'offset': w+2^(b-1) stored unsigned, offset subtracted digitally (ISAAC)."),
    "signed_digits": Key(bool, "", None, "Allow signed-digit (CSD) recoding of weights (needs split encoding)."),
    "per_channel": Key(bool, "", None, "Quantize weights with one scale per output channel (else per tensor)."),
    "pow2_scale": Key(bool, "", None, "Round weight scales to powers of two (shift-only requantization)."),
    "rows_active": Key(int, "word lines", (1, 4096), "Word lines that may be on at once; a column is read in ceil(rows/rows_active) conversions."),
    "partitions": Key(int, "", (1, 64), "Column partitions per crossbar/macro, each with its own ADC set (SRAM CIM)."),
    "crossbars_per_tile": Key(int, "crossbars", (1, 65536), "Crossbars (macros) in one tile (core); the placement capacity."),
    "adcs_per_tile": Key(int, "ADCs", (1, 1 << 20), "ADCs in one tile; each crossbar column set shares them (placement resource)."),
    "tiles": Key(int, "tiles", (1, 1 << 20), "Tiles (cores) on the chip."),
    "mesh_cols": Key(int, "tiles", (1, 4096), "Width of the tile mesh; tile t sits at (t // mesh_cols, t % mesh_cols)."),
    "pipeline": Key(str, "", None, "Default pass pipeline for this target (a pipeline string)."),
    "cost": Key(dict, "", None, "Per-event energy (pJ), area (mm^2) and latency (ns) constants used by 'estimate'; see the [cost] keys."),
    "sources": Key(dict, "", None, "Where the numbers come from: key -> citation."),
}

COST_KEYS: dict[str, Key] = {
    "e_cell_pj": Key(float, "pJ", (0.0, 1e6), "Energy of one cell read (one row x one column, one cycle)."),
    "e_dac_pj": Key(float, "pJ", (0.0, 1e6), "Energy of one DAC (row driver) activation."),
    "e_adc_pj_8b": Key(float, "pJ", (0.0, 1e6), "Energy of one 8-bit ADC conversion; other resolutions scale by 2^(bits-8)."),
    "e_digital_op_pj": Key(float, "pJ", (0.0, 1e6), "Energy of one digital add/shift/multiply in the periphery or host."),
    "area_xbar_mm2": Key(float, "mm^2", (0.0, 1e6), "Area of one crossbar with its drivers."),
    "area_adc_mm2_8b": Key(float, "mm^2", (0.0, 1e6), "Area of one 8-bit ADC; other resolutions scale by 2^(bits-8)."),
    "t_cycle_ns": Key(float, "ns", (0.0, 1e9), "Latency of one crossbar activation cycle (DAC, column sum, ADC)."),
}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    technology: str
    rows: int
    cols: int
    cell_bits: int
    weight_bits: int
    input_bits: int
    dac_bits: int
    adc_bits: int
    weight_encoding: str
    signed_digits: bool
    per_channel: bool
    pow2_scale: bool
    rows_active: int
    partitions: int
    crossbars_per_tile: int
    adcs_per_tile: int
    tiles: int
    mesh_cols: int
    pipeline: str
    cost: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def capacity(self) -> int:
        return self.crossbars_per_tile * self.tiles

    def replace(self, **kw) -> "Target":
        return validate(dataclasses.replace(self, **kw).to_dict(), f"target {self.name!r}")

    @property
    def dac_cycles(self) -> int:
        return math.ceil(self.input_bits / self.dac_bits)


def target_dir() -> Path:
    return Path(str(resources.files("xbc") / "targets"))


def available() -> list[str]:
    return sorted(p.stem for p in target_dir().glob("*.toml"))


def _check(key: str, value: Any, spec: Key, where: str) -> Any:
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.type is int and isinstance(value, bool):
        raise OptionError(f"{where}: key {key!r} must be an integer, got {value!r}")
    if not isinstance(value, spec.type):
        raise OptionError(f"{where}: key {key!r} must be {spec.type.__name__}, got {value!r}")
    if spec.range is not None:
        if spec.type is str:
            if value not in spec.range:
                raise OptionError(f"{where}: key {key!r} is {value!r}; allowed: {', '.join(spec.range)}")
        else:
            lo, hi = spec.range
            if not (lo <= value <= hi):
                raise OptionError(f"{where}: key {key!r} = {value} is out of range [{lo}, {hi}] {spec.unit}".rstrip())
    return value


def validate(data: dict[str, Any], where: str) -> Target:
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise OptionError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"known keys: {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in data and k not in ("cost", "sources")]
    if missing:
        raise OptionError(f"{where}: missing key(s) {', '.join(missing)}")
    clean = {k: _check(k, v, KEYS[k], where) for k, v in data.items()}
    cost = dict(clean.get("cost", {}))
    for k, v in cost.items():
        if k not in COST_KEYS:
            raise OptionError(f"{where}: unknown key 'cost.{k}'; known: {', '.join(COST_KEYS)}")
        cost[k] = _check(f"cost.{k}", v, COST_KEYS[k], where)
    clean["cost"] = dict(sorted(cost.items()))
    clean["sources"] = dict(sorted(clean.get("sources", {}).items()))
    t = Target(**clean)
    if t.rows_active > t.rows:
        raise OptionError(f"{where}: rows_active = {t.rows_active} exceeds rows = {t.rows}")
    if t.weight_encoding == "offset" and t.signed_digits:
        raise OptionError(f"{where}: signed_digits needs weight_encoding = 'split'")
    if t.cols % t.partitions:
        raise OptionError(f"{where}: cols = {t.cols} is not a multiple of partitions = {t.partitions}")
    return t


def _parse_value(key: str, text: str, spec: Key) -> Any:
    if spec.type is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OptionError(f"--set {key}={text}: expected true or false")
    if spec.type in (int, float):
        try:
            return spec.type(text)
        except ValueError:
            raise OptionError(f"--set {key}={text}: expected a number ({spec.type.__name__})") from None
    if spec.type is dict:
        raise OptionError(f"--set {key}=...: set the table's entries one by one, e.g. {key}.NAME=VALUE")
    return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    data = dict(data)
    data["cost"] = dict(data.get("cost", {}))
    for item in overrides:
        if "=" not in item:
            raise OptionError(f"--set {item!r}: expected KEY=VALUE, e.g. --set rows=256")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("cost."):
            sub = key[5:]
            if sub not in COST_KEYS:
                raise OptionError(f"--set {key}: unknown cost key; known: {', '.join(COST_KEYS)}")
            data["cost"][sub] = _parse_value(key, text, COST_KEYS[sub])
        elif key in KEYS:
            data[key] = _parse_value(key, text, KEYS[key])
        else:
            raise OptionError(f"--set {key}: unknown target key; known keys: {', '.join(KEYS)}")
    return data


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Target:
    """Load a target by name (``sme``) or from a TOML file path, then apply ``--set`` overrides."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        where = str(path)
    elif path.suffix == ".toml":
        raise OptionError(f"target file {name_or_path!r} does not exist; built-in targets: {', '.join(available())}")
    else:
        path = target_dir() / f"{name_or_path}.toml"
        where = f"target {name_or_path!r}"
        if not path.exists():
            raise OptionError(f"unknown target {name_or_path!r}; available: {', '.join(available())} "
                              f"(or a path to a .toml file)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise OptionError(f"{where}: not valid TOML: {e}") from None
    return validate(apply_overrides(data, overrides), where + (" with --set" if overrides else ""))


def keys_table() -> str:
    """Markdown table of every target key (meaning, unit, allowed range)."""
    lines = ["| key | type | unit | allowed | meaning |", "|---|---|---|---|---|"]
    for table, prefix in ((KEYS, ""), (COST_KEYS, "cost.")):
        for k, s in table.items():
            rng = "" if s.range is None else (" / ".join(s.range) if s.type is str else f"{s.range[0]} .. {s.range[1]}")
            lines.append(f"| `{prefix}{k}` | {s.type.__name__} | {s.unit} | {rng} | {s.doc} |")
    return "\n".join(lines)

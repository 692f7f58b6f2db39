"""Units: parse what operators type (``10s``, ``2ms``, ``35MiB``, ``80%``) into SI
values, and print SI values back human-scaled (``1.2ms``, ``35 MiB/s``).

Internally everything is SI: seconds, bytes, fractions.
"""

from __future__ import annotations

import math
import re

#: unit suffix -> factor to SI.  "%" makes a fraction.
UNIT_FACTORS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "%": 0.01,
    "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
    "KB": 1e3, "MB": 1e6, "GB": 1e9,
}
DURATION_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Zµ%]*)\s*$")


def parse_quantity(text: str | int | float, allowed: tuple[str, ...] | None = None) -> float:
    """``"2ms"`` -> 0.002, ``"25%"`` -> 0.25, ``"10MiB"`` -> 10485760.0; bare numbers pass.

    Raises ValueError naming the bad unit and the ones allowed.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"not a number with a unit: {text!r}")
    number, unit = m.groups()
    if not unit:
        return float(number)
    units = allowed if allowed is not None else tuple(UNIT_FACTORS)
    if unit not in units or unit not in UNIT_FACTORS:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use one of: {', '.join(units)})")
    return float(number) * UNIT_FACTORS[unit]


def parse_duration(text: str | int | float) -> float:
    """A duration in seconds: ``"100ms"``, ``"10s"``, ``"1m"``; a bare number is seconds."""
    value = parse_quantity(text, DURATION_UNITS)
    if value < 0 or math.isnan(value):
        raise ValueError(f"duration must not be negative: {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """Human-scaled: 0.0012 -> "1.2ms"; NaN -> "-"."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    s = abs(seconds)
    if s == 0:
        return "0"
    for limit, unit, factor in ((1e-6, "ns", 1e9), (1e-3, "us", 1e6), (1.0, "ms", 1e3), (60, "s", 1)):
        if s < limit:
            return _short(seconds * factor) + unit
    return _short(seconds / 60) + "m"


def format_bytes(n: float, per_second=False) -> str:
    """Binary-scaled: 36700160 -> "35 MiB" (or "35 MiB/s")."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    suffix = "/s" if per_second else ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{_short(n)} {unit}{suffix}"
        n /= 1024
    return f"{_short(n)} TiB{suffix}"


def format_count(n: float) -> str:
    """Decimal-scaled counts: 12500 -> "12.5k"."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return _short(n) + unit
        n /= 1000
    return _short(n) + "T"


def format_percent(fraction: float) -> str:
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "-"
    return f"{fraction * 100:.0f}%" if abs(fraction) >= 0.1 else f"{fraction * 100:.1f}%"


def _short(x: float) -> str:
    ax = abs(x)
    if ax >= 100 or ax == int(ax):
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.2f}".rstrip("0").rstrip(".")

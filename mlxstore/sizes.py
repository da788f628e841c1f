"""Byte sizes as people write them ("8GB", "512MiB", "1.5G") and as we print them.

Units, case-insensitive: B; KB/MB/GB/TB/PB are decimal (10^3 steps, as disk makers and
SI use them); KiB/MiB/GiB/TiB/PiB and the one-letter K/M/G/T/P are binary (2^10 steps,
as RAM is sold and as `ls -h`, Docker and Java read "8G"). A bare number is bytes.
Fractions are allowed and truncated to whole bytes.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _UNITS[_p + "b"] = 1000**_i
    _UNITS[_p + "ib"] = 1024**_i
    _UNITS[_p] = 1024**_i

_SIZE = re.compile(r"^\s*(\d[\d_]*(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: int | float | str) -> int:
    """A byte count from an int or a string such as "8GB", "512MiB", "1.5G" or "4096".

    Raises ValueError (or TypeError for other types) saying what was wrong and what is
    accepted.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"size must be an int or a string like '8GB', not {type(value).__name__}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"size {value!r} is not a finite number of bytes")
        if value < 0:
            raise ValueError(f"size {value!r} is negative")
        return int(value)
    match = _SIZE.match(value)
    if not match:
        if value.strip().startswith("-"):
            raise ValueError(f"size {value!r} is negative")
        hint = "e.g. '8GB', '512MiB', '1.5G'"
        if re.fullmatch(r"\s*[\d.]+e[+-]?\d+\s*", value, re.IGNORECASE):
            hint = "exponents are not read: write '1GB' or '1000000000'"
        raise ValueError(f"size {value!r} is not a number with an optional unit ({hint})")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"size {value!r} has unknown unit {unit!r} "
            "(use B, KB/MB/GB/TB/PB, KiB/MiB/GiB/TiB/PiB or K/M/G/T/P)"
        )
    try:
        amount = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"size {value!r}: {number!r} is not a number") from None
    return int(amount * factor)


def unit_of(typed: int | float | str) -> str:
    """The unit a size was written in ("GB" for "8 GB", "" for plain bytes), as typed."""
    match = _SIZE.match(typed) if isinstance(typed, str) else None
    unit = match.group(2) if match else ""
    return unit if unit.lower() in _UNITS else ""


def format_in(nbytes: int, unit: str) -> str:
    """`nbytes` in the unit the user typed ("8GB" -> "GB"), rounded up so a minimum stays one."""
    factor = _UNITS.get(unit.lower(), 1)
    if factor == 1:
        return f"{nbytes} bytes" if not unit else f"{nbytes} {unit}"
    value = math.ceil(nbytes * 100 / factor) / 100
    return f"{value:g} {unit}"


def format_size(nbytes: int) -> str:
    """A short binary-unit rendering: 512 B, 1.5 KiB, 8 GiB, 1.23 TiB."""
    if nbytes < 0:
        return "-" + format_size(-nbytes)
    if nbytes < 1024:
        return f"{nbytes} B"
    value, unit = float(nbytes), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"

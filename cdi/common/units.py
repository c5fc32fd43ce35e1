"""Kubernetes resource quantities ("10Gi", "500M", "1.5Gi") to and from bytes."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def parse_quantity(value: str | int | float) -> int:
    """Return the number of bytes a quantity stands for, rounded up to a whole byte.

    :raises ValueError: with a message naming the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity; write a size such as 10Gi or 512Mi")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; write a size such as 10Gi or 512Mi")
        return value
    if isinstance(value, float):
        return math.ceil(value)
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"{value!r} is not a quantity; write a size such as 10Gi, 512Mi or 1073741824")
    number, suffix = m.group(1), m.group(2) or ""
    try:
        amount = Decimal(number)
    except InvalidOperation as e:  # pragma: no cover - the regex already checked it
        raise ValueError(f"{value!r} is not a quantity") from e
    scale = _BINARY.get(suffix) or _DECIMAL[suffix]
    return math.ceil(amount * scale)


def format_quantity(n: int) -> str:
    """The shortest exact binary quantity for ``n`` bytes ("10Gi", "1536Mi", "1000")."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        scale = _BINARY[suffix]
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def human_bytes(n: float) -> str:
    """Approximate size for people: 1.5 GiB, 12.0 MiB, 512 B."""
    for suffix, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{int(n)} B"


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def round_down(n: int, align: int) -> int:
    return n // align * align

"""Config validation: a refused value raises :class:`ConfigError`, whose message names the field, the value and
what is allowed, with a 'did you mean' hint for a misspelt name."""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable, Sequence

def closest(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid name to ``name`` (for 'did you mean' hints), or None."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_message(key: str, valid: Iterable[str], where: str = "") -> str:
    """An error message for an unknown key, naming where it was found and the closest valid key."""
    valid = sorted(valid)
    hint = closest(key, valid)
    loc = f"{where}: " if where else ""
    fix = f"did you mean '{hint}'?" if hint else f"valid keys: {', '.join(valid)}"
    return f"{loc}unknown key '{key}' ({fix})"


class ConfigError(ValueError):
    """A config value that is refused; the message names the field, the value and what is allowed.

    Attributes:
        field: the field as the message names it: ``epochs``, ``crops[1].min_scale``,
            ``lr_multipliers.detector``.
        value: the refused value.
    """

    def __init__(self, message: str, field: str, value: Any) -> None:
        super().__init__(message)
        self.field, self.value = field, value

    @property
    def top_field(self) -> str:
        """The config field the error is about: ``crops`` for ``crops[1].min_scale``."""
        return re.split(r"[.\[ ]", self.field, maxsplit=1)[0]


def is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` is not an epoch count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any, finite: bool = True) -> bool:
    """An int or float, not a bool; with ``finite`` neither NaN nor infinite."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and (not finite or math.isfinite(value))


def require(ok: bool, field: str, value: Any, allowed: str) -> None:
    """Config validation: raise :class:`ConfigError` naming the field, the value and what is allowed."""
    if not ok:
        raise ConfigError(f"{field}={value!r} is invalid: {allowed}", field, value)


def require_bool(field: str, value: Any) -> None:
    """Config validation for a switch: ``true`` or ``false`` only (not 0, 1 or "yes")."""
    require(isinstance(value, bool), field, value, "true or false")


def require_int(field: str, value: Any, minimum: int | None = None, allowed: str | None = None) -> None:
    """Config validation for an integer field, at least ``minimum`` when given.

    ``allowed`` replaces the generated ``an integer >= N`` where the message should say more.
    """
    ok = is_int(value) and (minimum is None or value >= minimum)
    default = "an integer" if minimum is None else f"an integer >= {minimum}"
    require(ok, field, value, allowed or default)


def require_number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    finite: bool = True,
    allowed: str | None = None,
) -> None:
    """Config validation for a number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    A missing bound is not checked; ``finite`` refuses NaN and infinity. The generated text reads
    ``a finite number > 0 and <= 1`` (bounds formatted as given); ``allowed`` replaces it.
    """
    ok = is_number(value, finite=finite)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    bounds = ([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + (
        [f"<= {high}"] if high is not None else [])
    default = f"a {'finite ' if finite else ''}number" + (" " + " and ".join(bounds) if bounds else "")
    require(ok, field, value, allowed or default)


def require_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    """Config validation for a field that takes one of a few names (the error suggests the closest)."""
    if value not in choices:
        hint = closest(str(value), [str(c) for c in choices]) if isinstance(value, str) else None
        extra = f" (did you mean '{hint}'?)" if hint else ""
        raise ConfigError(f"{field}={value!r} is invalid: choose one of {', '.join(map(str, choices))}{extra}",
                          field, value)

"""Which stored phone number a called number (``channel.dialplan.exten``) is.

Trunks deliver one number in several forms: ``+15551234567``, ``15551234567``, ``5551234567``. The
operator stores one of them. The rule, in order (the first step that finds something decides):

1. **exact**: the called string equals a stored address (extensions such as ``8000`` and anything
   that is not a phone number match only this way);
2. **digits only**: both compared without ``+``, spaces, ``-``, ``.``, ``(``, ``)``
   (``+1 (555) 123-4567`` = ``15551234567``);
3. **optional country code**: one side's digits are the other side's digits with 1 to 3 more
   digits in front (a country code), and the shorter side has at least :data:`MIN_NATIONAL_DIGITS`
   digits (so ``1234567``, a 7-digit local number, never matches ``5551234567`` by calling ``555``
   a country code).

If a step finds more than one stored number (``15551234567`` and ``25551234567`` both end in
``5551234567``), the call matches none: routing a call to a guess is worse than refusing it with the
candidates named. National trunk prefixes (``0`` in ``020 7946 0000``) are not stripped: store the
number as the trunk delivers it.

Pure functions, no I/O (the call store, vr3ai.core.calls, applies them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MIN_NATIONAL_DIGITS = 8
"""Fewest digits the number without its country code may have for step 3 to apply."""
MAX_COUNTRY_CODE_DIGITS = 3
"""ITU country codes have 1 to 3 digits."""

_SEPARATORS = re.compile(r"[\s().-]")
_DIGITS = re.compile(r"\+?[0-9]+")


def digits_only(number: str) -> str | None:
    """``number`` without ``+`` and separators, or None if it is not a phone number's shape."""
    compact = _SEPARATORS.sub("", number)
    if not _DIGITS.fullmatch(compact):
        return None
    return compact.lstrip("+")


def _with_country_code(longer: str, shorter: str) -> bool:
    extra = len(longer) - len(shorter)
    return 1 <= extra <= MAX_COUNTRY_CODE_DIGITS and len(shorter) >= MIN_NATIONAL_DIGITS and longer.endswith(shorter)


@dataclass
class NumberMatch:
    """The outcome of :func:`match_number`: ``address`` is the stored address to use (or None),
    ``step`` which rule found it, ``tried`` the forms compared (for the warning), ``ambiguous`` the
    stored addresses a step could not choose between."""

    address: str | None
    step: str = ""
    tried: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    def tried_text(self) -> str:
        return ", ".join(self.tried)


def match_number(called: str, addresses: Iterable[str]) -> NumberMatch:
    stored = list(dict.fromkeys(addresses))
    tried = [f"exact '{called}'"]
    if called in stored:
        return NumberMatch(called, "exact", tried)
    digits = digits_only(called)
    if digits is None or not digits:
        return NumberMatch(None, "", tried)
    stored_digits = {a: d for a in stored if (d := digits_only(a))}
    tried.append(f"digits only '{digits}'")
    same = [a for a, d in stored_digits.items() if d == digits]
    if len(same) == 1:
        return NumberMatch(same[0], "digits", tried)
    if same:
        return NumberMatch(None, "", tried, sorted(same))
    shorter = [digits[n:] for n in range(1, MAX_COUNTRY_CODE_DIGITS + 1) if len(digits) - n >= MIN_NATIONAL_DIGITS]
    tried.append("without a country code " + (", ".join(f"'{s}'" for s in shorter) if shorter else "(too short)"))
    if len(digits) >= MIN_NATIONAL_DIGITS:
        tried.append(f"with a 1-{MAX_COUNTRY_CODE_DIGITS} digit country code before '{digits}'")
    cc = [a for a, d in stored_digits.items() if _with_country_code(digits, d) or _with_country_code(d, digits)]
    if len(cc) == 1:
        return NumberMatch(cc[0], "country code", tried)
    return NumberMatch(None, "", tried, sorted(cc) if cc else [])

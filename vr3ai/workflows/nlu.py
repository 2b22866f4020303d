"""Deterministic language helpers for the offline rule engine: normalisation, matching, slots.

Everything here is a pure function of its input. There is no model, no randomness and no clock, so
a conversation test gives the same result on every machine. That also bounds what it can do, on
purpose:

* **Normalisation** (:func:`normalize`): case-folding, apostrophes dropped (``don't`` → ``dont``),
  punctuation becomes a word break, number words become digits (``twenty three`` → ``23``,
  ``three`` → ``3``; a run of single digits stays a run: ``one two`` → ``1 2``), and a minimal
  plural stemmer (``hours`` → ``hour``, ``replies`` → ``reply``). Keywords and caller text go through
  the same pipeline, so ``"3"`` matches ``"three"`` and ``"appointments"`` matches ``"appointment"``.
  The number words, stop words and yes/no words are English; other languages still get exact
  keyword matching on case-folded words.
* **Keywords** (:func:`keyword_match`) match whole normalised words, or contiguous word sequences
  for phrases, never substrings: ``"no"`` does not match ``"know"``.
* **Examples** (:func:`example_score`) are scored by the share of an example's content words (stop
  words removed) that the caller said. It ignores word order and negation, which is why keywords,
  the more precise tool, win over examples.
* **Slots** (:func:`extract_slot`) recognise digit strings, numbers, yes/no, clock times, date
  words and a free-text remainder. Values are stored in a form that reads well when spoken back
  (``"3:30 PM"``, ``"next Monday"``, ``"March 5"``), since templates put them straight into speech.
  Relative dates are *not* resolved to calendar dates: that would need the caller's time zone and a
  clock, and the word is what a receptionist repeats back anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_WORD_RE = re.compile(r"[^\W_]+")

UNITS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9,
}
TEENS: dict[str, int] = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS: dict[str, int] = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}
SCALES: dict[str, int] = {"thousand": 1000, "million": 1_000_000}
ORDINALS: dict[str, int] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30,
}
_NUMBER_WORDS = set(UNITS) | set(TEENS) | set(TENS) | set(SCALES) | {"hundred"}

STOP_WORDS = frozenset(
    """a an the i im me my we our us you your it its is are was were be been am to of in on at for
    and or but so with this that these those there here do does did can could would will shall should
    may might must have has had please just like want wanted wanna id ill ive hi hello hey um uh er
    okay ok well about some any get got need""".split()
)


def _casefold_text(text: str) -> str:
    text = text.casefold().replace("’", "'").replace("‘", "'")
    # Apostrophes join rather than split, so "don't" and "dont" (STT writes both) normalise alike.
    text = text.replace("'", "")
    # Thousands separators ("1,000") would otherwise split one number into two.
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def words(text: str) -> list[str]:
    """Case-folded words of ``text``, punctuation dropped, number words left as words."""
    return _WORD_RE.findall(_casefold_text(text))


def _parse_number(tokens: Sequence[str], i: int) -> tuple[int, int]:
    """Parse the longest number-word run starting at ``tokens[i]``; returns (value, next index)."""
    total = 0
    current = 0
    last: str | None = None
    j = i
    n = len(tokens)
    while j < n:
        w = tokens[j]
        if w in UNITS:
            # "twenty three" combines; "one two" and "twenty zero" are separate numbers.
            if last in (None, "hundred", "scale") or (last == "tens" and UNITS[w] != 0):
                current += UNITS[w]
                last = "unit"
            else:
                break
        elif w in TEENS or w in TENS:
            if last in (None, "hundred", "scale"):
                current += TEENS.get(w, TENS.get(w, 0))
                last = "teen" if w in TEENS else "tens"
            else:
                break
        elif w == "hundred":
            if last in ("unit", "teen", "tens"):
                current *= 100
            elif last is None:
                current = 100
            else:
                break
            last = "hundred"
        elif w in SCALES:
            if last in ("unit", "teen", "tens", "hundred"):
                total += current * SCALES[w]
                current = 0
                last = "scale"
            else:
                break
        elif (
            w == "and"
            and last in ("hundred", "scale")
            and j + 1 < n
            and (tokens[j + 1] in UNITS or tokens[j + 1] in TEENS or tokens[j + 1] in TENS)
        ):
            pass  # "one hundred and five"
        else:
            break
        j += 1
    return total + current, j


def words_to_numbers(tokens: Sequence[str]) -> list[str]:
    """Replace runs of number words by their digits: ``["twenty", "three", "pm"]`` → ``["23", "pm"]``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in _NUMBER_WORDS:
            value, j = _parse_number(tokens, i)
            if j > i:
                out.append(str(value))
                i = j
                continue
        out.append(tokens[i])
        i += 1
    return out


def stem(token: str) -> str:
    """A deliberately tiny plural stemmer; applied to both sides of a comparison, so its mistakes
    (``this`` → ``thi``) cancel out."""
    if token.isdigit():
        return token
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def normalize(text: str) -> list[str]:
    """The token sequence used for keyword and example matching (see the module docstring)."""
    return [stem(t) for t in words_to_numbers(words(text))]


def _find_sequence(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    if not needle or len(needle) > len(haystack):
        return False
    first = needle[0]
    for i, tok in enumerate(haystack[: len(haystack) - len(needle) + 1]):
        if tok == first and list(haystack[i : i + len(needle)]) == list(needle):
            return True
    return False


def keyword_match(utterance_tokens: Sequence[str], keywords: Iterable[str]) -> int:
    """Length (in words) of the longest keyword found in the utterance, 0 if none.

    The length lets the engine prefer the most specific match when keywords of two edges both
    appear ("opening hours" beats "open")."""
    best = 0
    for kw in keywords:
        kw_tokens = normalize(kw)
        if len(kw_tokens) > best and _find_sequence(utterance_tokens, kw_tokens):
            best = len(kw_tokens)
    return best


def content_words(tokens: Iterable[str]) -> set[str]:
    return {t for t in tokens if t not in STOP_WORDS}


def example_score(utterance_tokens: Sequence[str], example: str) -> tuple[float, int]:
    """(share of the example's content words the caller said, number of those words)."""
    ex_tokens = normalize(example)
    ex = content_words(ex_tokens) or set(ex_tokens)
    if not ex:
        return 0.0, 0
    said = set(utterance_tokens)
    hits = sum(1 for t in ex if t in said)
    return hits / len(ex), hits


# --- spoken keypad digits ----------------------------------------------------------------------

_SPOKEN_DTMF_FILLERS = frozenset(
    {"option", "press", "number", "the", "i", "pressed", "choose", "key", "pick", "please"}
)


def spoken_keypad(text: str) -> str | None:
    """``"option three"`` / ``"press 3"`` / ``"star"`` → ``"3"`` / ``"*"``; None if the utterance is
    anything more than keypad keys and a few filler words. Lets callers say a menu choice instead of
    pressing it."""
    tokens = words(text)
    keys: list[str] = []
    for tok in tokens:
        if tok in UNITS:
            keys.append(str(UNITS[tok]))
        elif tok.isdigit():
            keys.append(tok)
        elif tok in ("star", "asterisk"):
            keys.append("*")
        elif tok in ("hash", "pound"):
            keys.append("#")
        elif tok in _SPOKEN_DTMF_FILLERS:
            continue
        else:
            return None
    return "".join(keys) or None


# --- slots ---------------------------------------------------------------------------------------

SLOT_TYPES = ("digits", "number", "yes_no", "time", "date", "text")


def extract_digits(text: str, min_digits: int = 1, max_digits: int = 32) -> str | None:
    """The longest run of spoken or written digits: ``"555-0199"``, ``"five five five oh one nine
    nine"``, ``"double five"``, ``"twelve thirty four"`` (→ ``1234``). ``oh`` counts as zero only next
    to other digits, so "oh, I see" yields nothing."""
    tokens = words(text)
    runs: list[list[str]] = []
    run: list[str] = []
    oh_only = True
    i = 0

    def close() -> None:
        nonlocal run, oh_only
        if run and not oh_only:
            runs.append(run)
        run = []
        oh_only = True

    while i < len(tokens):
        tok = tokens[i]
        if tok.isdigit():
            run.append(tok)
            oh_only = False
        elif tok in ("oh", "o"):
            run.append("0")
        elif tok in ("double", "triple") and i + 1 < len(tokens) and (
            tokens[i + 1] in UNITS or (tokens[i + 1].isdigit() and len(tokens[i + 1]) == 1)
        ):
            d = tokens[i + 1] if tokens[i + 1].isdigit() else str(UNITS[tokens[i + 1]])
            run.append(d * (2 if tok == "double" else 3))
            oh_only = False
            i += 1
        elif tok in _NUMBER_WORDS and tok not in SCALES and tok != "hundred":
            value, j = _parse_number(tokens, i)
            run.append(str(value))
            oh_only = False
            i = j
            continue
        else:
            close()
        i += 1
    close()
    best = ""
    for r in runs:
        digits = "".join(r)
        if len(digits) > len(best):
            best = digits
    if not best or not (min_digits <= len(best) <= max_digits):
        return None
    return best


def extract_number(text: str) -> int | float | None:
    """The first number said or written: ``"two tickets"`` → 2, ``"twenty three"`` → 23, ``"2.5"`` → 2.5."""
    decimal = re.search(r"(?<![\d.])(\d+\.\d+)(?![\d.])", text)
    tokens = words_to_numbers(words(text))
    for tok in tokens:
        if tok.isdigit():
            if decimal and decimal.group(1).startswith(tok + "."):
                return float(decimal.group(1))
            return int(tok)
    return None


_YES = ("yes", "yeah", "yep", "yup", "ya", "sure", "correct", "right", "ok", "okay", "absolutely",
        "definitely", "certainly", "affirmative", "indeed", "of course", "please do", "go ahead",
        "sounds good", "that works", "exactly", "yes please")
_NO = ("no", "nope", "nah", "negative", "wrong", "incorrect", "not really", "no thanks", "dont",
       "do not", "never")
_UNSURE = ("dont know", "do not know", "not sure", "no idea", "maybe", "dunno")


def extract_yes_no(text: str) -> str | None:
    """``"yes"`` or ``"no"``. When both appear the earlier one wins ("no, wait, yes" → "no" is the
    caller's first answer and the safer one to act on); "not right" / "not correct" count as no;
    "I don't know" / "not sure" / "maybe" are neither."""
    tokens = words(text)
    joined = " ".join(tokens)
    if any(re.search(rf"\b{u}\b", joined) for u in _UNSURE):
        return None
    best: tuple[int, str] | None = None
    for phrases, value in ((_YES, "yes"), (_NO, "no")):
        for phrase in phrases:
            p = phrase.split()
            for i in range(len(tokens) - len(p) + 1):
                if tokens[i : i + len(p)] == p:
                    v = value
                    if value == "yes" and i > 0 and tokens[i - 1] in ("not", "isnt", "aint"):
                        v = "no"
                    if best is None or i < best[0]:
                        best = (i, v)
                    break
    return best[1] if best else None


_MERIDIEM_AFTER = {
    ("in", "the", "morning"): "am",
    ("in", "the", "afternoon"): "pm",
    ("in", "the", "evening"): "pm",
    ("at", "night"): "pm",
    ("tonight",): "pm",
    ("this", "evening"): "pm",
    ("this", "afternoon"): "pm",
    ("this", "morning"): "am",
}
_TIME_LEADS = ("at", "around", "about", "by", "after", "before", "until", "till", "from")
_TIME_FILLERS = frozenset({"um", "uh", "er", "well", "how", "about", "maybe", "lets", "say", "please",
                           "at", "around", "ish", "like", "perhaps", "oclock", "the"})


def _fmt_time(hour: int, minute: int, meridiem: str | None) -> str | None:
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        return f"{hour}:{minute:02d} {meridiem.upper()}" if minute else f"{hour} {meridiem.upper()}"
    if hour == 0 or 13 <= hour <= 23:
        h12 = hour % 12 or 12
        mer = "AM" if hour < 12 else "PM"
        return f"{h12}:{minute:02d} {mer}" if minute else f"{h12} {mer}"
    if not 1 <= hour <= 12:
        return None
    return f"{hour}:{minute:02d}" if minute else f"{hour} o'clock"


def extract_time(text: str) -> str | None:
    """A clock time, formatted for speech: ``"three pm"`` → ``"3 PM"``, ``"3:30pm"`` → ``"3:30 PM"``,
    ``"15:30"`` → ``"3:30 PM"``, ``"half past two in the afternoon"`` → ``"2:30 PM"``, ``"noon"`` →
    ``"12 PM"``, ``"three thirty"`` → ``"3:30"`` (no AM/PM guessed), ``"at four"`` → ``"4 o'clock"``.

    A bare number counts as a time only when it is marked as one (am/pm, o'clock, a colon, "at"
    before it, a minute after it) or is the whole answer, so "two people" is not 2 o'clock."""
    low = text.casefold().replace("’", "'")
    low = re.sub(r"\b([ap])\.\s?m\b\.?", r" \1m ", low)
    low = re.sub(r"(\d)\s*([ap])\.?m\b", r"\1 \2m", low)
    low = re.sub(r"\bo'?\s?clock\b", " oclock ", low)
    low = re.sub(r"\b(\d{1,2})[:.](\d{2})\b", r"\1 \2 colon", low)
    tokens = words_to_numbers(_WORD_RE.findall(low.replace("'", "")))
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok in ("noon", "midday"):
            return "12 PM"
        if tok == "midnight":
            return "12 AM"
        # "half past three", "quarter past three", "quarter to four"
        if (
            tok in ("half", "quarter")
            and i + 2 < n
            and tokens[i + 1] in ("past", "to", "after")
            and tokens[i + 2].isdigit()
        ):
            hour = int(tokens[i + 2])
            if not 1 <= hour <= 12:
                continue
            minute = 30 if tok == "half" else 15
            if tokens[i + 1] == "to":
                if tok == "half":
                    continue
                hour, minute = (hour - 1) or 12, 45
            meridiem = _meridiem_at(tokens, i + 3)
            return _fmt_time(hour, minute, meridiem[0] if meridiem else None)
        if not tok.isdigit() or len(tok) > 2:
            continue
        hour = int(tok)
        if hour > 23:
            continue
        j = i + 1
        minute: int | None = None
        colon = False
        if j + 1 < n and tokens[j] in ("oh", "o") and tokens[j + 1].isdigit() and len(tokens[j + 1]) == 1:
            minute = int(tokens[j + 1])
            j += 2
        elif j < n and tokens[j].isdigit() and len(tokens[j]) <= 2 and int(tokens[j]) <= 59 and (
            len(tokens[j]) == 2 and (int(tokens[j]) >= 10 or tokens[j].startswith("0"))
        ):
            minute = int(tokens[j])
            j += 1
            if j < n and tokens[j] == "colon":
                colon = True
                j += 1
        oclock = False
        if j < n and tokens[j] == "oclock":
            oclock = True
            j += 1
        meridiem = None
        if j < n and tokens[j] in ("am", "pm"):
            meridiem = tokens[j]
            j += 1
        else:
            found = _meridiem_at(tokens, j)
            if found:
                meridiem, j = found[0], found[1]
        led = i > 0 and tokens[i - 1] in _TIME_LEADS
        whole = all(t in _TIME_FILLERS for k, t in enumerate(tokens) if not i <= k < j)
        if meridiem or oclock or colon or led or minute is not None or whole:
            if minute is None and not meridiem and not colon and not oclock and hour > 12:
                continue
            formatted = _fmt_time(hour, minute or 0, meridiem)
            if formatted:
                return formatted
    return None


def _meridiem_at(tokens: Sequence[str], j: int) -> tuple[str, int] | None:
    for phrase, mer in _MERIDIEM_AFTER.items():
        if tuple(tokens[j : j + len(phrase)]) == phrase:
            return mer, j + len(phrase)
    return None


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
          "october", "november", "december")


def _day_number(tokens: Sequence[str], i: int) -> tuple[int, int] | None:
    """A day of the month at ``tokens[i]``: ``5``, ``5th``, ``fifth``, ``twenty first``; (day, next)."""
    if i >= len(tokens):
        return None
    tok = tokens[i]
    m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", tok)
    if m:
        day = int(m.group(1))
        return (day, i + 1) if 1 <= day <= 31 else None
    if tok in ("twenty", "thirty") and i + 1 < len(tokens) and tokens[i + 1] in ORDINALS \
            and ORDINALS[tokens[i + 1]] < 10:
        day = TENS[tok] + ORDINALS[tokens[i + 1]]
        return (day, i + 2) if day <= 31 else None
    if tok in ORDINALS:
        return ORDINALS[tok], i + 1
    return None


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def extract_date(text: str) -> str | None:
    """A date word or phrase, as said: ``"tomorrow"``, ``"the day after tomorrow"``, ``"today"``,
    ``"tonight"``, ``"Monday"``, ``"next Friday"``, ``"this weekend"``, ``"next week"``,
    ``"March 5"`` (from "march fifth", "the 5th of march", "march the 5th"), ``"the 5th"``."""
    tokens = words(text)
    n = len(tokens)
    for i, tok in enumerate(tokens):
        if tok == "day" and tokens[i + 1 : i + 3] == ["after", "tomorrow"]:
            return "the day after tomorrow"
        if tok in ("today", "tonight", "tomorrow"):
            return tok
        if tok in ("next", "this") and i + 1 < n:
            nxt = tokens[i + 1]
            if nxt in ("week", "weekend", "month"):
                return f"{tok} {nxt}"
            day = nxt[:-1] if nxt.endswith("s") and nxt[:-1] in WEEKDAYS else nxt
            if day in WEEKDAYS:
                return f"{tok} {day.capitalize()}" if tok == "next" else day.capitalize()
        if tok == "weekend":
            return "this weekend"
        weekday = tok[:-1] if tok.endswith("s") and tok[:-1] in WEEKDAYS else tok
        if weekday in WEEKDAYS:
            return weekday.capitalize()
        if tok in MONTHS:
            k = i + 1 + (1 if i + 1 < n and tokens[i + 1] == "the" else 0)
            found = _day_number(tokens, k)
            if found:
                return f"{tok.capitalize()} {found[0]}"
            continue
        found = _day_number(tokens, i)
        if found:
            day, k = found
            if tokens[k : k + 1] == ["of"] and k + 1 < n and tokens[k + 1] in MONTHS:
                return f"{tokens[k + 1].capitalize()} {day}"
            # "the fifth" / "the 5th" is a date; "the 5" is too often a count ("the 5 of us").
            if i > 0 and tokens[i - 1] == "the" and not tok.isdigit():
                return f"the {_ordinal(day)}"
    return None


_TEXT_FILLERS = re.compile(r"^(?:(?:um+|uh+|er+|erm|hmm+|well|so|okay|ok|oh|yeah|yes)\b[\s,.!?-]*)+", re.I)


def extract_text(text: str, after: Sequence[str] = (), *, require_after: bool = False) -> str | None:
    """The caller's words, as transcribed, minus leading filler ("um, well"); with ``after`` phrases
    ("my name is", "this is"), only what follows the first phrase found — or everything, if none
    is found (answers to "what's your name?" are often just the name) and ``require_after`` is False."""
    raw = text.replace("’", "'").strip()
    found = False
    for phrase in after:
        parts = [re.escape(p) for p in phrase.replace("’", "'").split()]
        if not parts:
            continue
        m = re.search(r"\b" + r"[\s,]+".join(parts) + r"\b", raw, re.I)
        if m:
            raw = raw[m.end():]
            found = True
            break
    if require_after and not found:
        return None
    raw = _TEXT_FILLERS.sub("", raw.strip(" \t\n,.;:-")).strip()
    raw = raw.strip(" \t\n,;:-")
    raw = raw.rstrip(".!?").strip()
    return raw or None


def extract_slot(slot_type: str, text: str, **options: Any) -> Any:
    """Dispatch to the extractor for ``slot_type`` (one of :data:`SLOT_TYPES`); None if nothing found."""
    if slot_type == "digits":
        return extract_digits(text, options.get("min_digits", 1), options.get("max_digits", 32))
    if slot_type == "number":
        return extract_number(text)
    if slot_type == "yes_no":
        return extract_yes_no(text)
    if slot_type == "time":
        return extract_time(text)
    if slot_type == "date":
        return extract_date(text)
    if slot_type == "text":
        return extract_text(text, options.get("after", ()), require_after=options.get("require_after", False))
    raise ValueError(f"unknown slot type {slot_type!r}")

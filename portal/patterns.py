"""Regular expressions that users type: the one place they are checked, compiled and run.

A finance officer's CSV mapping carries patterns (``payments/statements/parsers/csv_format.py``).
Python's ``re`` backtracks: ``^(a+)+$`` against a line of 30 ``a`` and a ``b`` takes seconds,
and the worker running it stalls for every provider. So every pattern a user supplies is
compiled here with RE2 (``google-re2``), whose matching time grows linearly with the text
whatever the pattern (no backtracking), within a bounded memory budget. That is the time
limit: a pattern of at most ``MAX_PATTERN_LENGTH`` characters over a text of n characters
costs O(n), never more.

RE2 has no backreferences (``\\1``), lookaround (``(?=``, ``(?<!``), atomic groups or
possessive repeats: such a pattern is refused with the reason. ``pattern_problem`` (what a
save checks) also refuses nested repetition such as ``(a+)+``: harmless to RE2, but it is
the shape that makes backtracking engines explode, it can always be written without, and
refusing it keeps a saved mapping safe under any engine. Differences from ``re`` a user may
meet: ``\\d``, ``\\s``, ``\\w`` and ``\\b`` are ASCII only (``\\p{L}``, ``\\p{Nd}`` for letters and
digits of any script) and ``\\Z`` is written ``\\z``.

Pure Python and RE2; no Django.
"""

from __future__ import annotations

import functools
import re._constants as _sre_constants  # type: ignore[import-not-found]  # private module, no stub
import re._parser as _sre_parser  # type: ignore[import-not-found]  # private module, no stub

import re2

# Longer than any pattern a bank export needs (the built-in ones are under 100 characters);
# also bounds the pattern's share of RE2's linear cost.
MAX_PATTERN_LENGTH = 500
# Memory RE2 may use for one compiled pattern (its default is 8 MiB); a pattern that needs
# more (huge counted repeats) is refused as too large rather than made to fall back.
_MAX_MEMORY = 2 << 20

_REPEATS = {_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT, _sre_constants.POSSESSIVE_REPEAT}

# RE2's own error texts (bytes) -> what the user should read.
_UNSUPPORTED = (
    ("invalid perl operator: (?=", "lookahead (?=…) is not supported"),
    ("invalid perl operator: (?!", "negative lookahead (?!…) is not supported"),
    ("invalid perl operator: (?<=", "lookbehind (?<=…) is not supported"),
    ("invalid perl operator: (?<!", "negative lookbehind (?<!…) is not supported"),
    ("invalid perl operator: (?>", "atomic groups (?>…) are not supported"),
    ("invalid perl operator: (?P", "backreferences such as (?P=name) are not supported"),
    ("invalid escape sequence: \\Z", r"\Z is written \z here (end of the text)"),
    ("bad repetition operator: ++", "possessive repeats (++, *+) are not supported"),
    ("bad repetition operator: *+", "possessive repeats (++, *+) are not supported"),
    ("pattern too large", "the pattern is too large to run safely; use smaller counted repeats ({n,m})"),
)


class PatternError(ValueError):
    """A user's pattern that cannot be used; the message says why, in words for the user."""


def _reason(message: str) -> str:
    if message.startswith("invalid escape sequence: \\") and message[-1:].isdigit():
        return f"backreferences such as {message.rsplit(' ', 1)[-1]} are not supported"
    for prefix, reason in _UNSUPPORTED:
        if message.startswith(prefix):
            return reason
    return f"this is not a regular expression ({message})"


def compile_pattern(pattern: str, *, ignore_case: bool = False):
    """Compile a user's ``pattern`` with RE2; raise :class:`PatternError` saying why it cannot be used.

    The result has ``search``, ``match``, ``fullmatch``, ``finditer`` and ``groups`` like a
    ``re.Pattern``, and runs in time linear in the text.
    """
    if not isinstance(pattern, str):
        raise PatternError("a pattern must be text")
    return _compile(pattern, ignore_case)


@functools.lru_cache(maxsize=256)  # a statement runs the same two or three patterns on every line
def _compile(pattern: str, ignore_case: bool):
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"the pattern has {len(pattern)} characters; at most {MAX_PATTERN_LENGTH} are allowed")
    options = re2.Options()
    options.log_errors = False  # the reason goes to the user, not to stderr
    options.max_mem = _MAX_MEMORY
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        detail = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        raise PatternError(_reason(detail)) from None


def _nested_repeat(items, outer_high: int) -> bool:
    """True for a variable repeat inside a repeat, either of them open-ended: ``(a+)+``, ``(a?)*``, ``(a{1,3})+``.

    ``outer_high`` is the largest count of the innermost enclosing repeat (1: none). Such a
    nesting lets a backtracking engine split the same text in exponentially many ways.
    """
    unbounded = _sre_constants.MAXREPEAT
    for op, argument in items:
        if op in _REPEATS:
            low, high, body = argument
            if outer_high > 1 and low != high and unbounded in (high, outer_high):
                return True
            if _nested_repeat(body, max(outer_high, high)):
                return True
            continue
        for part in argument if isinstance(argument, (tuple, list)) else (argument,):
            if isinstance(part, _sre_parser.SubPattern):
                if _nested_repeat(part, outer_high):
                    return True
            elif isinstance(part, (tuple, list)):  # a BRANCH holds a list of alternatives
                for alternative in part:
                    if isinstance(alternative, _sre_parser.SubPattern) and _nested_repeat(alternative, outer_high):
                        return True
    return False


def pattern_problem(pattern: str) -> str | None:
    """Why a user may not save ``pattern`` (a sentence), or None when it is fine.

    Everything :func:`compile_pattern` refuses, plus nested repetition (``(a+)+``,
    ``(\\s*\\S+)*``): catastrophic for a backtracking engine, and never needed.
    """
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        return str(exc)[0].upper() + str(exc)[1:] + "."
    try:
        tree = _sre_parser.parse(pattern)
    except Exception:  # RE2-only syntax (\pL, \z) that Python's parser does not know
        return None
    if _nested_repeat(tree, 1):
        return (
            "A repeat inside a repeated group, such as (a+)+ or (\\s*\\S+)*, is refused: a text can be split "
            "between the two repeats in exponentially many ways, the shape that stalls backtracking engines. "
            "Write it with one repeat, e.g. a+ instead of (a+)+."
        )
    return None

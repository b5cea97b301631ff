"""Steering expressions: the one small language for saying what to steer with.

``parse("json:4 + 0.5*love - file:vecs/hate.safetensors@6-8")`` gives an ``Expression``, a tuple
of ``TermExpr`` (a preset name or ``file:<path>``, a coefficient, optional layers). Turning names
into vectors happens elsewhere; ``suggest`` helps word the "unknown name" error there.

Grammar (EBNF). Whitespace is free around the operators and ``*`` and allowed nowhere else::

    expression = [ sign ], term, { sign, term } ;
    sign       = "+" | "-" ;
    term       = [ number, "*" ], source, [ "@", layers ], [ ":", [ sign ], number ] ;
    source     = name | "file:", path ;
    name       = ( letter | "_" ), { word }, { "-", word, { word } } ;   (* never "file" *)
    word       = letter | digit | "_" ;                                 (* ASCII only *)
    layers     = span, { ",", span } ;              (* no spaces; 0 <= each int <= 100000 *)
    span       = int, [ "-", int ] ;                (* inclusive, start <= end *)
    number     = ( digits, [ ".", [ digits ] ] | ".", digits ), [ "e" | "E", [ sign ], digits ] ;
    path       = '"', { char | '\\"' | '\\\\' }, '"'  (* other backslashes are literal *)
               | bare ;  (* printable non-space chars but '"', up to a trailing [@layers][:coeff] *)

Coefficients must be finite; prefix, suffix and sign multiply (``- 2*love:3`` is -6). A ``-``
between two word characters belongs to the name (``love-hate`` is one name, write ``love - hate``).
A bare path runs to the next whitespace, so an operator after it needs a space before it; a
preset cannot be called ``file`` (``file:2`` is the file ``2``).
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

from ..errors import ExpressionError, SteeringSpecError
from .labels import layer_span, number

MAX_LENGTH = 10_000
MAX_LAYER = 100_000
MAX_LAYER_COUNT = 1_000_000  # all layers of all terms together, so `@0-100000` x 900 can't OOM
_DIGITS = frozenset("0123456789")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD = _DIGITS | _LETTERS
_WORD_DOT = _WORD | {"."}
_LAYER_CHARS = _DIGITS | {",", "-"}
_SAFE_PATH = _WORD | frozenset("-./\\:~+,=%#")  # written unquoted in canonical form
_SIGNS = ("+", "-")


def _skip(text: str, i: int, chars: frozenset[str]) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _scan_name(text: str, i: int) -> int:
    """End of the name starting at ``i``: word characters, joined by single inner hyphens."""
    i = _skip(text, i, _WORD)
    while text[i : i + 1] == "-" and text[i + 1 : i + 2] in _WORD:
        i = _skip(text, i + 1, _WORD)
    return i


def _scan_number(text: str, i: int, signed: bool = False) -> int:
    """End of the number starting at ``i``, or ``i`` when none starts there."""
    j = i + (signed and text[i : i + 1] in _SIGNS)
    k = _skip(text, j, _DIGITS)
    seen = k > j
    if text[k : k + 1] == ".":
        m = _skip(text, k + 1, _DIGITS)
        seen, k = (True, m) if seen or m > k + 1 else (seen, k)
    if not seen:
        return i
    if text[k : k + 1] in ("e", "E"):
        m = k + 1 + (text[k + 1 : k + 2] in _SIGNS)
        n = _skip(text, m, _DIGITS)
        k = n if n > m else k
    return k


def _tail_is_number(text: str, colon: int, end: int) -> bool:
    n = _scan_number(text, colon + 1, signed=True)
    return n == end and n > colon + 1


def _is_name(s: str) -> bool:
    return s[:1] in _LETTERS and _scan_name(s, 0) == len(s) and s != "file"


def _short(token: str) -> str:
    return repr(token if len(token) <= 24 else token[:20] + "...")


def _quote(path: str) -> str:
    colon = path.rfind(":")
    bare = path and all(c in _SAFE_PATH for c in path)
    if bare and (colon < 0 or not _tail_is_number(path, colon, len(path))):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class TermExpr:
    """One term: a preset name or ``file:<path>``, its coefficient and optional layers."""

    source: str
    coeff: float = 1.0
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        src = self.source
        if not isinstance(src, str) or not (
            _is_name(src)
            if not src.startswith("file:")
            else src[5:] and all(c.isprintable() for c in src[5:])
        ):
            raise SteeringSpecError(f"not a preset name or file:<path>: {src!r}")
        coeff = float(self.coeff)
        if not math.isfinite(coeff):
            raise SteeringSpecError(f"term coefficient must be finite, got {coeff}")
        object.__setattr__(self, "coeff", coeff + 0.0)  # -0.0 -> 0.0
        if self.layers is not None:
            layers = tuple(sorted({operator.index(x) for x in self.layers}))
            if not layers or layers[0] < 0 or layers[-1] > MAX_LAYER:
                raise SteeringSpecError(f"layers must be 0..{MAX_LAYER}, got {self.layers!r}")
            object.__setattr__(self, "layers", layers)

    @property
    def is_file(self) -> bool:
        """True for a ``file:<path>`` term."""
        return self.source.startswith("file:")

    @property
    def path(self) -> str | None:
        """The vector file's path for a file term, else None."""
        return self.source[5:] if self.is_file else None

    def _body(self) -> str:
        text = "file:" + _quote(self.source[5:]) if self.is_file else self.source
        text += "" if self.layers is None else "@" + layer_span(self.layers)
        return text if abs(self.coeff) == 1.0 else f"{text}:{number(abs(self.coeff))}"

    def canonical(self) -> str:
        """This term alone as an expression: ``[-]source[@layers][:coeff]``."""
        return ("-" if self.coeff < 0 else "") + self._body()


@dataclass(frozen=True)
class Expression:
    """A parsed steering expression: a sum of signed, scaled terms."""

    terms: tuple[TermExpr, ...]

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        if not terms or not all(isinstance(t, TermExpr) for t in terms):
            raise SteeringSpecError("an Expression needs one or more TermExpr terms")
        object.__setattr__(self, "terms", terms)

    def canonical(self) -> str:
        """The normal spelling; ``parse(e.canonical()) == e``."""
        out = [self.terms[0].canonical()]
        out += [(" - " if t.coeff < 0 else " + ") + t._body() for t in self.terms[1:]]
        return "".join(out)

    __str__ = canonical

    def names(self) -> tuple[str, ...]:
        """The preset names used, first appearance first, without files or repeats."""
        return tuple(dict.fromkeys(t.source for t in self.terms if not t.is_file))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.pos, self.layer_count = text, 0, 0

    def fail(self, pos: int, reason: str) -> NoReturn:
        raise ExpressionError(self.text, pos, reason)

    def peek(self, ahead: int = 0) -> str:
        return self.text[self.pos + ahead : self.pos + ahead + 1]

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expression(self) -> Expression:
        self.ws()
        if self.pos == len(self.text):
            self.fail(0, "empty steering expression")
        terms = [self.term(self.operator() if self.peek() in _SIGNS else 1.0)]
        while True:
            self.ws()
            if self.pos == len(self.text):
                return Expression(tuple(terms))
            if self.peek() not in _SIGNS:
                self.fail(self.pos, f"unexpected {self.peek()!r}")
            terms.append(self.term(self.operator()))

    def operator(self) -> float:
        at, op = self.pos, self.peek()
        self.pos += 1
        self.ws()
        if self.pos == len(self.text):
            self.fail(at, f"dangling {op!r} with no term after it")
        if self.peek() in _SIGNS:
            self.fail(self.pos, f"unexpected {self.peek()!r}: two operators in a row")
        return -1.0 if op == "-" else 1.0

    def term(self, coeff: float) -> TermExpr:
        start = self.pos
        if self.peek() in _DIGITS or (self.peek() == "." and self.peek(1) in _DIGITS):
            end = _scan_number(self.text, start)
            coeff *= self.number(start, end)
            self.pos = end
            if self.peek() in _LETTERS:
                self.fail(start, "names cannot start with a digit")
            self.ws()
            if self.peek() != "*":
                self.fail(self.pos, "expected '*' after the coefficient")
            self.pos += 1
            self.ws()
        c = self.peek()
        if self.text.startswith("file:", self.pos):
            source = "file:" + self.path()
        elif c in _LETTERS:
            end = _scan_name(self.text, self.pos)
            source = self.text[self.pos : end]
            if source == "file":
                self.fail(self.pos, "'file' is reserved: write file:<path>")
            self.pos = end
        elif c in _DIGITS:
            self.fail(self.pos, "names cannot start with a digit")
        else:
            self.fail(self.pos, f"unexpected {c!r}" if c else "expected a name or file:<path>")
        layers = self.layers() if self.peek() == "@" else None
        if self.peek() == ":":
            coeff *= self.suffix()
        if not math.isfinite(coeff):
            self.fail(start, "the coefficients multiply to more than a float can hold")
        return TermExpr(source, coeff, layers)

    def number(self, start: int, end: int) -> float:
        value = float(self.text[start:end])
        if not math.isfinite(value):
            self.fail(
                start, f"bad number {_short(self.text[start:end])}: coefficients must be finite"
            )
        return value

    def suffix(self) -> float:
        at = self.pos + 1
        end = _scan_number(self.text, at, signed=True)
        if end == at or self.text[end : end + 1] in _WORD_DOT:
            tok_end = _skip(self.text, max(end, at + (self.peek(1) in _SIGNS)), _WORD_DOT)
            tok = self.text[at:tok_end]
            if tok.lstrip("+-").lower() in ("nan", "inf", "infinity"):
                self.fail(at, f"bad number {_short(tok)}: coefficients must be finite")
            if tok.lstrip("+-"):
                self.fail(at, f"bad number {_short(tok)}")
            c = self.peek(1)
            self.fail(at, f"unexpected {c!r}" if c and c not in _SIGNS else "expected a number")
        self.pos = end
        return self.number(at, end)

    def layers(self) -> tuple[int, ...]:
        self.pos += 1
        found: set[int] = set()
        while True:
            at, first = self.pos, self.layer()
            last = first
            if self.peek() == "-":
                self.pos += 1
                last = self.layer()
                if first > last:
                    self.fail(at, f"bad layer range {first}-{last}: the start is after the end")
            found.update(range(first, last + 1))
            self.layer_count += last - first + 1
            if self.layer_count > MAX_LAYER_COUNT:
                self.fail(at, f"more than {MAX_LAYER_COUNT} layers in all")
            if self.peek() != ",":
                return tuple(sorted(found))
            self.pos += 1

    def layer(self) -> int:
        at, end = self.pos, _skip(self.text, self.pos, _DIGITS)
        if end == at:
            if self.peek() == "-" and self.peek(1) in _DIGITS:
                self.fail(at, "layers cannot be negative")
            prev = self.text[at - 1]
            self.fail(at, "empty layer list" if prev == "@" else f"expected a layer after {prev!r}")
        digits = self.text[at:end].lstrip("0")
        if len(digits) > 6 or int(digits or "0") > MAX_LAYER:
            self.fail(at, f"layer number is too large (at most {MAX_LAYER})")
        self.pos = end
        return int(digits or "0")

    def path(self) -> str:
        text, at = self.text, self.pos + 5
        if text[at : at + 1] == '"':
            out, i = [], at + 1
            while i < len(text) and text[i] != '"':
                i += text[i] == "\\" and text[i + 1 : i + 2] in ('"', "\\")
                if not text[i].isprintable():
                    self.fail(i, f"unexpected {text[i]!r} in file path")
                out.append(text[i])
                i += 1
            if i == len(text):
                self.fail(at, "unterminated quote in file path")
            path, self.pos = "".join(out), i + 1
        else:
            end = at
            while end < len(text) and text[end].isprintable() and text[end] not in ' "':
                end += 1
            stop, colon = end, text.rfind(":", at, end)
            if colon >= 0 and _tail_is_number(text, colon, end):
                stop = colon
            sign_at = text.rfind("@", at, stop)
            if sign_at >= 0 and text[sign_at + 1 : sign_at + 2] in _DIGITS:
                stop = sign_at if all(c in _LAYER_CHARS for c in text[sign_at:stop][1:]) else stop
            path, self.pos = text[at:stop], stop
        if not path:
            self.fail(at, "empty file path")
        return path


def parse(text: str) -> Expression:
    """Parse a steering expression; raises ``ExpressionError`` pointing at the bad character.
    Parsed expressions are immutable and memoised: a string used on every call parses once."""
    if not isinstance(text, str):
        raise ExpressionError("", 0, f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(text, MAX_LENGTH, f"expression is over {MAX_LENGTH} characters")
    return _parse(text)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Expression:
    return _Parser(text).expression()


def is_expression(text: str) -> bool:
    """True when ``text`` parses as a steering expression."""
    try:
        parse(text)
    except ExpressionError:
        return False
    return True


def suggest(name: str, known: Iterable[str]) -> str | None:
    """A "did you mean" for an unknown name: ``love - hate`` for ``love-hate``, else the closest."""
    known = list(dict.fromkeys(known))
    if name in known:
        return None
    parts, names = name.split("-"), set(known)
    splits: list[list[str] | None] = [[]] + [None] * len(parts)
    for i in range(1, len(parts) + 1):
        for j in range(i):
            if splits[j] is not None and "-".join(parts[j:i]) in names:
                splits[i] = [*splits[j], "-".join(parts[j:i])]  # type: ignore[misc]
                break
    if len(parts) > 1 and splits[-1]:
        return " - ".join(splits[-1])
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None

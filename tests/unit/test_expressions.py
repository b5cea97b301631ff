"""The steering-expression parser: examples, error positions, canonical forms and round trips."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actsteer.core.expressions import (
    MAX_LAYER,
    Expression,
    ExpressionError,
    TermExpr,
    is_expression,
    parse,
    suggest,
)
from actsteer.errors import SteeringSpecError

T = TermExpr

EXAMPLES = [
    ("json", [T("json")]),
    ("json:4", [T("json", 4.0)]),
    ("0.5*love - formal", [T("love", 0.5), T("formal", -1.0)]),
    ("json:4 + no-disclaimer:2", [T("json", 4.0), T("no-disclaimer", 2.0)]),
    ("talk_about_dogs + gpt2-style", [T("talk_about_dogs"), T("gpt2-style")]),
    ("love-hate", [T("love-hate")]),
    ("love -hate", [T("love"), T("hate", -1.0)]),
    ("love- hate", [T("love"), T("hate", -1.0)]),
    ("love-2", [T("love-2")]),
    ("love:2-dogs", [T("love", 2.0), T("dogs", -1.0)]),
    ("french@8-14:3", [T("french", 3.0, tuple(range(8, 15)))]),
    ("french@8", [T("french", 1.0, (8,))]),
    ("x@2,4,6-9", [T("x", 1.0, (2, 4, 6, 7, 8, 9))]),
    ("x@9,2,2,3-4", [T("x", 1.0, (2, 3, 4, 9))]),
    ("x@0-0,00100000", [T("x", 1.0, (0, MAX_LAYER))]),
    ("file:path/to/vector.safetensors:2", [T("file:path/to/vector.safetensors", 2.0)]),
    ("file:/abs/path/v.gguf", [T("file:/abs/path/v.gguf")]),
    ("file:C:/x/v.safetensors:1.5", [T("file:C:/x/v.safetensors", 1.5)]),
    ("file:C:/x/v.safetensors", [T("file:C:/x/v.safetensors")]),
    ("file:vecs/love.safetensors@6-8:2", [T("file:vecs/love.safetensors", 2.0, (6, 7, 8))]),
    ('file:"my dir/v.safetensors":2', [T("file:my dir/v.safetensors", 2.0)]),
    ('file:"a\\"b\\\\c\\d"', [T('file:a"b\\c\\d')]),
    ("file:a-b.safetensors - love", [T("file:a-b.safetensors"), T("love", -1.0)]),
    ("file:a+b.gguf + x", [T("file:a+b.gguf"), T("x")]),
    ("file:me@host/v.gguf", [T("file:me@host/v.gguf")]),
    ("file:data:x", [T("file:data:x")]),
    ("file:x:", [T("file:x:")]),
    ("2*file:v.gguf:3", [T("file:v.gguf", 6.0)]),
    ("-love", [T("love", -1.0)]),
    ("- 2*love", [T("love", -2.0)]),
    ("+love", [T("love")]),
    ("2 * love:0.5", [T("love", 1.0)]),
    ("1e-1*love", [T("love", 0.1)]),
    (".5*love:2.", [T("love", 1.0)]),
    ("love:-1", [T("love", -1.0)]),
    ("love:+3E+2", [T("love", 300.0)]),
    ("love:0", [T("love", 0.0)]),
    ("-love:0", [T("love", 0.0)]),
    ("  love  +  dogs  ", [T("love"), T("dogs")]),
    ("love+dogs-cats", [T("love"), T("dogs-cats")]),
    ("love+dogs -cats", [T("love"), T("dogs"), T("cats", -1.0)]),
    ("a\t-\nb", [T("a"), T("b", -1.0)]),
    ("love + love", [T("love"), T("love")]),
    ("File:2", [T("File", 2.0)]),
]


@pytest.mark.parametrize(("text", "terms"), EXAMPLES)
def test_examples(text: str, terms: list[TermExpr]) -> None:
    e = parse(text)
    assert e == Expression(tuple(terms))
    assert is_expression(text)
    assert parse(e.canonical()) == e


CANONICAL = [
    ("json", "json"),
    ("json:4", "json:4"),
    ("0.5*love - formal", "love:0.5 - formal"),
    ("  love  +  dogs  ", "love + dogs"),
    ("-love", "-love"),
    ("- 2*love", "-love:2"),
    ("love + 2*dogs", "love + dogs:2"),
    ("2 * love:0.5", "love"),
    ("love:-1 - x:-3", "-love + x:3"),
    ("love:1e-1", "love:0.1"),
    ("love:1e20", "love:1e+20"),
    ("-love:0", "love:0"),
    ("french@8-14:3", "french@8-14:3"),
    ("x@9,2,4,6-9,3", "x@2-4,6-9"),
    ("x@1,2", "x@1-2"),
    ('file:"my dir/v.safetensors":2', 'file:"my dir/v.safetensors":2'),
    ('file:"a.safetensors"', "file:a.safetensors"),
    ('file:"data:5"', 'file:"data:5"'),
    ('file:"a@1"', 'file:"a@1"'),
    ('file:"a\\"b"', 'file:"a\\"b"'),
    ("file:C:\\x\\v.safetensors:1.5", "file:C:\\x\\v.safetensors:1.5"),
    ("file:vecs/love.safetensors@8,6-7:2", "file:vecs/love.safetensors@6-8:2"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical(text: str, canonical: str) -> None:
    e = parse(text)
    assert e.canonical() == canonical == str(e)
    assert parse(canonical) == e


ERRORS = [
    ("", 0, "empty steering expression"),
    ("   ", 0, "empty steering expression"),
    ("love +", 5, "dangling '+'"),
    ("-", 0, "dangling '-'"),
    ("love:x", 5, "bad number 'x'"),
    ("love:4x", 5, "bad number '4x'"),
    ("love:1e", 5, "bad number '1e'"),
    ("love:1e999", 5, "must be finite"),
    ("9" * 400 + "*love", 0, "bad number '99999999999999999999...': coefficients must be finite"),
    ("love:nan", 5, "must be finite"),
    ("love:-inf", 5, "must be finite"),
    ("1e999*love", 0, "must be finite"),
    ("1e200*love:1e200", 0, "more than a float can hold"),
    ("love:", 5, "expected a number"),
    ("love:-", 5, "expected a number"),
    ("json::4", 5, "unexpected ':'"),
    ("love : 2", 5, "unexpected ':'"),
    ("love:2@3", 6, "unexpected '@'"),
    ("love@", 5, "empty layer list"),
    ("love@ 3", 5, "empty layer list"),
    ("love@9-3", 5, "bad layer range 9-3"),
    ("love@1,9-3", 7, "bad layer range"),
    ("love@-1", 5, "cannot be negative"),
    ("love@3--1", 7, "cannot be negative"),
    ("love@8-", 7, "expected a layer after '-'"),
    ("love@8,", 7, "expected a layer after ','"),
    ("love@100001", 5, "too large"),
    ("love@1-" + "9" * 5000, 7, "too large"),
    ("file:", 5, "empty file path"),
    ("file::2", 5, "empty file path"),
    ("file:@3:2", 5, "empty file path"),
    ('file:""', 5, "empty file path"),
    ("love + file: + x", 12, "empty file path"),
    ('file:"abc', 5, "unterminated quote"),
    ('file:"a\tb"', 7, "in file path"),
    ('file:a"b', 6, "unexpected '\"'"),
    ("file:v@9-3", 7, "bad layer range"),
    ("file:v:1e999", 7, "must be finite"),
    ("love; rm -rf", 4, "unexpected ';'"),
    ("love\x00", 4, "unexpected '\\x00'"),
    ("love + + dogs", 7, "two operators in a row"),
    ("love - -dogs", 7, "two operators in a row"),
    ("--love", 1, "two operators in a row"),
    ("2love", 0, "cannot start with a digit"),
    ("love + 3dogs", 7, "cannot start with a digit"),
    ("2*3love", 2, "cannot start with a digit"),
    ("2 love", 2, "expected '*'"),
    ("2", 1, "expected '*'"),
    ("2*", 2, "expected a name"),
    ("*love", 0, "unexpected '*'"),
    ("love*2", 4, "unexpected '*'"),
    ("love dogs", 5, "unexpected 'd'"),
    ("file", 0, "'file' is reserved"),
    ("file@3", 0, "'file' is reserved"),
    ("lové", 3, "unexpected 'é'"),
    ("x" * 10_001, 10_000, "over 10000 characters"),
]


@pytest.mark.parametrize(("text", "position", "message"), ERRORS)
def test_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse(text)
    err = info.value
    assert err.position == position
    assert err.text == text
    assert message in str(err)
    assert f"at position {position}" in str(err)
    assert isinstance(err, SteeringSpecError) and isinstance(err, ValueError)
    assert not is_expression(text)


def test_error_message_points_at_the_bad_token() -> None:
    with pytest.raises(ExpressionError) as info:
        parse("json::4")
    assert str(info.value) == (
        "cannot parse steering expression: unexpected ':' at position 5\n  json::4\n       ^"
    )


def test_long_error_message_is_windowed() -> None:
    text = "a + " * 30 + "b;" + " + c" * 30
    with pytest.raises(ExpressionError) as info:
        parse(text)
    _, shown, caret = str(info.value).split("\n")
    assert shown.startswith("  ...") and shown.endswith("...") and len(shown) < 100
    assert shown[caret.index("^")] == ";"


def test_error_pickles() -> None:
    with pytest.raises(ExpressionError) as info:
        parse("love +")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.text, copy.position, str(copy)) == ("love +", 5, str(info.value))


def test_non_string() -> None:
    with pytest.raises(ExpressionError, match="expected a string"):
        parse(3)  # type: ignore[arg-type]
    assert not is_expression(None)  # type: ignore[arg-type]


def test_term_properties_and_names() -> None:
    e = parse("love + file:v.gguf - 2*dogs + love@3")
    assert e.names() == ("love", "dogs")
    f = e.terms[1]
    assert f.is_file and f.path == "v.gguf" and f.source == "file:v.gguf"
    assert not e.terms[0].is_file and e.terms[0].path is None
    assert e.terms[2].canonical() == "-dogs:2"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"source": "love hate"},
        {"source": "-love"},
        {"source": "2love"},
        {"source": "file"},
        {"source": "file:"},
        {"source": "file:a\nb"},
        {"source": "love", "coeff": float("nan")},
        {"source": "love", "coeff": float("inf")},
        {"source": "love", "layers": ()},
        {"source": "love", "layers": (-1,)},
        {"source": "love", "layers": (MAX_LAYER + 1,)},
    ],
)
def test_term_validation(kwargs: dict) -> None:
    with pytest.raises(SteeringSpecError):
        TermExpr(**kwargs)


def test_term_normalises() -> None:
    t = TermExpr("x", -0.0, (3, 1, 3))
    assert t.layers == (1, 3) and str(t.coeff) == "0.0"
    with pytest.raises(SteeringSpecError):
        Expression(())


def test_suggest() -> None:
    known = ["love", "hate", "no-disclaimer", "json"]
    assert suggest("lvoe", known) == "love"
    assert suggest("love-hate", known) == "love - hate"
    assert suggest("no-disclaimer-love", iter(known)) == "no-disclaimer - love"
    assert suggest("love-hate-json", known) == "love - hate - json"
    assert suggest("love", known) is None
    assert suggest("zzzz", known) is None
    assert suggest("x", []) is None


# --- properties --------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}(-[A-Za-z0-9_]{1,4}){0,2}", fullmatch=True)
names = names.filter(lambda s: s != "file")
path_chars = st.one_of(
    st.sampled_from(list("ab/.-_: @\"'\\,+~;0123456789eE")),
    st.characters().filter(str.isprintable),
)
paths = st.text(path_chars, min_size=1, max_size=16)
coeffs = st.one_of(
    st.sampled_from([1.0, -1.0, 0.0, 2.0, 0.5, 5e-324, -1e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)
layer_sets = st.one_of(
    st.none(),
    st.frozensets(st.integers(0, 40), min_size=1, max_size=8),
    st.frozensets(st.integers(0, MAX_LAYER), min_size=1, max_size=3),
)
terms = st.builds(
    TermExpr,
    source=st.one_of(names, paths.map(lambda p: "file:" + p)),
    coeff=coeffs,
    layers=layer_sets,
)
expressions = st.lists(terms, min_size=1, max_size=5).map(lambda ts: Expression(tuple(ts)))


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(expressions)
def test_canonical_round_trips(e: Expression) -> None:
    text = e.canonical()
    assert parse(text) == e
    assert parse(text).canonical() == text


junk = st.text(st.sampled_from(list('lovefil:@*+-., "\\0123456789eE;\t')), max_size=30)


@settings(deadline=None, max_examples=400)
@given(st.one_of(st.text(max_size=40), junk))
def test_arbitrary_text_parses_or_raises_expression_error(text: str) -> None:
    try:
        e = parse(text)
    except ExpressionError as err:
        assert 0 <= err.position <= len(text)
        return
    assert parse(e.canonical()) == e
    assert parse(e.canonical()).canonical() == e.canonical()

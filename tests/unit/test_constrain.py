"""Grammar-constrained decoding (``actsteer.constrain``) on tiny random models: a random model
follows any grammar it is given, each row of a merged batch its own, and nothing leaks."""

from __future__ import annotations

import json
import re

import pytest
from conftest import random_vector

from actsteer import GenerationOptions, Request, Steering
from actsteer.constrain import Constraint
from actsteer.errors import ConstraintError, ToolSpecError

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Constraint.json_schema({"type": "objekt"}), 'Unsupported type "objekt"'),
        (lambda: Constraint.json_schema("{not json"), "not valid JSON"),
        (lambda: Constraint.json_schema([1, 2]), "is a JSON object"),
        (lambda: Constraint.regex("(("), "parenthesis is not closed"),
        (lambda: Constraint.grammar('root ::= rule_that_is_missing "x"'), "is not defined"),
        (lambda: Constraint.grammar(""), "empty grammar"),
        (lambda: Constraint("xml", "<a/>"), "unknown constraint kind"),
        (lambda: Constraint.of(42), "cannot use int as a constraint"),
    ],
)
def test_bad_constraints_are_refused_where_they_are_made(make, message):
    with pytest.raises(ConstraintError, match=re.escape(message)):
        make()


def test_openai_response_formats_are_read():
    schema = Constraint.of({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
    assert schema == Constraint.json_schema(PERSON)
    assert schema.schema == PERSON  # the property order is kept: it is the order generated
    assert Constraint.of({"type": "json_object"}) == Constraint.json_object()
    assert Constraint.of({"type": "text"}) is None
    assert Constraint.of(PERSON) == Constraint.json_schema(PERSON)
    assert Constraint.regex("a+").wire() == {"regex": "a+"}


def test_a_schema_travels_as_the_grammar_compiled_here():
    """A server compiles the very grammar the local engine uses (vLLM's own ``json`` path would
    apply its server-wide whitespace setting): the EBNF accepts the compact instance only."""
    import xgrammar as xgr

    wired = Constraint.json_schema(PERSON).wire()
    assert set(wired) == {"grammar"}
    grammar = xgr.Grammar.from_ebnf(wired["grammar"])
    assert xgr.testing._is_grammar_accept_string(grammar, '{"name": "Al", "age": 3}')
    assert not xgr.testing._is_grammar_accept_string(grammar, '{"name": "Al",\n"age": 3}')
    assert not xgr.testing._is_grammar_accept_string(grammar, '{"age": 3}')


def test_a_constraint_and_tools_together_are_refused():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(ToolSpecError, match="cannot both constrain"):
        Request(_chat("x"), constraint=Constraint.json_object(), tools=[tool])
    Request(_chat("x"), constraint=Constraint.json_object(), tools=[tool], tool_choice="none")


def test_a_random_model_follows_each_rows_grammar(llama):
    opts = GenerationOptions(max_new_tokens=48)
    regex = Constraint.regex(r"(yes|no), [a-z]{2,6}\.")
    reqs = [
        Request(_chat("a"), (), opts, constraint=Constraint.json_schema(PERSON)),
        Request(_chat("b"), (), opts, constraint=regex),
        Request(
            _chat("c"), (), opts, constraint=Constraint.grammar('root ::= "x" ("y" | "z")+ "!"')
        ),
    ]
    person, answer, xyz = llama.engine.generate(reqs)
    if person.finish_reason == "stop":  # a random model may run out of tokens inside a string
        value = json.loads(person.text)
        assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert re.fullmatch(r"(yes|no), [a-z]{2,6}\.", answer.text), answer.text
    assert answer.finish_reason == "stop"
    assert re.fullmatch(r"x[yz]+!", xyz.text) or xyz.finish_reason == "length"


def test_constrained_steered_rows_in_a_merged_batch_equal_the_same_requests_alone(llama):
    v = random_vector(llama, [1, 2], 2.0)
    opts = GenerationOptions(max_new_tokens=24)
    reqs = [
        Request(_chat("one"), (Steering(v),), opts, constraint=Constraint.json_schema(PERSON)),
        Request(_chat("two"), (), opts),  # unconstrained, unsteered
        Request(_chat("three"), (Steering(v, -1.0, positions="generated"),), opts),
        Request(_chat("four"), (), opts, constraint=Constraint.regex("[0-9]{3}-[a-z]+")),
    ]
    together = llama.engine.generate(reqs)
    alone = [llama.engine.generate([r])[0] for r in reqs]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    plain = llama.engine.generate([Request(_chat("two"), (), opts)])[0]
    assert together[1].token_ids == plain.token_ids  # a neighbour's grammar leaks nothing


def test_stream_equals_non_stream_under_a_grammar(llama):
    req = Request(_chat("s"), (), GenerationOptions(max_new_tokens=30), Constraint.json_object())
    whole = llama.engine.generate([req])[0]
    items = list(llama.engine.stream(req))
    assert "".join(i for i in items if isinstance(i, str)) == whole.text
    assert items[-1].token_ids == whole.token_ids


def test_a_grammar_that_cannot_finish_reports_length_with_what_it_made(llama):
    req = Request(_chat("x"), (), GenerationOptions(max_new_tokens=5), Constraint.regex("a{50}"))
    g = llama.engine.generate([req])[0]
    assert g.finish_reason == "length"
    assert g.text == "a" * 5 and g.completion_tokens == 5


def test_sampled_rows_stay_inside_the_grammar(llama):
    opts = GenerationOptions(max_new_tokens=12, temperature=1.5, seed=3)
    req = Request(_chat("x"), (), opts, constraint=Constraint.regex("(cat|dog)s? [0-9]+"))
    texts = {llama.engine.generate([req])[0].text for _ in range(2)}
    assert len(texts) == 1  # seeded: reproducible
    assert re.fullmatch(r"(cat|dog)s? [0-9]+", texts.pop())

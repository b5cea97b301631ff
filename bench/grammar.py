"""Grammar-constrained decoding: how often replies are valid, and what the grammar costs per step.

Three parts, on the embedded model, greedy decoding, all in process through ``LocalEngine``:

1. Structured output: ``--requests`` held-out extraction requests for each of three schemas
   (person, product review, event; texts generated deterministically from small word lists),
   run in batches of ``--batch``. A reply is *valid* when it parses as JSON and validates against
   the schema (``jsonschema`` when installed, else the pydantic model in strict mode, which
   checks the same types, ranges, lengths and patterns). Conditions:
     (a) grammar: the schema as a ``Constraint.json_schema`` plus the system line that
         ``ChatSteer.with_structured_output`` sends; the whole reply must be the JSON value;
     (b) prompt + parser alone: the same messages, no constraint; the first JSON object in the
         reply is parsed (``json`` raw_decode from the first ``{``, as ``ChatSteer``'s parser
         does) and validated; LangChain's lenient ``PydanticOutputParser`` (markdown fences,
         partial JSON closed, lax type coercion) is also scored on the same replies;
     (c) the classic LangChain recipe: ``PydanticOutputParser.get_format_instructions()`` in the
         user turn, no constraint, scored as (b); on the first third of the requests only (its
         prompt is three times longer, and its replies run to the token limit).
   A reply cut at ``--tokens`` (finish_reason "length") counts as whatever it parses to.
2. Forced tool calls: ``--requests`` requests over three tools, half with
   ``tool_choice="required"``, half naming the tool. *Well formed*: at least one ``ToolCall``,
   no ``invalid_tool_calls``, every call names a bound tool (the named one when forced by name)
   and its arguments validate against that tool's parameters schema. Compared with the same
   prompt (the generic tools block) under ``tool_choice="none"``, i.e. no grammar, the reply
   parsed by the same Hermes parser.
3. Grammar cost, measured side by side in interleaved rounds (``--rounds``), ``--cost-tokens``
   new tokens for every row: batch 1 (three prompts, one per schema, one at a time,
   unconstrained vs constrained) and batch ``--batch`` (the same rows all unconstrained vs
   mixed: rows of the three schemas plus a quarter of the rows unconstrained). A forward hook on
   the model timestamps every generate step; a decode step is the time between two forwards
   (the forward, the logits processors, the stopping checks). Constrained replies end earlier
   than free ones, so tokens/s of the two is not comparable and the cost is taken over the
   decode steps both conditions ran (the same step positions and cache lengths): constrained /
   unconstrained time - 1, per round, median over rounds. The grammar processor is also timed
   inside those generates (``RowGrammars`` setup and calls) and divided by the unconstrained
   decode step: its share of a step, much less noisy than the end-to-end difference.
One torch thread by default (``--threads``): on a shared 2-core machine two OpenMP threads lose
up to 4x whenever another process runs, which swamps a few-percent difference.
Writes bench/results/grammar.json and grammar.png (about 20 minutes on 2 CPU cores).
Run: ``make bench`` or ``.venv/bin/python bench/grammar.py [--requests N] [--rounds N]
[--tokens N] [--cost-tokens N] [--batch N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, save_plot, summary, write
from langchain_core.output_parsers import PydanticOutputParser

from actsteer import GenerationOptions, Request, SteeredModel
from actsteer.constrain.decode import Grammars, RowGrammars
from actsteer.constrain.spec import Constraint
from actsteer.tools.formats import format_for
from actsteer.tools.spec import ToolSpec
from langchain_steer.structured import _instructions

try:
    import jsonschema
except ImportError:  # not a dependency: pydantic's strict validation checks the same things
    jsonschema = None


# -- schemas ------------------------------------------------------------------------------------
class Person(BaseModel):
    name: str
    age: int


class Review(BaseModel):
    product: str
    rating: int = Field(ge=1, le=5)
    pros: list[str] = Field(min_length=1, max_length=3)


class Event(BaseModel):
    title: str
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="YYYY-MM-DD")
    attendees: int
    online: bool


class GetWeather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


class ConvertCurrency(BaseModel):
    amount: float
    from_currency: str = Field(pattern=r"^[A-Z]{3}$")
    to_currency: str = Field(pattern=r"^[A-Z]{3}$")


class BookTable(BaseModel):
    restaurant: str
    people: int = Field(ge=1, le=20)
    time: str = Field(pattern=r"^\d{2}:\d{2}$", description="HH:MM, 24-hour")


SCHEMAS: dict[str, type[BaseModel]] = {"person": Person, "review": Review, "event": Event}
TOOLS: dict[str, tuple[type[BaseModel], str]] = {
    "get_weather": (GetWeather, "Get the current weather in a city."),
    "convert_currency": (ConvertCurrency, "Convert an amount of money between two currencies."),
    "book_table": (BookTable, "Book a table at a restaurant."),
}

# -- held-out requests (deterministic) ----------------------------------------------------------
NAMES = ["Maria Lopez", "Tom Becker", "Aiko Tanaka", "Samuel Okafor", "Elena Petrova",
         "Lucas Martin", "Priya Sharma", "Jonas Berg", "Fatima Haddad", "Oliver Grant",
         "Chen Wei", "Sofia Rossi"]  # fmt: skip
JOBS = ["nurse", "teacher", "pilot", "baker", "engineer", "lawyer", "farmer", "chemist"]
CITIES = ["Madrid", "Toronto", "Osaka", "Lagos", "Prague", "Lyon", "Pune", "Bergen", "Cairo"]
PERSON_TEXTS = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}: {age} years old, works as a {job} in {city}.",
    "Our new {job}, {name}, turned {age} last month.",
    "{name} ({age}) has lived in {city} for years and works as a {job}.",
]
PRODUCTS = ["Aurora desk lamp", "TrailMax hiking boots", "Brewly coffee grinder",
            "Nimbus rain jacket", "EchoBuds earphones", "Zest blender", "Orbit office chair",
            "Pico travel kettle"]  # fmt: skip
PROS = ["sturdy build", "easy to clean", "great battery life", "quiet", "good value",
        "light weight", "fast shipping", "looks nice"]  # fmt: skip
RATING_WORDS = {1: "Really disappointing", 2: "Not great", 3: "It is okay", 4: "Pretty good",
                5: "Absolutely love it"}  # fmt: skip
REVIEW_TEXTS = [
    "I bought the {product} last week. {words}, {rating} out of 5. I liked that it is {pros}.",
    "Review of the {product}: {rating}/5 stars. {words}. Pros: {pros}.",
    "{words}! The {product} gets {rating} stars from me; {pros}.",
]
EVENTS = ["Spring Hackathon", "Quarterly Town Hall", "Jazz Night", "Python Meetup",
          "Charity Fun Run", "Product Launch", "Book Club", "Data Science Workshop"]  # fmt: skip
VENUES = ["the main hall", "Room 204", "the community centre", "the rooftop terrace"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
EVENT_TEXTS = [
    "Join us for the {title} on {date}. About {n} people are expected; it is {where}.",
    "Reminder: {title}, {date}, {where}. Headcount so far: {n}.",
    "The {title} takes place on {date} ({where}) with {n} attendees registered.",
]
TASKS = {
    "person": "Extract the person's name and age from this text:\n",
    "review": "Extract the product, its rating and what the reviewer liked from this review:\n",
    "event": "Extract the event's title, date, number of attendees and whether it is online:\n",
}


def structured_requests(kind: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` user texts for a schema and the field values they state (for accuracy)."""
    rng = random.Random(f"grammar-{kind}")
    out = []
    for i in range(n):
        if kind == "person":
            name, age = NAMES[i % len(NAMES)], rng.randint(19, 78)
            text = PERSON_TEXTS[i % len(PERSON_TEXTS)].format(
                name=name, age=age, job=rng.choice(JOBS), city=rng.choice(CITIES)
            )
            truth = {"name": name, "age": age}
        elif kind == "review":
            product, rating = PRODUCTS[i % len(PRODUCTS)], rng.randint(1, 5)
            pros = " and ".join(rng.sample(PROS, 2))
            text = REVIEW_TEXTS[i % len(REVIEW_TEXTS)].format(
                product=product, rating=rating, words=RATING_WORDS[rating], pros=pros
            )
            truth = {"product": product, "rating": rating}
        else:
            title, n_people = EVENTS[i % len(EVENTS)], rng.randint(5, 400)
            month, day = rng.randint(1, 12), rng.randint(1, 28)
            iso = f"2025-{month:02d}-{day:02d}"
            date = iso if i % 2 == 0 else f"{MONTHS[month - 1]} {day}, 2025"
            online = rng.random() < 0.5
            where = "online, over video call" if online else f"in person at {rng.choice(VENUES)}"
            text = EVENT_TEXTS[i % len(EVENT_TEXTS)].format(
                title=title, date=date, n=n_people, where=where
            )
            truth = {"title": title, "date": iso, "attendees": n_people, "online": online}
        out.append((TASKS[kind] + text, truth))
    return out


WEATHER_TEXTS = ["What's the weather like in {city} right now, in {unit}?",
                 "Is it cold in {city} today? Give me the temperature in {unit}.",
                 "Flying to {city} tomorrow. Current weather there, {unit} please."]  # fmt: skip
CURRENCY_TEXTS = ["How much is {amount} {src} in {dst}?",
                  "Convert {amount} {src} to {dst} for me.",
                  "I have {amount} {src}; what is that in {dst}?"]  # fmt: skip
BOOKING_TEXTS = ["Book a table for {people} at {restaurant} at {time}.",
                 "Can you reserve {restaurant} for {people} people, {time}?",
                 "We are {people}; get us a table at {restaurant} for {time}."]  # fmt: skip
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD", "INR"]
RESTAURANTS = ["Chez Marcel", "The Green Fig", "Sakura House", "Luigi's", "Casa Verde"]


def tool_requests(n: int) -> list[tuple[str, str, str]]:
    """``n`` (user text, the tool it asks for, tool_choice): even rows "required", odd rows
    the tool's name."""
    rng = random.Random("grammar-tools")
    names = list(TOOLS)
    out = []
    for i in range(n):
        tool = names[i % len(names)]
        k = (i // len(names)) % 3
        if tool == "get_weather":
            text = WEATHER_TEXTS[k].format(
                city=rng.choice(CITIES), unit=rng.choice(["celsius", "fahrenheit"])
            )
        elif tool == "convert_currency":
            src, dst = rng.sample(CURRENCIES, 2)
            text = CURRENCY_TEXTS[k].format(amount=rng.choice([20, 75, 120, 350, 1000]), src=src,
                                            dst=dst)  # fmt: skip
        else:
            text = BOOKING_TEXTS[k].format(
                people=rng.randint(2, 8),
                restaurant=rng.choice(RESTAURANTS),
                time=f"{rng.randint(18, 21)}:{rng.choice(['00', '30'])}",
            )
        out.append((text, tool, "required" if i % 2 == 0 else tool))
    return out


# -- validation ---------------------------------------------------------------------------------
VALIDATOR = "jsonschema" if jsonschema is not None else "pydantic (strict)"


def valid(model: type[BaseModel], value: Any) -> bool:
    """Whether a parsed JSON value is an instance of the model's JSON schema."""
    if jsonschema is not None:
        return jsonschema.Draft202012Validator(model.model_json_schema()).is_valid(value)
    try:
        model.model_validate(value, strict=True)
    except ValidationError:
        return False
    return True


def whole_json(text: str) -> tuple[bool, Any]:
    """The reply is exactly one JSON value (what a grammar promises)."""
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def first_object(text: str) -> tuple[bool, Any]:
    """The first JSON object in the reply (``ChatSteer``'s structured-output parser)."""
    start = text.find("{")
    if start < 0:
        return False, None
    try:
        return True, json.JSONDecoder().raw_decode(text[start:])[0]
    except ValueError:
        return False, None


def langchain_parse(model: type[BaseModel], text: str) -> Any:
    """LangChain's ``PydanticOutputParser`` (lenient): the instance, or None."""
    try:
        return PydanticOutputParser(pydantic_object=model).parse(text)
    except Exception:  # OutputParserException and anything odd
        return None


def correct(value: Any, truth: dict[str, Any]) -> bool:
    """All stated fields extracted right (strings compared case-insensitively)."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return False

    def same(a: Any, b: Any) -> bool:
        if isinstance(b, str):
            return isinstance(a, str) and a.strip().lower() == b.lower()
        return type(a) is type(b) and a == b

    return all(same(value.get(k), v) for k, v in truth.items())


# -- part 1: structured output ------------------------------------------------------------------
def run_stats(gens: list, took: float, bad: list[dict[str, Any]]) -> dict[str, Any]:
    """What every condition reports besides its scores: count, finish reasons, reply length,
    time, and a few failures to read."""
    return {
        "n": len(gens),
        "finish_reasons": dict(Counter(g.finish_reason for g in gens)),
        "completion_tokens_mean": statistics.fmean(g.completion_tokens for g in gens),
        "seconds": took,
        "invalid_examples": bad,
    }


def run_chunks(sm: SteeredModel, requests: list[Request], batch: int) -> list:
    gens = []
    for i in range(0, len(requests), batch):
        gens += sm.engine.generate(requests[i : i + batch])
    return gens


def structured(sm: SteeredModel, args: argparse.Namespace) -> dict[str, Any]:
    options = GenerationOptions(max_new_tokens=args.tokens, temperature=0.0)
    out: dict[str, Any] = {}
    for kind, model in SCHEMAS.items():
        schema = model.model_json_schema()
        system = _instructions(schema)
        lc_format = PydanticOutputParser(pydantic_object=model).get_format_instructions()
        items = structured_requests(kind, args.requests)
        chats = {
            "a_grammar": [[{"role": "system", "content": system},
                           {"role": "user", "content": t}] for t, _ in items],
            "b_prompt_parser": [[{"role": "system", "content": system},
                                 {"role": "user", "content": t}] for t, _ in items],
            "c_langchain_format_instructions": [
                [{"role": "user", "content": f"{t}\n\n{lc_format}"}]
                for t, _ in items[: max(1, len(items) // 3)]  # a third: its prompt is long
            ],
        }  # fmt: skip
        out[kind] = {"schema": schema}
        for cond, prompts in chats.items():
            constraint = Constraint.json_schema(schema) if cond == "a_grammar" else None
            reqs = [Request(p, options=options, constraint=constraint) for p in prompts]
            start = time.perf_counter()
            gens = run_chunks(sm, reqs, args.batch)
            took = time.perf_counter() - start
            parse = whole_json if cond == "a_grammar" else first_object
            strict_ok, lc_ok, right, bad = 0, 0, 0, []
            for g, (_, truth) in zip(gens, items):
                parsed, value = parse(g.text)
                ok = parsed and valid(model, value)
                strict_ok += ok
                lc_value = langchain_parse(model, g.text)
                lc_ok += lc_value is not None
                right += ok and correct(value, truth)
                if not ok and len(bad) < 3:
                    bad.append({"text": g.text[:240], "finish_reason": g.finish_reason})
            n = len(gens)
            out[kind][cond] = {
                "valid": strict_ok / n,
                "valid_langchain_parser": lc_ok / n,
                "valid_and_fields_correct": right / n,
                **run_stats(gens, took, bad),
            }
            print(
                f"structured {kind:<7} {cond:<32} valid {strict_ok}/{n} "
                f"(LangChain parser {lc_ok}/{n}, fields right {right}/{n}), "
                f"finish {out[kind][cond]['finish_reasons']}, {took:.0f} s",
                flush=True,
            )
    return out


# -- part 2: forced tool calls ------------------------------------------------------------------
def tool_specs() -> list[ToolSpec]:
    return [
        ToolSpec.of(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": desc,
                    "parameters": model.model_json_schema(),
                },
            }
        )
        for name, (model, desc) in TOOLS.items()
    ]


def tools(sm: SteeredModel, args: argparse.Namespace) -> dict[str, Any]:
    options = GenerationOptions(max_new_tokens=args.tokens, temperature=0.0)
    specs = tool_specs()
    fmt = format_for(sm.tokenizer)
    items = tool_requests(args.requests)
    out: dict[str, Any] = {"tools": [s.openai() for s in specs], "format": fmt.name}
    for cond in ("a_forced_grammar", "b_prompt_parser"):
        reqs = [
            Request(
                [{"role": "user", "content": text}],
                options=options,
                tools=specs,
                tool_choice=choice if cond == "a_forced_grammar" else "none",
            )
            for text, _, choice in items
        ]
        start = time.perf_counter()
        gens = run_chunks(sm, reqs, args.batch)
        took = time.perf_counter() - start
        formed, one, right, bad = 0, 0, 0, []
        by_choice: dict[str, list[int]] = {"required": [0, 0], "named": [0, 0]}
        for g, (_, tool, choice) in zip(gens, items):
            calls, invalid = g.tool_calls, g.invalid_tool_calls
            if cond == "b_prompt_parser":  # no grammar: the same Hermes parser on the text
                _, calls, invalid = fmt.parse(g.text, specs)
            ok = (
                bool(calls)
                and not invalid
                and all(
                    c.name in TOOLS
                    and (choice == "required" or c.name == choice)
                    and valid(TOOLS[c.name][0], c.arguments)
                    for c in calls
                )
            )
            formed += ok
            one += ok and len(calls) == 1
            right += ok and calls[0].name == tool
            key = "required" if choice == "required" else "named"
            by_choice[key][0] += ok
            by_choice[key][1] += 1
            if not ok and len(bad) < 3:
                bad.append({"text": g.text[:240], "finish_reason": g.finish_reason})
        n = len(gens)
        out[cond] = {
            "well_formed": formed / n,
            "exactly_one_call": one / n,
            "right_tool": right / n,
            "well_formed_by_choice": {
                k: ok / max(total, 1) for k, (ok, total) in by_choice.items()
            },
            **run_stats(gens, took, bad),
        }
        print(
            f"tools {cond:<18} well formed {formed}/{n} (one call {one}/{n}, right tool "
            f"{right}/{n}), finish {out[cond]['finish_reasons']}, {took:.0f} s",
            flush=True,
        )
    return out


# -- part 3: grammar cost -----------------------------------------------------------------------
class StepClock:
    """A timestamp at the end of every forward of the model: one per generate step (the first
    is the prefill), so the differences are whole decode steps, logits processors included."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.times: list[float] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.times.append(time.perf_counter())

    def take(self) -> list[float]:
        times, self.times = self.times, []
        return times


class ProcessorClock:
    """Times the grammar logits processor inside the real generates: ``RowGrammars`` setup
    (a matcher per constrained row) and each call (accept the rows' last tokens, fill their
    bitmasks, mask the logits). Patches the class for the cost part only."""

    def __init__(self) -> None:
        self.setup = self.calls = 0.0
        self.n = 0
        self._init, self._call = RowGrammars.__init__, RowGrammars.__call__
        clock = self

        def init(proc: Any, *a: Any, **kw: Any) -> None:
            start = time.perf_counter()
            clock._init(proc, *a, **kw)
            clock.setup += time.perf_counter() - start

        def call(proc: Any, *a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            out = clock._call(proc, *a, **kw)
            clock.calls += time.perf_counter() - start
            clock.n += 1
            return out

        RowGrammars.__init__, RowGrammars.__call__ = init, call

    def take(self) -> tuple[float, float, int]:
        out = (self.setup, self.calls, self.n)
        self.setup = self.calls = 0.0
        self.n = 0
        return out

    def remove(self) -> None:
        RowGrammars.__init__, RowGrammars.__call__ = self._init, self._call


def cost(sm: SteeredModel, args: argparse.Namespace) -> dict[str, Any]:
    kinds = list(SCHEMAS)
    prompts, constraints = [], []
    for i in range(args.batch):  # row i: schema i % 3, its own held-out text
        kind = kinds[i % len(kinds)]
        text, _ = structured_requests(kind, i // len(kinds) + 1)[-1]
        schema = SCHEMAS[kind].model_json_schema()
        prompts.append(
            [
                {"role": "system", "content": _instructions(schema)},
                {"role": "user", "content": text},
            ]
        )
        constraints.append(Constraint.json_schema(schema))
    free_rows = set(range(args.batch - max(1, args.batch // 4), args.batch))  # the last quarter
    mixed = [None if i in free_rows else c for i, c in enumerate(constraints)]
    options = GenerationOptions(max_new_tokens=args.cost_tokens, temperature=0.0)
    big = f"b{args.batch}_mixed_grammars"
    one = [[i] for i in range(len(kinds))]  # batch 1: the first prompt of each schema
    everyone = [list(range(args.batch))]
    conditions = {
        "b1_unconstrained": (one, [None] * args.batch),
        "b1_grammar": (one, constraints),
        f"b{args.batch}_unconstrained": (everyone, [None] * args.batch),
        big: (everyone, mixed),
    }
    pairs = [("b1_unconstrained", "b1_grammar"), (f"b{args.batch}_unconstrained", big)]
    clock, grammar_clock = StepClock(sm.model), ProcessorClock()
    # per condition and round: each generate's decode step durations (s), and call totals
    steps: dict[str, list[list[list[float]]]] = {n: [] for n in conditions}
    calls: dict[str, list[dict[str, float]]] = {n: [] for n in conditions}
    last: dict[str, list] = {}

    def measure(name: str) -> None:
        groups, cons = conditions[name]
        durations, took, prefill, tokens, gens_all = [], 0.0, 0.0, 0, []
        setup = in_steps = 0.0
        for rows in groups:
            reqs = [Request(prompts[i], options=options, constraint=cons[i]) for i in rows]
            clock.take()
            grammar_clock.take()
            start = time.perf_counter()
            gens = sm.engine.generate(reqs)
            took += time.perf_counter() - start
            times = clock.take()
            g_setup, g_calls, _ = grammar_clock.take()
            setup += g_setup
            in_steps += g_calls
            assert len(times) == max(g.completion_tokens for g in gens), (len(times), gens)
            prefill += times[0] - start
            durations.append([b - a for a, b in itertools.pairwise(times)])
            tokens += sum(g.completion_tokens for g in gens)
            gens_all += gens
        steps[name].append(durations)
        decode = [d for ds in durations for d in ds]
        calls[name].append(
            {
                "call_s": took,
                "to_first_token_s": prefill,
                "decode_ms_per_step": 1000 * statistics.fmean(decode),
                "tokens_per_s": tokens / took,
                "decode_steps": len(decode),
                "grammar_setup_ms": 1000 * setup,
                "grammar_processor_ms_per_step": 1000 * in_steps / (len(decode) + len(groups)),
            }
        )
        last[name] = gens_all

    try:
        for name in conditions:  # warm up every path (grammar compile, matchers, kernels)
            measure(name)
            steps[name].clear()
            calls[name].clear()
        for r in range(args.rounds):
            for free, constrained in pairs:  # alternate which goes first
                for name in (free, constrained) if r % 2 == 0 else (constrained, free):
                    measure(name)
            print(
                f"cost round {r + 1}/{args.rounds}: "
                + ", ".join(
                    f"{n}={c[-1]['decode_ms_per_step']:.1f} ms/step" for n, c in calls.items()
                ),
                flush=True,
            )
    finally:
        clock.handle.remove()
        grammar_clock.remove()

    def matched(free: str, constrained: str, r: int) -> float:
        """Constrained / unconstrained time over the decode steps both ran (same positions,
        same cache lengths), minus 1."""
        f_total = g_total = 0.0
        for f, g in zip(steps[free][r], steps[constrained][r]):
            n = min(len(f), len(g))
            f_total += sum(f[:n])
            g_total += sum(g[:n])
        return g_total / f_total - 1

    result: dict[str, Any] = {
        "measured": "a forward hook on the model timestamps every generate step; a decode step "
        "is the time between two forwards (the forward, the grammar's logits processor, "
        "stopping checks). matched_steps_cost = constrained / unconstrained time over the decode "
        "steps both conditions ran (same step positions), minus 1, per round, median over "
        "rounds. decode_ms_per_step averages all decode steps of a condition (constrained rows "
        "end earlier, so their steps have shorter caches); grammar_processor_ms_per_step is "
        "RowGrammars' own time per step inside those generates; tokens_per_s = generated "
        "tokens / call time (rows end at different lengths: not comparable between conditions)",
        "new_tokens_max": args.cost_tokens,
        "batch": args.batch,
        "constrained_rows_in_mixed_batch": args.batch - len(free_rows),
        "conditions": {
            n: {
                **{k: summary([c[k] for c in cs]) for k in cs[0]},
                "completion_tokens": [g.completion_tokens for g in last[n]],
                "finish_reasons": dict(Counter(g.finish_reason for g in last[n])),
            }
            for n, cs in calls.items()
        },
        "cost": {},
    }
    for free, constrained in pairs:
        per_round = [matched(free, constrained, r) for r in range(args.rounds)]
        all_steps = [
            g["decode_ms_per_step"] / f["decode_ms_per_step"] - 1
            for f, g in zip(calls[free], calls[constrained])
        ]
        result["cost"][constrained] = {
            "vs": free,
            "matched_steps_cost_median": statistics.median(per_round),
            "matched_steps_cost_per_round": per_round,
            "all_steps_cost_median": statistics.median(all_steps),
        }
    for free, constrained in pairs:
        step = result["conditions"][free]["decode_ms_per_step"]["median"]
        proc = result["conditions"][constrained]["grammar_processor_ms_per_step"]["median"]
        result["cost"][constrained]["processor_share_of_unconstrained_step"] = proc / step
    result["compile"] = compile_times(sm)
    return result


def compile_times(sm: SteeredModel) -> dict[str, Any]:
    """One-off costs, on a fresh compiler: xgrammar's tokenizer info, then each schema."""
    vocab = sm.model.get_output_embeddings().weight.shape[0]
    start = time.perf_counter()
    grammars = Grammars(sm.tokenizer, vocab, sm.eos_token_ids)
    out: dict[str, Any] = {"tokenizer_info_s": time.perf_counter() - start}
    for kind, model in SCHEMAS.items():
        start = time.perf_counter()
        grammars.compile(Constraint.json_schema(model.model_json_schema()))
        out[f"{kind}_schema_s"] = time.perf_counter() - start
    return out


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="per schema, and tool requests")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the cost part")
    parser.add_argument("--tokens", type=int, default=96, help="max_new_tokens, parts 1 and 2")
    parser.add_argument("--cost-tokens", type=int, default=64, help="max_new_tokens, part 3")
    parser.add_argument("--batch", type=int, default=16, help="rows per generate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's own")
    parser.add_argument("--skip", nargs="*", default=(), choices=["structured", "tools", "cost"])
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    sm = SteeredModel.default(progress=False)
    began = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "grammar",
        "model": sm.fingerprint.name,
        "requests": args.requests,
        "new_tokens_max": args.tokens,
        "cost_new_tokens_max": args.cost_tokens,
        "batch": args.batch,
        "rounds": args.rounds,
        "decoding": "greedy",
        "validator": VALIDATOR,
        "machine": machine(),
        "targets": {
            "grammar_valid": 0.99,
            "forced_tool_calls_well_formed": 1.0,
            "grammar_decode_step_cost_max": 0.05,
        },
    }
    if "structured" not in args.skip:
        result["structured"] = structured(sm, args)
        total = {}
        for cond in ("a_grammar", "b_prompt_parser", "c_langchain_format_instructions"):
            rows = [result["structured"][k][cond] for k in SCHEMAS]
            n = sum(r["n"] for r in rows)
            total[cond] = {
                key: sum(r[key] * r["n"] for r in rows) / n
                for key in ("valid", "valid_langchain_parser", "valid_and_fields_correct")
            }
            total[cond]["n"] = n
        result["structured_total"] = total
    if "tools" not in args.skip:
        result["tool_calls"] = tools(sm, args)
    if "cost" not in args.skip:
        result["grammar_cost"] = cost(sm, args)
    result["seconds"] = time.perf_counter() - began
    path = write("grammar", result)
    if "structured" in result and "tool_calls" in result and "grammar_cost" in result:
        plot(result)
    print(f"\nwrote {path} in {result['seconds']:.0f} s")


def plot(result: dict) -> None:
    """Valid replies per schema and condition, well-formed tool calls, decode step times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [3, 1.4, 2]})
    ax = axes[0]
    conds = [
        ("a_grammar", "valid", "grammar", "#3a7"),
        ("b_prompt_parser", "valid", "prompt + parser", "#999"),
        ("b_prompt_parser", "valid_langchain_parser", "prompt + lenient LC parser", "#bbb"),
        ("c_langchain_format_instructions", "valid", "LC format instr. (1/3 of requests)", "#d84"),
    ]
    kinds = [*SCHEMAS, "all"]
    width = 0.8 / len(conds)
    for j, (cond, key, label, color) in enumerate(conds):
        values = [result["structured"][k][cond][key] for k in SCHEMAS]
        values.append(result["structured_total"][cond][key])
        xs = [i + (j - (len(conds) - 1) / 2) * width for i in range(len(kinds))]
        ax.bar(xs, [100 * v for v in values], width, label=label, color=color)
        for x, v in zip(xs, values):
            ax.text(x, 100 * v + 1, f"{100 * v:.0f}", ha="center", fontsize=6)
    ax.axhline(99, color="#555", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_ylim(0, 110)
    ax.set_ylabel("valid replies (%)")
    ax.set_title(f"structured output, {result['requests']} requests per schema", fontsize=9)
    ax.legend(fontsize=7, loc="center right")

    ax = axes[1]
    tc = result["tool_calls"]
    labels, values = (
        ["grammar\n(forced)", "prompt +\nparser"],
        [
            tc["a_forced_grammar"]["well_formed"],
            tc["b_prompt_parser"]["well_formed"],
        ],
    )
    ax.bar(labels, [100 * v for v in values], color=["#3a7", "#999"])
    for x, v in enumerate(values):
        ax.text(x, 100 * v + 1, f"{100 * v:.0f}", ha="center", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel("well-formed tool calls (%)")
    ax.set_title(f"{tc['a_forced_grammar']['n']} tool requests, 3 tools", fontsize=9)

    ax = axes[2]
    gc = result["grammar_cost"]
    names = list(gc["conditions"])
    step = {n: gc["conditions"][n]["decode_ms_per_step"] for n in names}
    med = [step[n]["median"] for n in names]
    lo = [m - step[n]["min"] for n, m in zip(names, med)]
    hi = [step[n]["max"] - m for n, m in zip(names, med)]
    colors = ["#999" if "unconstrained" in n else "#3a7" for n in names]
    ax.barh(names, med, xerr=[lo, hi], color=colors)
    for y, n in enumerate(names):
        c = gc["cost"].get(n)
        if c is not None:
            text = f"  {100 * c['matched_steps_cost_median']:+.1f} %"
            ax.text(med[y] + hi[y], y, text, va="center", fontsize=8)
    ax.set_xlim(0, max(m + h for m, h in zip(med, hi)) * 1.25)
    ax.invert_yaxis()
    ax.set_xlabel("ms per decode step (median, min-max);\nlabel: cost over matched steps")
    cores, threads = result["machine"]["cpu_count"], result["machine"]["torch_threads"]
    ax.set_title(
        f"grammar cost, {gc['new_tokens_max']} new tokens ({cores} cores, {threads} thr.)",
        fontsize=9,
    )
    save_plot(fig, "grammar.png")


if __name__ == "__main__":
    main()

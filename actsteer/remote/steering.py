"""Steering as a request to a server carries it: ``RemoteSteering`` (a canonical expression and
the ``Steering`` options set on it) and ``merged``, one request's steerings as the single
``vllm_xargs["actsteer"]`` value the server's plugin reads."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.expressions import Expression, parse
from ..core.labels import layer_span
from ..core.wire import MAX_SPECS
from ..errors import SteeringSpecError


@dataclass(frozen=True)
class RemoteSteering:
    """A steering as a remote request carries it: a canonical expression and the ``Steering``
    options set on it (``None``/``False``: the default)."""

    expression: str
    coeff: float | None = None
    positions: str | None = None
    operator: str | None = None
    layers: tuple[int, ...] | None = None
    relative: bool = False
    force: bool = False

    @property
    def is_zero(self) -> bool:
        return self.coeff == 0.0

    @property
    def plain(self) -> bool:
        """Only an expression, a coefficient and positions: it merges with other plain ones."""
        return (
            self.operator in (None, "add")
            and self.layers is None
            and not self.relative
            and not self.force
        )

    def body(self) -> dict[str, Any]:
        """The fields that differ from the defaults, as the server's JSON object takes them."""
        body: dict[str, Any] = {"expression": self.expression}
        for name in ("coeff", "positions", "operator", "layers", "relative", "force"):
            value = getattr(self, name)
            if value is not None and value is not False:
                body[name] = list(value) if name == "layers" else value
        return body

    def spec(self) -> str:
        """The ``vllm_xargs["actsteer"]`` value: the expression, or JSON when options are set."""
        body = self.body()
        return self.expression if len(body) == 1 else json.dumps(body, sort_keys=True)

    def describe(self) -> str:
        """As ``Steering.describe`` prints it: coefficients folded into the terms (an ablation's
        is its strength), then the options that differ from the defaults."""
        ablate = self.operator == "ablate"
        scale = 1.0 if ablate or self.coeff is None else self.coeff
        terms = tuple(
            dataclasses.replace(t, coeff=t.coeff * scale) for t in parse(self.expression).terms
        )
        opts = [f"layers={layer_span(self.layers)}"] if self.layers else []
        opts += [f"positions={self.positions}"] if self.positions not in (None, "all") else []
        opts += [f"operator={self.operator}"] if self.operator not in (None, "add") else []
        opts += [f"strength={self.coeff if self.coeff is not None else 1.0:g}"] if ablate else []
        opts += ["relative"] if self.relative else []
        text = Expression(terms).canonical()
        return text + (f" [{', '.join(opts)}]" if opts else "")

    def key(self) -> str:
        """Content identity: the server resolves equal keys to the same steering."""
        return json.dumps(self.body(), sort_keys=True)

    def info(self) -> dict[str, Any]:
        """What this steering applies, as ``Steering.info`` reports it (names, not digests: the
        vectors are the server's)."""
        scale = 1.0 if self.operator == "ablate" or self.coeff is None else self.coeff
        return {
            "expression": self.describe(),
            "terms": [
                {
                    "name": t.canonical(),
                    "coeff": t.coeff * scale,
                    "positions": self.positions,  # None: each vector's own
                    "operator": self.operator or "add",
                }
                for t in parse(self.expression).terms
            ],
        }


def merged(steerings: Sequence[RemoteSteering]) -> str | None:
    """One request's steerings as the one ``vllm_xargs["actsteer"]`` value it carries: plain
    steerings at the same positions fold into one expression (coefficients into the terms);
    anything else goes as a JSON list of their fields."""
    if len(steerings) <= 1:
        return steerings[0].spec() if steerings else None
    if not all(s.plain for s in steerings) or len({s.positions for s in steerings}) > 1:
        if len(steerings) > MAX_SPECS:
            raise SteeringSpecError(
                f"a remote request carries at most {MAX_SPECS} steerings, got {len(steerings)}"
            )
        return json.dumps([s.body() for s in steerings], sort_keys=True)
    terms = tuple(
        dataclasses.replace(t, coeff=t.coeff * (s.coeff if s.coeff is not None else 1.0))
        for s in steerings
        for t in parse(s.expression).terms
    )
    return RemoteSteering(Expression(terms).canonical(), None, steerings[0].positions).spec()

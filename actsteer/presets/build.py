"""Rebuild the distilled preset vectors that ship for the embedded model.

    python -m actsteer.presets.build [NAME ...]

Distills each named preset (default: every ``"method": "distill"`` preset) on the embedded
SmolLM2-135M-Instruct with the preset's own settings and seed, and writes
``actsteer/presets/vectors/NAME.safetensors``. Deterministic given the seed on one machine kind;
each file's training card (``actsteer inspect FILE``) records what was measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..train.prepare import extract
from . import SHIPPED, get, list_presets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="presets to rebuild (default: all distilled)")
    args = parser.parse_args(argv)
    from ..runtime.model import SteeredModel

    names = args.names or [p.name for p in list_presets() if p.method == "distill"]
    sm = SteeredModel.default()
    folder = Path(__file__).resolve().parent / SHIPPED
    folder.mkdir(exist_ok=True)
    for name in names:
        preset = get(name)
        if preset.method != "distill":
            print(f"{name}: not a distilled preset, skipped", file=sys.stderr)
            continue
        vec = extract(sm, preset, progress=True)
        path = folder / f"{name}.safetensors"
        vec.save(path)
        card = vec.meta.extra["training"]
        print(
            f"{name}: wrote {path.name}, test fidelity {card['test_fidelity']:+.3f} "
            f"(dev {card['dev_fidelity']:+.3f}), {card['steps_run']} steps "
            f"(best {card['best_step']}), coefficient {card['coeff']:g}, {card['time_s']:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Everything that needs a live model to *make* a vector: contrastive extraction (``extract``)
and context distillation (``distill``). Only explicit preparation reaches it: a user's own
``extract.*`` call, a preset's first use in-process, ``presets.build`` and ``actsteer serve``.
Resolving a steering never imports it (``actsteer.sources`` reads prepared vectors only)."""

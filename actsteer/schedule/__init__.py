"""Continuous batching for the in-process engine: calls join a running batch at the next decode
step and leave it the step they end (``loop.Run``), each row steered at its own absolute
positions in a shared left-padded KV cache (``batch.RunningBatch``) and decoded by its own
grammar, sampler and stops (``row.LiveRow``).

Why our own scheduler and not transformers' continuous batching (``generate_batch``, checked on
transformers 5.25, CPU): its packed layout gives hooks no public per-token row map, its logits
processors get no per-request token history (grammars), it has one global sampling seed and no
stop strings, its prefix sharing reuses KV computed under another request's steering, and on
CPU its dense packed attention mask made a step 1.6-2.7x slower than a left-padded batch at
16-32 rows. A left-padded ``DynamicCache`` that rows join and leave keeps the hooks, the
per-row processors and plain ``generate``'s cost per step.
"""

"""The continuous-batching loop of the local engine, on the generation thread.

A run starts with the jobs the worker merged, and after every decode step takes the jobs that
arrived meanwhile (``worker.joiners``: any options, same engine) into the running batch: they
are prefilled and choose their first token at once, then decode with the others. Arrivals are
prefilled before the next step (after a run's first prefill too), so a call's time to first
token is at most the forward in flight when it came (a step or a prefill) plus its own
prefill. A row that ends (EOS, its ``max_new_tokens``, a stop string, its grammar, its cancel)
leaves at that step, and its job's future is set as soon as all of the job's rows have ended,
so nobody waits for a longer neighbour. The run ends when no row is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..constrain.decode import Grammars
from ..engine import Generation
from ..runtime import worker
from ..runtime.handle import ModelHandle
from .batch import RunningBatch
from .row import LiveRow


class Run:
    """One continuous run: its batch, the jobs it holds, and each job's finished rows."""

    def __init__(
        self,
        handle: ModelHandle,
        grammars: Callable[[], Grammars | None],
        key: Any,
        observers: Sequence[tuple[Callable | None, Callable | None]] = (),
    ) -> None:
        self.handle, self.grammars, self.key = handle, grammars, key
        self.observers = observers
        """The engine's observers, read as each event happens (one added mid-run counts)."""
        self.batch = RunningBatch(handle)
        self.jobs: dict[worker.Job, list[Generation | None]] = {}
        """The jobs with rows still decoding, and their rows' generations so far."""

    def run(self, group: list[worker.Job]) -> list[list[Generation]]:
        """Generate ``group`` and every job that joins, until no row is left; returns the
        group's rows (joiners' futures are set here)."""
        with torch.inference_mode():  # the rows' processors work on the forward's logits
            return self._run(group)

    def _run(self, group: list[worker.Job]) -> list[list[Generation]]:
        try:
            self._admit(group, retry_alone=False)
            self._admit_arrivals()
            while self.batch.rows:
                self._leave([i for i, r in enumerate(self.batch.rows) if r.cancel.is_set()])
                if self.batch.rows:
                    self._decide(self.batch.step())
                self._admit_arrivals()
        except BaseException as exc:  # the group's callers get it from the worker
            for job in self.jobs:
                if job not in group and not job.future.done():
                    job.future.set_exception(exc)
            raise
        finally:
            for job in self.jobs:
                for stream in _streams(job):
                    stream.end()  # a consumer never waits on a row that will not come
        return [job.future.result() for job in group]  # all answered as their rows ended

    def _admit_arrivals(self) -> None:
        """Prefill the jobs that arrived, before the next decode step, and again for those that
        arrived during that prefill: a call that comes in while another is prefilled waits for
        that prefill only, not for a decode step too (time to first token under load). Rows
        beyond ``MAX_MERGED_ROWS`` wait for room, and at most that many rows are prefilled
        between two steps, so arrivals that end at their first token (or fail) cannot hold the
        running rows' next step back for long."""
        cap = worker.MAX_MERGED_ROWS
        taken = 0
        while (room := min(cap - len(self.batch.rows), cap - taken)) > 0:
            joined = worker.joiners(self.key, room)
            if not joined:
                return
            taken += sum(job.rows for job in joined)
            self._admit(joined, retry_alone=True)

    def _admit(self, jobs: list[worker.Job], *, retry_alone: bool) -> None:
        """Prefill the jobs' rows together and give each its first token. When joiners fail
        to prefill together (say, out of memory), each gets its own try; one that fails alone
        fails its own call, and the running rows go on."""
        rows = []
        for job in jobs:
            try:
                rows += self._rows(job)
            except Exception as exc:  # this call's own options or grammar: it fails alone
                if not retry_alone:
                    raise
                self._fail(job, exc)
        if not rows:
            return
        try:
            for before, _ in list(self.observers):
                if before is not None:
                    before(len(rows))
            logits = self.batch.prefill(rows)
        except Exception as exc:
            if not retry_alone:
                raise
            if len(jobs) > 1:
                for job in jobs:
                    self._admit([job], retry_alone=True)
                return
            for job in jobs:
                self._fail(job, exc)
            return
        start = len(self.batch.rows) - len(rows)  # prefill appended the rows at the end
        self._decide(logits, first=start)

    def _decide(self, logits: torch.Tensor, first: int = 0) -> None:
        """Rows ``first..`` of the batch each choose and take their next token from their row
        of ``logits``; a row whose choice fails (say, its sampler meets NaN) fails its own
        call and leaves with its call's other rows. Ended rows leave."""
        failed: dict[worker.Job, Exception] = {}
        for row, scores in zip(self.batch.rows[first:], logits, strict=True):
            if row.job in failed:
                continue
            try:
                row.take(row.choose(scores))
            except Exception as exc:  # the row's own call gets it
                failed[row.job] = exc
        if failed:
            rows = self.batch.rows
            self.batch.keep([i for i, r in enumerate(rows) if r.job not in failed])
            for job, exc in failed.items():
                self._fail(job, exc)
        self._leave([i for i, r in enumerate(self.batch.rows) if r.ended])

    def _fail(self, job: worker.Job, exc: BaseException) -> None:
        """``job`` ends with ``exc``; the run goes on (its rows are already out of the batch)."""
        self.jobs.pop(job, None)
        for stream in _streams(job):
            stream.end()
        if not job.future.done():
            job.future.set_exception(exc)

    def _rows(self, job: worker.Job) -> list[LiveRow]:
        rows = job.payload
        self.jobs[job] = [None] * len(rows.requests)
        stream = rows.stream
        return [
            LiveRow.of(
                self.handle, self.grammars(), job, i, grammar, stream if i == 0 else None
            )
            for i, grammar in enumerate(rows.grammars or [None] * len(rows.requests))
        ]  # fmt: skip

    def _leave(self, ended: Sequence[int]) -> None:
        """Rows at ``ended`` leave the batch; jobs whose rows have all ended get their result."""
        if not ended:
            return
        gone = set(ended)
        finished = []
        for i in ended:
            row = self.batch.rows[i]
            generation = row.finished(self.handle)
            if row.stream is not None and not row.stream.row_done:
                row.stream.end_row()
            self.jobs[row.job][row.slot] = generation
            finished.append(generation)
        self.batch.keep([i for i in range(len(self.batch.rows)) if i not in gone])
        for _, after in list(self.observers):
            if after is not None:
                after(finished)
        for job, results in list(self.jobs.items()):
            if all(g is not None for g in results):
                del self.jobs[job]  # a run under steady load holds only what still decodes
                if not job.future.done():
                    job.future.set_result(results)


def _streams(job: worker.Job) -> list[Any]:
    stream = getattr(job.payload, "stream", None)
    return [stream] if stream is not None else []

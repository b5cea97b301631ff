"""A stream's reader, on the caller's thread: it queues the stream's job on the generation
thread, then turns the token ids that arrive into text pieces (held back where a stop string
or a tool call may begin), and ends with the row's ``Generation``. Leaving it early (an
abandoned iterator, a timeout, a cancel) stops the row at its next step, or before it starts."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

from ..engine import Generation
from ..errors import GenerationError
from ..tools.formats import format_for, shown_content
from . import worker
from .generation import TokenQueue, cut_at_stop, safe_length
from .handle import ModelHandle
from .replies import decode_reply, until_eos
from .rows import Rows, finish

#: How often a stream consumer checks for cancellation and timeouts while no token arrives.
POLL_S = 0.05


def read_stream(
    handle: ModelHandle, job: worker.Job, timeout: float | None
) -> Iterator[str | Generation]:
    """Submit ``job`` (one row, with a ``TokenQueue``) and yield its text as it comes, then
    its ``Generation``. ``timeout`` bounds the wait for each token once the row runs (time
    spent queued does not count)."""
    rows: Rows = job.payload
    request = rows.requests[0]
    stop = request.options.stop
    calls = request.tools and request.tool_choice != "none"
    trigger = format_for(handle.tokenizer).trigger if calls else None
    tokens_in = rows.stream
    assert tokens_in is not None and rows.encoded is not None and rows.compiled is not None
    (future,) = worker.submit(job)
    new: list[int] = []
    sent = 0
    hit = False
    deadline: float | None = None
    try:
        while True:
            try:
                item = tokens_in.queue.get(timeout=POLL_S)
            except queue.Empty:
                if job.cancel.is_set() and (future.cancelled() or future.cancel()):
                    break  # cancelled while still queued: it never starts
                if timeout is not None and (future.running() or future.done()):
                    now = time.monotonic()  # queued time does not count
                    deadline = deadline or now + timeout
                    if now > deadline:
                        raise GenerationError(f"no token arrived within {timeout} s") from None
                continue
            deadline = None
            if item is TokenQueue.END:
                break
            new.extend(item)
            reply = decode_reply(handle.tokenizer, until_eos(new, handle.eos_token_ids))
            text, hit = cut_at_stop(reply, stop)
            upto = len(text) if hit else safe_length(text, stop)
            if trigger is not None:  # content only: a call's text is held back
                text = shown_content(text[:upto], trigger)
                upto = len(text)
            if upto > sent:
                yield text[sent:upto]
                sent = upto
            if hit:
                break
        if not (hit or tokens_in.row_done or future.cancelled()):
            future.result()  # the generate ended before this row did: re-raise a failure
        final = finish(
            handle,
            len(rows.encoded[0]),
            new,
            request,
            job.cancel,
            rows.compiled[0][1],
            tokens_in.closed,
            (rows.dropped or [0])[0],
        )
        if len(final.text) > sent:
            yield final.text[sent:]
        yield final
    finally:
        job.cancel.set()  # an abandoned stream's row stops at the next step
        future.cancel()  # ... or never starts

"""Answer concurrent requests in batches: callers on many threads hand in one item each and wait; one worker
thread takes everything that has queued up (up to `max_batch`) and runs it as one batch.

The demo's web server calls a search once per visitor request, from many threads at once. Run one by one, 40
concurrent searches wait for each other (each ~20 ms of model time, plus the queue); run as one batch, the image
encoder (uploads), the text encoder and the fusion network each run once for all of them (FAISS then ranks each
query on its own: its own k and category). No waiting window is added: a lone request runs at once, and requests
that arrive while a batch runs form the next batch.

    batcher = Batcher(retriever.run_batch, max_batch=64, name="search")
    result = batcher.submit(retriever.prepare("dress-000004", "is red", k=10))   # from any thread

Check items before submitting them (the demo prepares each query on its caller's thread), so a bad one fails its
own caller there; when a batch fails anyway, its items are run one at a time, so each caller gets its own answer
or its own error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class Batcher(Generic[Item, Answer]):
    """One worker thread running `run(items) -> answers` (same length and order) over the items queued so far."""

    def __init__(self, run: Callable[[Sequence[Item]], Sequence[Answer]], max_batch: int = 64,
                 name: str = "batch"):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._run, self.max_batch = run, max_batch
        self._queue: queue.SimpleQueue[tuple[Item, Future] | None] = queue.SimpleQueue()
        self._closed = False
        self._closing = threading.Lock()   # a submit and a close never interleave: no item queues after the stop
        self._worker = threading.Thread(target=self._serve, name=f"sdfn-{name}-batcher", daemon=True)
        self._worker.start()

    def submit(self, item: Item, timeout: float | None = None) -> Answer:
        """Queue `item`, wait for its batch, and return its answer (or raise its error)."""
        future: Future = Future()
        with self._closing:
            if self._closed:
                raise RuntimeError("this batcher is closed")
            self._queue.put((item, future))
        return future.result(timeout)

    def close(self) -> None:
        """Stop the worker once the items already queued are answered; a later submit raises RuntimeError."""
        with self._closing:
            if not self._closed:
                self._closed = True
                self._queue.put(None)

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._closed = True
                    break
                batch.append(more)
            self._answer(batch)
            if self._closed and self._queue.empty():
                return

    def _answer(self, batch: list[tuple[Item, Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            answers = list(self._run(items))
            if len(answers) != len(items):
                raise RuntimeError(f"a batch of {len(items)} gave {len(answers)} answers")
        except BaseException as err:  # noqa: BLE001  (every caller must be answered, whatever went wrong)
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            log.debug("a batch of %d failed (%s); answering its items one by one", len(batch), err)
            for one in batch:
                self._answer([one])
            return
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)

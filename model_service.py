"""ModelService: the two BLIP models behind one batching worker, with a cache of image contexts.

Requests reach the models only through here. A caption is batched with others of the same prompt; a
question with any others (Answerer.answer_batch pads nothing, whatever their lengths). A waiting caption
holds only its model input, never the uploaded image. Each image's VQA context (vision embedding
and cross-attention keys and values) is computed from the stored image once, right after the
upload when the worker is idle (at most max_background such jobs wait; past that the oldest is
dropped, and its first question computes it), kept in an LRU cache bounded in bytes, and
recomputed when it was evicted. No Flask inside.
"""

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable

from PIL import Image

from batcher import Batcher, QueueFull
from errors import InvalidInput, ModelBusy, ModelTimeout, ModelUnavailable

POLL = 0.1  # seconds between checks that the caller is still there


class ContextCache:
    """A thread-safe LRU of image contexts, bounded by their size in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        """The context kept for key, now the most recently used; None if there is none."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: str, context) -> None:
        """Keep a context, dropping the least recently used ones past the bound."""
        with self._lock:
            if key in self._items:
                return
            if context.nbytes > self.max_bytes:
                return
            self._items[key] = context
            self.bytes += context.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= dropped.nbytes

    def drop(self, key: str) -> None:
        """Forget a context (its image was deleted)."""
        with self._lock:
            if key in self._items:
                self.bytes -= self._items.pop(key).nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class ModelService:
    """Captions and answers through one batching worker; questions reuse cached image contexts."""

    def __init__(self, captioner, answerer, *, cache_bytes: int = 256 << 20, max_batch: int = 8,
                 batch_wait: float = 0.005, max_queue: int = 32, max_background: int = 16, timeout: float = 120.0,
                 background_idle: float = 0.3, clock: Callable[[], float] = time.monotonic):
        self.captioner, self.answerer = captioner, answerer
        self.cache = ContextCache(cache_bytes)
        self.timeout = timeout
        self.clock = clock
        self.batcher = Batcher(max_batch=max_batch, batch_wait=batch_wait, max_queue=max_queue,
                               max_background=max_background, background_idle=background_idle, clock=clock)

    def check_caption(self, prompt: str | None) -> None:
        """Refuse, before any work, a caption that cannot be made: no captioner, or no room after the prompt."""
        self._check(self.captioner)
        if prompt is not None and not self.captioner.prompt_fits(prompt):
            raise InvalidInput("'prompt' is too long for the caption model: the caption continues it within "
                               "CAPTION_MAX_LENGTH tokens, so shorten it to a few words", code="prompt_too_long")

    def caption_input(self, image: Image.Image):
        """What a caption of the image waits with: the captioner's input, small whatever the image's size."""
        return self.captioner.model_input(image)

    def caption(self, model_input, prompt: str | None = None, gave_up: Callable[[], bool] = bool) -> str:
        """A caption of an image (its caption_input), batched with other captions of the same prompt."""
        self._check(self.captioner)
        return self._wait(self._submit(self._run_captions, ("caption", prompt), (model_input, prompt)), gave_up)

    def caption_in_bulk(self, model_inputs: list, prompt: str | None = None) -> list[Future]:
        """Captions of a batch job's images (their caption_input), one future each: batched together, run only when
        no person's request has come for a while (Batcher's bulk jobs); a question that comes meanwhile runs
        inside the batch, between one image's vision layers or tokens and the next."""
        self._check(self.captioner)
        return [self.batcher.submit(self._run_bulk_captions, ("caption", prompt), (model_input, prompt), bulk=True)
                for model_input in model_inputs]

    def answer(self, image_id: str, load: Callable[[], Image.Image], question: str,
               gave_up: Callable[[], bool] = bool) -> str:
        """An answer about a kept image (load() gives its pixels if its context is not cached)."""
        self._check(self.answerer)
        return self._wait(self._submit(self._run_answers, ("answer",), (image_id, load, question)), gave_up)

    def prepare(self, image_id: str, load: Callable[[], Image.Image]) -> Future | None:
        """Compute a kept image's question context in the background, when the worker is idle."""
        if not getattr(self.answerer, "ready", True):
            return None
        return self.batcher.submit(self._contexts, ("context",), (image_id, load), background=True)

    def token_count(self, text: str) -> int:
        """How many tokens of the BLIP tokenizer a text is (for /v1's usage)."""
        model = self.answerer if getattr(self.answerer, "ready", True) else self.captioner
        return model.token_count(text) if getattr(model, "ready", True) else 0

    def forget(self, image_id: str) -> None:
        """Drop a deleted image's cached context."""
        self.cache.drop(image_id)

    def status(self) -> dict:
        """The queue and the cache, for /healthz."""
        return {"queued": self.batcher.waiting(), "queue_max": self.batcher.max_queue,
                "background": self.batcher.waiting_in_background(), "background_max": self.batcher.max_background,
                "bulk": self.batcher.waiting_in_bulk(),
                "cached_images": len(self.cache),
                "cache_mb": round(self.cache.bytes / 2**20, 1), "cache_max_mb": round(self.cache.max_bytes / 2**20)}

    @staticmethod
    def _check(model) -> None:
        if not getattr(model, "ready", True):
            raise ModelUnavailable(model.message)

    def _submit(self, run, group, payload) -> Future:
        try:
            return self.batcher.submit(run, group, payload)
        except QueueFull:
            wait = self.batcher.retry_after()
            raise ModelBusy(f"the models are busy with other requests: try again in {wait} s",
                            headers={"Retry-After": str(wait)}) from None

    def _wait(self, future: Future, gave_up: Callable[[], bool]):
        """The job's result; a caller who left, or waited past the timeout, takes their job out of the queue."""
        deadline = self.clock() + self.timeout
        while True:
            try:
                return future.result(timeout=POLL)
            except FutureTimeout:
                timed_out = self.clock() >= deadline
                if timed_out or gave_up():
                    future.cancel()  # a job not yet started never runs
                    if timed_out:
                        raise ModelTimeout(f"the models did not get to this request within {self.timeout:.0f} s: "
                                           "try again when the server is less busy") from None
                    raise ModelTimeout("the client went away before the answer was ready",
                                       code="client_gone") from None

    def _run_captions(self, payloads: list) -> list[str]:
        prompt = payloads[0][1]  # one group, one prompt
        return self.captioner.caption_batch([model_input for model_input, _ in payloads], prompt)

    def _run_bulk_captions(self, payloads: list) -> list[str]:
        prompt = payloads[0][1]
        return self.captioner.caption_batch([model_input for model_input, _ in payloads], prompt,
                                            pause=self._let_questions_in)

    def _let_questions_in(self) -> None:
        # Only questions: they run on the other model, so the captioner's generation in progress is not disturbed.
        self.batcher.let_people_in(lambda group: group[0] == "answer")

    def _contexts(self, items: list[tuple[str, Callable[[], Image.Image]]]) -> list:
        """Each image's context: from the cache, or computed in one batch for those missing."""
        found = {image_id: self.cache.get(image_id) for image_id, _ in items}
        missing = {image_id: load for image_id, load in items if found[image_id] is None}
        if missing:
            computed = self.answerer.contexts([self.answerer.model_input(load()) for load in missing.values()])
            for image_id, context in zip(missing, computed):
                self.cache.put(image_id, context)
                found[image_id] = context
        return [found[image_id] for image_id, _ in items]

    def _run_answers(self, payloads: list) -> list[str]:
        contexts = self._contexts([(image_id, load) for image_id, load, _ in payloads])
        return self.answerer.answer_batch(contexts, [question for _, _, question in payloads])

"""Prompt embeddings for the engine, computed off the model loop when the text encoder is slow.

UMT5-XXL takes tens of milliseconds per prompt on a GPU and seconds on a CPU; run on the engine thread, every
prompt switch would stall all sessions' frames for that long. :class:`PromptEncoder` hands out futures: with
``background`` it encodes on its own thread (one prompt at a time, in request order) and the engine applies a
switch at the first chunk boundary after its embedding is ready; without it (the hashing embedder, microseconds)
the future is done at once, so behaviour is exactly that of a direct call. Results are kept per prompt text.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from threading import Lock

import torch

from ..text.hashing import PromptEmbedder


class PromptEncoder:
    def __init__(self, embed: PromptEmbedder, background: bool, cache_size: int = 256):
        self._embed = embed
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="worldsim-prompts") if background else None
        self._futures: OrderedDict[str, Future] = OrderedDict()
        self._lock = Lock()
        self.cache_size = cache_size

    def request(self, text: str) -> Future:
        """A future of the embedding [1, text_len, text_dim] (float32, CPU) of ``text``."""
        with self._lock:
            fut = self._futures.get(text)
            if fut is not None and fut.done() and fut.exception() is not None:
                fut = None  # a failed encode is tried again
            if fut is not None:
                self._futures.move_to_end(text)
                return fut
            if self._pool is not None:
                fut = self._pool.submit(self._run, text)
            else:
                fut = Future()
                try:
                    fut.set_result(self._run(text))
                except Exception as e:  # noqa: BLE001 - delivered through the future, as from the thread
                    fut.set_exception(e)
            self._futures[text] = fut
            while len(self._futures) > self.cache_size:
                self._futures.popitem(last=False)
            return fut

    @torch.no_grad()
    def _run(self, text: str) -> torch.Tensor:
        return self._embed(text).float().cpu()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

"""Text prompts to DiT context without a text encoder: a deterministic hashing embedder.

Until a trained text encoder is wired into serving, the daemon maps each word of a prompt to a fixed pseudo-random
vector seeded by the word's BLAKE2 hash, one word per token position, zero-padded to ``text_len`` like a padded
encoder output. The same prompt always gives the same embedding (in every process), different prompts give
different ones, and shared words share vectors — enough to exercise prompt switching end to end.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Protocol

import numpy as np
import torch


class PromptEmbedder(Protocol):
    def __call__(self, text: str) -> torch.Tensor:
        """Prompt -> context embeddings [1, text_len, text_dim] (float32, CPU)."""


class HashingPromptEmbedder:
    def __init__(self, text_len: int, text_dim: int, cache_size: int = 256):
        self.text_len = text_len
        self.text_dim = text_dim
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def word_vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.text_dim).astype(np.float32)  # unit RMS on average

    def __call__(self, text: str) -> torch.Tensor:
        if text in self._cache:
            self._cache.move_to_end(text)
            return self._cache[text]
        out = np.zeros((1, self.text_len, self.text_dim), dtype=np.float32)
        for i, word in enumerate(re.findall(r"\w+", text.lower())[: self.text_len]):
            out[0, i] = self.word_vector(word)
        emb = torch.from_numpy(out)
        self._cache[text] = emb
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return emb

"""A fixed, offline text encoder: deterministic hashing of words to vectors (the toy model's text encoder).

Each word of a prompt (lower-cased ``\\w+`` runs) maps to a pseudo-random vector seeded by the word's BLAKE2 hash,
one word per token position, zero-padded to ``text_len`` like a padded encoder output. The same prompt gives the
same embedding in every process, different prompts give different ones, and shared words share vectors.

Why not a trained encoder: the toy world's prompts are a handful of theme words, so an encoder that only has to
tell prompts apart is enough; the DiT's ``text_embedding`` MLP and cross-attention learn what the words mean. It
needs no weights, no download and no training, and ``identity`` names it exactly (for embedding caches).
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
    version = 1  # bump when the mapping changes: caches keyed by ``identity`` then recompute

    def __init__(self, text_len: int, text_dim: int, cache_size: int = 256):
        self.text_len = text_len
        self.text_dim = text_dim
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def identity(self) -> str:
        return f"hashing-v{self.version}-{self.text_len}x{self.text_dim}"

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

"""What every checkpoint reader returns, and the error they all raise.

Readers translate each format into one record, :class:`Checkpoint`: the weights under the original Wan2.1 names
(the names ``CausalWanDiT.state_dict()`` uses), the architecture config when the format stores one, and where each
tensor came from. Keeping the origin lets an error name the exact file and the key as it is spelled on disk (a
diffusers name, an FSDP-wrapped name), which is what a user needs to find the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..model.config import DiTConfig

FORMATS = ("wan", "diffusers", "self_forcing", "worldsim")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and, where one is at
    fault, the key."""


def key_list(keys: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... (12 in all)`` for error messages."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


@dataclass
class Checkpoint:
    """Weights in Wan names plus what is needed to explain them.

    path: the file the weights were read from (single safetensors file, shard index or ``.pt``);
    stored: Wan key -> (file holding it, name as stored there), filled by every reader.
    """

    state_dict: dict[str, torch.Tensor]
    config: DiTConfig | None
    format: str
    path: Path
    stored: dict[str, tuple[Path, str]] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """``'key' (stored as 'name') in FILE``; the stored spelling only when it differs from the Wan name, the
        file only when it is not ``path`` (which every message already starts with)."""
        file, name = self.stored.get(key, (self.path, key))
        spelled = "" if name == key else f" (stored as {name!r})"
        return f"{key!r}{spelled}" + ("" if file == self.path else f" in {file.name}")

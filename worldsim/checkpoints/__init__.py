"""Checkpoint formats: detection, loading into ``CausalWanDiT``, and writers.

Supported (``detect_format`` names): ``"wan"`` (the original Wan2.1 folder), ``"diffusers"`` (a
``WanTransformer3DModel`` folder), ``"self_forcing"`` (Self-Forcing training ``.pt``) and ``"worldsim"`` (one
safetensors file with the config in its metadata). Every reader maps to Wan's original parameter names, the names
``CausalWanDiT.state_dict()`` uses. Every failure is a :class:`CheckpointError` naming the file and key.
"""

from .base import CheckpointError
from .detect import detect_format
from .diffusers_format import diffusers_to_wan, diffusers_to_wan_key, save_diffusers_folder
from .load import load_model, load_state_dict
from .self_forcing import save_self_forcing_pt
from .wan_format import save_wan_folder
from .worldsim_format import save_worldsim

__all__ = [
    "CheckpointError", "detect_format", "diffusers_to_wan", "diffusers_to_wan_key", "load_model", "load_state_dict",
    "save_diffusers_folder", "save_self_forcing_pt", "save_wan_folder", "save_worldsim",
]

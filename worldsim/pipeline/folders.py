"""Model folders: find the DiT, VAE, text encoder and tokenizer in the layouts users download, say what is missing
and how to fetch it.

Two layouts are accepted as published, read from local files only:

- ``wan`` — ``Wan-AI/Wan2.1-T2V-1.3B``: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (DiT),
  ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth`` and the tokenizer in ``google/umt5-xxl/``.
- ``diffusers`` — ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``: ``transformer/``, ``vae/``, ``text_encoder/``,
  ``tokenizer/``.

Either may be paired with a Self-Forcing checkpoint (``checkpoints/self_forcing_dmd.pt`` from ``gdhe17/Self-Forcing``,
EMA weights by default) that replaces the DiT weights, and with TAEHV decoder weights (``taew2_1.pth``, looked
for in the folder unless given).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# huggingface_hub's CLI (0.34 and later; older versions spell it `huggingface-cli download`, same arguments)
HF_DOWNLOAD = "hf download"
WAN_REPO = "Wan-AI/Wan2.1-T2V-1.3B"
DIFFUSERS_REPO = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
SELF_FORCING_REPO = "gdhe17/Self-Forcing"
SELF_FORCING_FILE = "checkpoints/self_forcing_dmd.pt"
TAEHV_URLS = {".pth": "https://github.com/madebyollin/taehv/raw/main/taew2_1.pth",
              ".safetensors": "https://github.com/madebyollin/taehv/raw/main/safetensors/taew2_1.safetensors"}
TAEHV_NAMES = ("taew2_1.pth", "taew2_1.safetensors")

WAN_VAE = "Wan2.1_VAE.pth"
WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER = "google/umt5-xxl"
DIT_WEIGHTS = "diffusion_pytorch_model"
TEXT_WEIGHTS = "model"
ROLES = ("dit", "vae", "text_encoder", "tokenizer", "checkpoint", "taehv")
LABELS = {"dit": "DiT (Wan2.1 transformer)", "vae": "Wan VAE", "text_encoder": "UMT5-XXL text encoder",
          "tokenizer": "UMT5 tokenizer", "checkpoint": "Self-Forcing checkpoint", "taehv": "TAEHV decoder"}


class ModelFolderError(ValueError):
    """A model folder lacks files a command needs; the message lists each and the command that fetches it."""


@dataclass(frozen=True)
class Part:
    """One piece of a model folder: what to hand its loader, which of its files are absent, how to get them."""

    role: str
    path: Path
    missing: tuple[Path, ...] = ()
    download: str = ""

    @property
    def present(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class ModelFolder:
    root: Path
    layout: str  # "wan" | "diffusers"
    parts: dict[str, Part] = field(default_factory=dict)  # role -> Part; "checkpoint" only when one is given

    def __getitem__(self, role: str) -> Part:
        return self.parts[role]

    def needed(self, decoder: str = "wan") -> list[str]:
        """Roles a generation run needs: the Wan VAE or the TAEHV weights, and a given checkpoint."""
        roles = ["dit", "text_encoder", "tokenizer", "vae" if decoder == "wan" else "taehv"]
        return roles + (["checkpoint"] if "checkpoint" in self.parts else [])

    def missing(self, decoder: str = "wan") -> list[Part]:
        return [self.parts[r] for r in self.needed(decoder) if not self.parts[r].present]

    def require(self, decoder: str = "wan") -> None:
        """Raise ModelFolderError naming every missing file a run with ``decoder`` needs and how to fetch it."""
        missing = self.missing(decoder)
        if missing:
            raise ModelFolderError(f"{self.root}: files are missing for `--decoder {decoder}`:\n"
                                   + "\n".join(_describe(p) for p in missing))

    def report(self) -> str:
        """What ``worldsim inspect`` prints: the layout, each part with its state, and the fetch commands."""
        lines = [f"model folder: {self.root}", f"layout: {self.layout} "
                 f"({'Wan2.1 official, ' + WAN_REPO if self.layout == 'wan' else 'diffusers, ' + DIFFUSERS_REPO})"]
        for role in ROLES:
            part = self.parts.get(role)
            if part is None:
                state = ("not given (--checkpoint): the base Wan2.1 weights are not a 4-step causal model; use "
                         f"{SELF_FORCING_FILE}")
            elif part.present:
                state = f"ok  {part.path}"
            else:
                state = ("not found (optional; needed for --decoder taehv)" if role == "taehv" else
                         "MISSING " + ", ".join(str(m) for m in part.missing))
            lines.append(f"  {LABELS[role]:<26} {state}")
        absent = [p for p in self.parts.values() if not p.present]
        if absent:
            lines.append("\nto fetch what is missing:")
            lines += [_describe(p) for p in absent]
            if any(not self.parts[r].present for r in ("dit", "vae", "text_encoder", "tokenizer")):
                repo = WAN_REPO if self.layout == "wan" else DIFFUSERS_REPO
                lines.append(f"  or the whole model at once:\n    {HF_DOWNLOAD} {repo} --local-dir {self.root}")
            lines.append(f"  ({HF_DOWNLOAD} comes with `pip install -U huggingface_hub`; before 0.34 it was "
                         f"`huggingface-cli download`)")
        else:
            lines.append("\ncomplete.")
        return "\n".join(lines)


def _describe(part: Part) -> str:
    files = "\n".join(f"    missing: {m}" for m in part.missing)
    return f"  {LABELS[part.role]}:\n{files}\n    fetch:   {part.download}"


def find_model_folder(root: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
                      taehv: str | os.PathLike | None = None) -> ModelFolder:
    """Locate every part of a model folder (nothing is read but names and small JSON files).

    The layout is ``diffusers`` when the folder has ``model_index.json`` or ``transformer/``, else ``wan`` (also for
    an empty or partly downloaded folder, which then reports everything the official layout still needs).
    """
    root = Path(root)
    if not root.is_dir():
        raise ModelFolderError(f"{root}: no such directory; download a model first, e.g.\n"
                               f"  {HF_DOWNLOAD} {WAN_REPO} --local-dir {root}")
    diffusers = (root / "model_index.json").is_file() or (root / "transformer").is_dir()
    parts = _diffusers_parts(root) if diffusers else _wan_parts(root)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        parts["checkpoint"] = Part("checkpoint", ckpt, () if ckpt.is_file() else (ckpt,), _checkpoint_download(ckpt))
    found = Path(taehv) if taehv is not None else next((root / n for n in TAEHV_NAMES if (root / n).is_file()),
                                                       root / TAEHV_NAMES[0])
    parts["taehv"] = Part("taehv", found, () if found.is_file() else (found,), _taehv_download(found))
    return ModelFolder(root, "diffusers" if diffusers else "wan", parts)


def _wan_parts(root: Path) -> dict[str, Part]:
    def get(*files: str) -> str:
        return f"{HF_DOWNLOAD} {WAN_REPO} {' '.join(files)} --local-dir {root}"

    dit_missing = _absent(root / "config.json") + _weights_missing(root, DIT_WEIGHTS)
    tok = root / WAN_TOKENIZER
    return {
        "dit": Part("dit", root, dit_missing, get(*(str(p.relative_to(root)) for p in dit_missing))),
        "vae": Part("vae", root / WAN_VAE, _absent(root / WAN_VAE), get(WAN_VAE)),
        "text_encoder": Part("text_encoder", root / WAN_T5, _absent(root / WAN_T5), get(WAN_T5)),
        "tokenizer": Part("tokenizer", tok, _tokenizer_missing(tok),
                          f'{HF_DOWNLOAD} {WAN_REPO} --include "{WAN_TOKENIZER}/*" --local-dir {root}'),
    }


def _diffusers_parts(root: Path) -> dict[str, Part]:
    def part(role: str, sub: str, missing: tuple[Path, ...]) -> Part:
        return Part(role, root / sub, missing,
                    f'{HF_DOWNLOAD} {DIFFUSERS_REPO} --include "{sub}/*" --local-dir {root}')

    def model(sub: str, stem: str) -> tuple[Path, ...]:
        return _absent(root / sub / "config.json") + _weights_missing(root / sub, stem)

    return {
        "dit": part("dit", "transformer", model("transformer", DIT_WEIGHTS)),
        "vae": part("vae", "vae", model("vae", DIT_WEIGHTS)),
        "text_encoder": part("text_encoder", "text_encoder", model("text_encoder", TEXT_WEIGHTS)),
        "tokenizer": part("tokenizer", "tokenizer", _tokenizer_missing(root / "tokenizer")),
    }


def _absent(path: Path) -> tuple[Path, ...]:
    return () if path.exists() else (path,)


def _weights_missing(folder: Path, stem: str) -> tuple[Path, ...]:
    """``stem.safetensors``, or the shards its index names, that are not on disk."""
    single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return ()
    if not index.is_file():
        return (single,)
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return (index,)  # unreadable: fetch it again
    return tuple(folder / s for s in shards if not (folder / s).is_file())


def _tokenizer_missing(folder: Path) -> tuple[Path, ...]:
    config = _absent(folder / "tokenizer_config.json")
    vocab = () if (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file() else \
        (folder / "tokenizer.json",)
    return config + vocab


def _checkpoint_download(path: Path) -> str:
    if path.name != Path(SELF_FORCING_FILE).name:
        return "(a checkpoint of your own: copy it to this path)"
    base = f"{HF_DOWNLOAD} {SELF_FORCING_REPO} {SELF_FORCING_FILE}"
    if path.parent.name == "checkpoints":
        return f"{base} --local-dir {path.parent.parent}"
    return f"{base} --local-dir {path.parent} && mv {path.parent / SELF_FORCING_FILE} {path}"


def _taehv_download(path: Path) -> str:
    return f"curl -L -o {path} {TAEHV_URLS.get(path.suffix, TAEHV_URLS['.pth'])}"

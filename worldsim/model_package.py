"""worldsim model packages: one folder holding a servable model and a versioned manifest that says how to run it.

    PKG/worldsim-model.json   {"format": "worldsim-model", "version": 1, "dit": "generator.safetensors",
                               "codec": {"kind": "toy", "path": "codec.safetensors"},
                               "text_encoder": {"kind": "hashing", "text_len": 16, "text_dim": 32},
                               "geometry": {"height": 64, "width": 64, "fps": 16, "latent_shape": [4, 8, 8],
                                            "spatial_stride": 8, "temporal_stride": 1},
                               "control": {"keys": [...], "axes": [...], "embedding_dim": 0, "frames_per_latent": 1},
                               "sampler": {"shift": 5.0, "denoising_steps": [...], "warp": true, "context_noise": 0,
                                           "text_guidance": 1.5, "guided_steps": [3]},
                               "cache": {"sink_frames": 0, "window_frames": 6},
                               "reference_flow": "reference_flow.safetensors",
                               "starts": {"a quiet forest path at dawn": "start_forest.png", ...},
                               "provenance": {"stage": "self-forcing", "recipe": "...", "steps": 4000, ...}}

``sampler`` holds fields of :class:`~worldsim.sampling.schedule.SamplerConfig`; those left out take its defaults
(the guidance fields came later and are optional: packages without them read as before). ``reference_flow``
(optional) names a :class:`~worldsim.model.reference_flow.ReferenceFlow` file (``worldsim train flow``): the
runtime then moves each reference frame by the controls before the DiT reads it; it needs a ``frame_reference``
DiT, a ``toy`` codec and the DiT's control schema. ``starts`` (optional) maps prompts to images (PNG or JPEG) of
the scene each describes: a session opened with such a prompt and no start frame of its own begins from the image,
and so does a ``cut`` switch to it (``bridge/PROTOCOL.md``, ``welcome.model.starts``), so that a model trained to
continue its world's frames opens on one.

Codecs: ``toy`` (worldsim's per-frame codec, a file in the package), ``wan_vae`` (the Wan2.1 VAE, a path) and
``preview`` (weight-free). Text encoders: ``hashing`` (its two sizes) or ``umt5`` (``path`` and ``tokenizer``).
Paths are relative to the package folder (absolute ones are allowed for weights kept elsewhere). ``worldsim train``
writes a package into ``OUT/final/`` of the student stages; ``worldsim serve --model PKG`` serves one. Reading
checks the manifest completely and names the field and file of every problem, before any weight is loaded.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic_files import atomic_write

FORMAT = "worldsim-model"
VERSION = 1
MANIFEST = "worldsim-model.json"
CODECS = ("toy", "wan_vae", "preview")
TEXT_ENCODERS = ("hashing", "umt5")


class PackageError(ValueError):
    """A model package that cannot be served as it is; the message names the file and the field."""


def is_package(path: str | Path) -> bool:
    path = Path(path)
    return (path / MANIFEST).is_file() or (path.name == MANIFEST and path.is_file())


DEFAULT_PACKAGE = Path(__file__).resolve().parent / "default_model"  # installed with the Python package


def default_package() -> Path:
    """The embedded default model (``worldsim serve`` and ``worldsim generate`` without ``--model``)."""
    if not is_package(DEFAULT_PACKAGE):
        raise PackageError(f"the embedded default model is missing ({DEFAULT_PACKAGE / MANIFEST}): reinstall worldsim, "
                           "or pass --model PATH (a model package, Wan2.1 folder or checkpoint) or --preset NAME")
    return DEFAULT_PACKAGE


@dataclass
class ModelPackage:
    root: Path
    manifest: dict[str, Any]

    def file(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    @property
    def dit(self) -> Path:
        return self.file(self.manifest["dit"])

    @property
    def codec(self) -> dict:
        return self.manifest["codec"]

    @property
    def text_encoder(self) -> dict:
        return self.manifest["text_encoder"]

    @property
    def geometry(self) -> dict:
        return self.manifest["geometry"]

    @property
    def cache(self) -> dict:
        return self.manifest.get("cache", {})

    @property
    def reference_flow(self) -> Path | None:
        name = self.manifest.get("reference_flow")
        return None if name is None else self.file(name)

    @property
    def starts(self) -> dict[str, Path]:
        """Prompt -> the image a stream of that prompt starts from (empty when the package has none)."""
        return {prompt: self.file(name) for prompt, name in self.manifest.get("starts", {}).items()}

    @property
    def provenance(self) -> dict:
        return self.manifest.get("provenance", {})

    def sampler(self):
        from .sampling.schedule import SamplerConfig

        return SamplerConfig(**self.manifest.get("sampler", {}))


def _need(where: str, obj: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise PackageError(f"{where}: '{key}' is missing")
    if not isinstance(obj[key], kind) or isinstance(obj[key], bool) and kind is not bool:
        raise PackageError(f"{where}: '{key}' must be {getattr(kind, '__name__', kind)}, got {obj[key]!r:.80}")
    return obj[key]


def read_package(path: str | Path) -> ModelPackage:
    """Read and check a package (its folder or its manifest file)."""
    path = Path(path)
    root = path.parent if path.name == MANIFEST else path
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{root}: no {MANIFEST} (not a worldsim model package)")
    try:
        m = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise PackageError(f"{manifest_path}: not valid JSON ({e})") from None
    where = str(manifest_path)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise PackageError(f"{where}: 'format' must be {FORMAT!r}")
    if m.get("version") != VERSION:
        raise PackageError(f"{where}: version {m.get('version')!r} is not readable by this worldsim (it reads "
                           f"version {VERSION}); upgrade worldsim")
    pkg = ModelPackage(root, m)
    _need(where, m, "dit", str)
    if not pkg.dit.is_file():
        raise PackageError(f"{where}: 'dit' names {pkg.dit}, which does not exist")
    codec = _need(where, m, "codec", dict)
    kind = _need(f"{where} codec", codec, "kind", str)
    if kind not in CODECS:
        raise PackageError(f"{where}: codec 'kind' {kind!r} is not one of {CODECS}")
    if kind != "preview" and not pkg.file(_need(f"{where} codec", codec, "path", str)).exists():
        raise PackageError(f"{where}: codec 'path' names {pkg.file(codec['path'])}, which does not exist")
    text = _need(where, m, "text_encoder", dict)
    tkind = _need(f"{where} text_encoder", text, "kind", str)
    if tkind not in TEXT_ENCODERS:
        raise PackageError(f"{where}: text_encoder 'kind' {tkind!r} is not one of {TEXT_ENCODERS}")
    if tkind == "hashing":
        _need(f"{where} text_encoder", text, "text_len", int)
        _need(f"{where} text_encoder", text, "text_dim", int)
    else:
        for key in ("path", "tokenizer"):
            if not pkg.file(_need(f"{where} text_encoder", text, key, str)).exists():
                raise PackageError(f"{where}: text_encoder '{key}' names {pkg.file(text[key])}, which does not exist")
    geo = _need(where, m, "geometry", dict)
    for key in ("height", "width", "spatial_stride", "temporal_stride"):
        if _need(f"{where} geometry", geo, key, int) <= 0:
            raise PackageError(f"{where}: geometry '{key}' must be positive, got {geo[key]}")
    _need(f"{where} geometry", geo, "fps", (int, float))
    shape = _need(f"{where} geometry", geo, "latent_shape", list)
    if len(shape) != 3 or shape[1] * geo["spatial_stride"] != geo["height"] or \
            shape[2] * geo["spatial_stride"] != geo["width"]:
        raise PackageError(f"{where}: geometry 'latent_shape' {shape} x spatial_stride {geo['spatial_stride']} must "
                           f"give height x width {geo['height']}x{geo['width']}")
    try:
        pkg.sampler()
    except (TypeError, ValueError) as e:
        raise PackageError(f"{where}: 'sampler' is not a sampler config: {e}") from None
    if "reference_flow" in m:
        _need(where, m, "reference_flow", str)
        if not pkg.reference_flow.is_file():
            raise PackageError(f"{where}: 'reference_flow' names {pkg.reference_flow}, which does not exist")
        if kind != "toy":
            raise PackageError(f"{where}: a reference_flow needs the toy codec (it decodes and re-encodes each "
                               f"reference frame), not {kind!r}")
    starts = _need(where, m, "starts", dict) if "starts" in m else {}
    for prompt, name in starts.items():
        if not prompt or not isinstance(name, str):
            raise PackageError(f"{where}: 'starts' maps prompts to image files, got {prompt!r:.80}: {name!r:.80}")
        if not pkg.file(name).is_file():
            raise PackageError(f"{where}: 'starts' names {pkg.file(name)} for {prompt!r:.80}, which does not exist")
    for key in ("sink_frames", "window_frames"):
        if key in pkg.cache and (not isinstance(pkg.cache[key], int) or pkg.cache[key] < 0):
            raise PackageError(f"{where}: cache '{key}' must be a non-negative integer, got {pkg.cache[key]!r}")
    return pkg


def write_package(root: str | Path, *, dit: Path, codec: dict, text_encoder: dict, geometry: dict, sampler: dict,
                  cache: dict, provenance: dict, copy_codec: bool = True, reference_flow: Path | None = None) -> Path:
    """Write ``root/worldsim-model.json`` for weights already in ``root`` (``dit``); a toy codec file elsewhere is
    copied in (``copy_codec``) so the folder is self-contained, and so is a ``reference_flow`` file. Returns the
    manifest path; the package is read back (checked) before returning."""
    root = Path(root)
    codec = dict(codec)
    if codec["kind"] == "toy" and copy_codec and Path(codec["path"]).resolve().parent != root.resolve():
        target = root / "codec.safetensors"
        shutil.copyfile(codec["path"], target)
        codec["path"] = target.name
    manifest = {"format": FORMAT, "version": VERSION, "dit": Path(dit).name if Path(dit).parent.resolve() ==
                root.resolve() else str(dit), "codec": codec, "text_encoder": text_encoder, "geometry": geometry,
                "sampler": sampler, "cache": cache, "provenance": provenance}
    if reference_flow is not None:
        target = root / "reference_flow.safetensors"
        if Path(reference_flow).resolve() != target.resolve():
            shutil.copyfile(reference_flow, target)
        manifest["reference_flow"] = target.name
    path = root / MANIFEST
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    read_package(root)
    return path

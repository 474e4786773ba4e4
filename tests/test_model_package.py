"""Model packages: `worldsim train` writes one for its student (micro recipes here), `worldsim serve --model PKG`
serves it with the manifest's codec, text encoder, sampler and cache, and bad manifests are named."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import frames_for
from tiny_models import randomize
from train_helpers import write_dataset

from worldsim.checkpoints import load_model
from worldsim.client import Client
from worldsim.codecs.base import to_uint8
from worldsim.codecs.toy_codec import ToyCodec
from worldsim.model_package import MANIFEST, PackageError, read_package
from worldsim.sampling.session import StreamingSession
from worldsim.runtime import RuntimeOptions, build_runtime
from worldsim.text.hashing import HashingPromptEmbedder
from worldsim.train.config import load_recipe
from worldsim.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"
PROMPT = "a quiet forest"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """codec -> teacher -> ode-init student, each by its micro recipe; the student's final/ is the package."""
    root = tmp_path_factory.mktemp("pkg")
    write_dataset(root / "data")
    codec = train("codec", load_recipe(RECIPES / "codec_micro.yaml", [f"data.path={root / 'data'}",
                                                                     f"out={root / 'codec'}"])).out
    shared = [f"data.path={root / 'data'}", f"data.codec={codec / 'final' / 'codec.safetensors'}"]
    teacher = train("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [*shared, f"out={root / 'teacher'}",
                                                                             "package=true"])).out
    student = train("ode-init", load_recipe(RECIPES / "ode_init_micro.yaml", [
        *shared, f"out={root / 'student'}", f"stage.teacher={teacher / 'final' / 'teacher.safetensors'}"])).out
    shutil.rmtree(codec)  # the package must not depend on the codec run's folder: it holds its own copy
    return student / "final"


def test_training_writes_a_self_contained_package(package):
    pkg = read_package(package)
    m = pkg.manifest
    assert m["codec"] == {"kind": "toy", "path": "codec.safetensors"} and m["dit"] == "generator.safetensors"
    assert m["text_encoder"]["kind"] == "hashing" and m["provenance"]["stage"] == "ode-init"
    assert m["provenance"]["steps"] == 4 and m["cache"] == {"sink_frames": 0, "window_frames": 6}
    assert m["geometry"]["temporal_stride"] == 1 and pkg.sampler().denoising_steps


def test_any_dit_stage_packages_on_request(package, tmp_path):
    """`package=true` makes the teacher's final/ a package too (its many-step sampler); a stage without a DiT refuses
    the option before loading any data."""
    teacher = read_package(package.parents[1] / "teacher" / "final")
    assert teacher.manifest["dit"] == "teacher.safetensors" and teacher.provenance["stage"] == "teacher"
    assert len(teacher.sampler().denoising_steps) == 2  # teacher_micro's sample_steps
    runtime = build_runtime(RuntimeOptions(model=str(teacher.root)))
    frames = runtime.make_decoder().decode(runtime.new_session(runtime.encode_prompts([PROMPT])[PROMPT]).step())
    assert frames.shape[1] == runtime.chunk_latents and runtime.sampler == teacher.sampler()
    with pytest.raises(ValueError, match="package: true, but stage 'codec' trains no DiT"):
        train("codec", load_recipe(RECIPES / "codec_micro.yaml", [f"data.path={tmp_path / 'none'}",
                                                                  f"out={tmp_path / 'c'}", "package=true"]))


def reference(pkg_dir: Path, chunks: int, seed: int, start: torch.Tensor | None = None,
              cut: tuple[int, str, torch.Tensor] | None = None) -> np.ndarray:
    """The package run in-process by hand: [T, H, W, 3] uint8. ``start``: latents the stream opens from (not among
    the frames returned); ``cut``: (chunk, prompt, latents) a cut to that prompt from those latents before that
    chunk."""
    pkg = read_package(pkg_dir)
    model = load_model(pkg.dit)
    codec = ToyCodec.load(pkg.file(pkg.codec["path"]))
    embed = HashingPromptEmbedder(model.cfg.text_len, model.cfg.text_dim)
    session = StreamingSession(model, embed(PROMPT), latent_shape=tuple(pkg.geometry["latent_shape"]), seed=seed,
                               sink_frames=pkg.cache["sink_frames"], window_frames=pkg.cache["window_frames"],
                               sampler=pkg.sampler(), defer_cache_write=True,  # as the daemon's sessions on a CPU
                               context_latents=start)
    frames = []
    for chunk in range(chunks):
        if cut is not None and chunk == cut[0]:
            session.set_prompt(embed(cut[1]), "cut", start=cut[2])
        frames.append(to_uint8(codec.decode(session.step()))[0].numpy())
    return np.concatenate(frames)


def test_daemon_serves_the_package_as_trained(package, make_daemon):
    d = make_daemon(build_runtime(RuntimeOptions(model=str(package))))
    with Client(d.endpoint, timeout=60) as c:
        model = c.welcome.model
        assert model["untrained"] is False and model["decoder"] == "toy" and model["text_encoder"] == "hashing"
        assert model["package"] == str(package) and model["window_frames"] == 6 and model["starts"] == []
        assert c.welcome.video["fps"] == read_package(package).geometry["fps"]
        frames = [f.image for f in frames_for(c, c.open(PROMPT, seed=3, fps=0), 9, 60)]
    assert np.array_equal(np.stack(frames), reference(package, chunks=3, seed=3))


def test_a_packaged_start_frame_opens_its_prompt_and_a_cut_goes_to_anothers(package, tmp_path, make_daemon):
    """A package's ``starts``: a session opened with such a prompt begins from its image (sent as frame 0) unless it
    opts out, and a cut to another such prompt continues from that one's image, frame for frame as in-process."""
    other = "a snowy field at night"
    shape = (read_package(package).geometry["height"], read_package(package).geometry["width"], 3)
    images = {PROMPT: np.zeros(shape, np.uint8), other: np.full(shape, 230, np.uint8)}  # the video's size
    images[PROMPT][shape[0] // 2:] = (40, 160, 60)

    def add_starts(m: dict, root: Path) -> None:
        (root / "starts").mkdir()
        for name, (prompt, image) in zip(("a.png", "b.png"), images.items()):
            Image.fromarray(image).save(root / "starts" / name)
        m["starts"] = {PROMPT: "starts/a.png", other: "starts/b.png"}

    pkg = broken(package, tmp_path, add_starts)
    codec = randomize(ToyCodec.load(pkg / "codec.safetensors"), seed=1, std=0.3)  # the micro codec is all grey
    codec.save(pkg / "codec.safetensors")
    runtime = build_runtime(RuntimeOptions(model=str(pkg)))
    latents = {prompt: runtime.encode_start(image) for prompt, image in images.items()}
    d = make_daemon(runtime)
    with Client(d.endpoint, timeout=60) as c:
        assert c.welcome.model["starts"] == [PROMPT, other]
        s = c.open(PROMPT, seed=3, fps=0)
        first = frames_for(c, s, 7, 60)
        lead = to_uint8(codec.decode(latents[PROMPT]))[0, 0].numpy()
        assert first[0].index == 0 and np.array_equal(first[0].image, lead)
        assert np.array_equal(np.stack([f.image for f in first[1:]]),
                              reference(pkg, chunks=2, seed=3, start=latents[PROMPT]))
        plain = c.open(PROMPT, seed=3, fps=0, package_start=False)
        plain_frames = np.stack([f.image for f in frames_for(c, plain, 6, 60)])
        assert np.array_equal(plain_frames, reference(pkg, chunks=2, seed=3))
        c.close_session(plain)
        seq = c.send(s, prompt=other, mode="cut")
        after = [f for f in frames_for(c, s, 40, 60) if f.header["prompt_seq"] == seq]
        assert after, "the cut never applied"
        assert c.reset(s)["epoch"] == 1  # a reset starts over from the prompt now in effect, and its image
        again = next(f for f in iter(lambda: c.frame(10), None) if f.session == s and f.epoch == 1)
        assert again.index == 0 and np.array_equal(again.image, to_uint8(codec.decode(latents[other]))[0, 0].numpy())
    chunk = after[0].header["chunk"]
    expected = reference(pkg, chunks=chunk + 1, seed=3, start=latents[PROMPT], cut=(chunk, other, latents[other]))
    assert np.array_equal(np.stack([f.image for f in after[:3]]), expected[-3:])
    plain_cut = reference(pkg, chunks=chunk + 1, seed=3, start=latents[PROMPT], cut=(chunk, other, None))
    assert not np.array_equal(plain_cut[-3:], expected[-3:])  # the image made a difference


def test_generate_makes_a_video_from_the_package(package, tmp_path, capsys):
    """`worldsim generate --model PKG`: the package's own size, fps, sampler and codec, frames as served (H.264 is
    lossy, so compared by PSNR), after the runtime's own session gave identical frames."""
    import av

    from worldsim import cli
    from worldsim.runtime import RuntimeOptions, build_runtime

    runtime = build_runtime(RuntimeOptions(model=str(package)))
    session = runtime.new_session(runtime.encode_prompts([PROMPT])[PROMPT], seed=3)
    decoder = runtime.make_decoder()
    made = np.concatenate([to_uint8(decoder.decode(session.step()))[0].numpy() for _ in range(3)])
    expected = reference(package, chunks=3, seed=3)
    assert np.array_equal(made, expected)

    out = tmp_path / "pkg.mp4"
    assert cli.main(["generate", "--model", str(package), "--prompt", PROMPT, "--chunks", "3", "--seed", "3",
                     "--out", str(out), "--quiet", "--crf", "0"]) == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert float(stream.average_rate) == read_package(package).geometry["fps"]
        video = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert video.shape == expected.shape
    mse = np.mean((video.astype(float) - expected) ** 2)
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-10)) > 30  # yuv420p chroma subsampling is the only loss at crf 0


def test_the_manifest_sampler_guides_on_text_and_options_override_it(package, tmp_path):
    """A manifest's text guidance reaches every session with the empty prompt's embedding as the unconditional
    branch; a runtime option overrides one field and keeps the others."""
    guided = broken(package, tmp_path, lambda m, d: m["sampler"].update(text_guidance=1.5, guided_steps=[0]))
    rt = build_runtime(RuntimeOptions(model=str(guided)))
    assert rt.sampler.text_guidance == 1.5 and rt.sampler.guided_steps == (0,)
    s = rt.new_session(rt.embed_prompt(PROMPT), seed=0)
    assert torch.equal(s.uncond_prompt, rt.embed_prompt(""))
    assert s.step().isfinite().all()
    rt.release_text_encoder()  # the empty prompt was encoded before: sessions still open
    assert rt.new_session(s.prompt, seed=1).uncond_prompt is not None
    off = build_runtime(RuntimeOptions(model=str(guided), text_guidance=1.0))
    assert off.sampler.text_guidance == 1 and off.sampler.guided_steps == (0,)
    held = build_runtime(RuntimeOptions(model=str(guided), hold_idle_reference=True))  # serve --hold-idle-reference
    assert held.sampler.hold_idle_reference and held.sampler.text_guidance == 1.5
    assert not rt.sampler.hold_idle_reference  # off unless the manifest or the option says so


def test_a_denoising_steps_option_replaces_the_manifests_and_names_guided_steps_it_drops(package, tmp_path):
    """`serve --steps N` (N evenly spaced) or `--steps T1,T2,..` instead of the manifest's denoising steps; guided
    steps are indices into the manifest's list, so a new list without them is refused with what to pass."""
    from worldsim.pipeline.options import parse_denoising_steps

    assert parse_denoising_steps("3") == (1000, 667, 333) and parse_denoising_steps("1000,250") == (1000, 250)
    with pytest.raises(argparse.ArgumentTypeError, match="1000,250"):
        parse_denoising_steps("many")
    guided = broken(package, tmp_path, lambda m, d: m["sampler"].update(text_guidance=1.5, guided_steps=[3]))
    rt = build_runtime(RuntimeOptions(model=str(guided), denoising_steps=(1000, 667, 333), guided_steps=(2,)))
    assert rt.sampler.denoising_steps == (1000, 667, 333) and rt.sampler.guided_steps == (2,)
    assert rt.sampler.text_guidance == 1.5  # the manifest's other fields stay
    assert rt.new_session(rt.embed_prompt(PROMPT), seed=0).step().isfinite().all()
    with pytest.raises(ValueError, match=r"guides its steps 3 of 4; .*--guided-steps 1"):
        build_runtime(RuntimeOptions(model=str(guided), denoising_steps=(1000, 250)))
    unguided = build_runtime(RuntimeOptions(model=str(package), denoising_steps=(1000, 250)))  # nothing to name
    assert unguided.sampler.denoising_steps == (1000, 250)
    with pytest.raises(ValueError, match="must decrease"):
        build_runtime(RuntimeOptions(model=str(guided), denoising_steps=(250, 1000), guided_steps=(1,)))
    warm = broken(package, tmp_path / "warm", lambda m, d: m["sampler"].update(reference_start=3))
    assert build_runtime(RuntimeOptions(model=str(warm))).sampler.reference_start == 3
    with pytest.raises(ValueError, match=r"reference at step 3; .*--reference-start 0\.\.1"):
        build_runtime(RuntimeOptions(model=str(warm), denoising_steps=(1000, 250)))
    fewer = build_runtime(RuntimeOptions(model=str(warm), denoising_steps=(1000, 250), reference_start=1))
    assert fewer.sampler.reference_start == 1 and fewer.sampler.denoising_steps == (1000, 250)


def broken(package: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    m = json.loads((copy / MANIFEST).read_text())
    edit(m, copy)
    (copy / MANIFEST).write_text(json.dumps(m))
    return copy


BAD = [
    (lambda m, d: (d / "generator.safetensors").unlink(), r"'dit' names .*generator.safetensors, which does not exist"),
    (lambda m, d: m.update(version=2), r"version 2 is not readable"),
    (lambda m, d: m["codec"].update(kind="vqgan"), r"codec 'kind' 'vqgan' is not one of"),
    (lambda m, d: m["codec"].update(path="gone.safetensors"), r"codec 'path' names .*gone.safetensors"),
    (lambda m, d: m["text_encoder"].update(text_dim=7), r"text_encoder is \d+ x 7 but the DiT"),
    (lambda m, d: m["geometry"]["latent_shape"].__setitem__(0, 9), r"latent_shape has 9 channels"),
    (lambda m, d: m["geometry"].update(height=m["geometry"]["height"] + 1), r"latent_shape.* must give height"),
    (lambda m, d: m["geometry"].update(spatial_stride=2, height=m["geometry"]["height"] // 2,
                                       width=m["geometry"]["width"] // 2), r"the toy codec has .* spatial stride 4"),
    (lambda m, d: m.update(sampler={"shift": 5, "steps": 3}), r"'sampler' is not a sampler config"),
    (lambda m, d: m.pop("text_encoder"), r"'text_encoder' is missing"),
    (lambda m, d: m["sampler"].update(guided_steps=[9]), r"'sampler' is not a sampler config: guided_steps must index"),
    (lambda m, d: m.update(starts=["start.png"]), r"'starts' must be dict"),
    (lambda m, d: m.update(starts={PROMPT: "starts/gone.png"}), r"'starts' names .*gone.png for 'a quiet forest'"),
    (lambda m, d: ((d / "bad.png").write_bytes(b"not a png"), m.update(starts={PROMPT: "bad.png"})),
     r"'starts' image .*bad.png for 'a quiet forest' is not readable"),
]


@pytest.mark.parametrize("edit, error", BAD)
def test_bad_packages_are_named(package, tmp_path, edit, error):
    with pytest.raises(PackageError, match=error):
        build_runtime(RuntimeOptions(model=str(broken(package, tmp_path, edit))))


"""Ground-truth metrics for generated toy-world video: does the motion follow the controls, do statistics drift?

Both work on frames alone (numpy, no model), so they score the world itself, a trained model's rollout, or any
baseline the same way.

**Motion agreement.** Between consecutive frames, the best-matching integer shift (refined to sub-pixel by a
parabola through the matching errors) of

- the far region (sky, horizon, distant objects), horizontally: turning moves the whole view sideways (turning
  right moves the picture left), while walking and strafing hardly move it;
- the near band (the lower half of the visible ground), vertically: walking forward makes the ground stream down,
  back streams it up; and horizontally: strafing right moves the near ground left.

The horizon row, which separates the two, follows from the commanded ``mouse_dy`` integrated as the world does
(episodes start level). A shift counts only when it is at least ``min_shift`` pixels and its match is clearly
better than the typical shift's (``confidence``): unrelated frames (a cut, a shuffled video) and still frames show
no motion. Each control row that commands one unambiguous motion is scored: hit if the observed shift has the
commanded direction.

Motion agreement alone cannot tell a model that follows controls from one that streams the ground forward: 83% of
the scored walking rows of the toy episodes command forward, so ground truth scored against another episode's
controls already agrees about a third of the time.

**Counterfactual controllability.** Two rollouts from the same context and the same noise, one under the true
controls and one under :func:`mirror_controls` (W<->S, A<->D, mouse deltas negated): whatever a model does without
looking at the controls is the same in both. Per control row that commands one unambiguous motion (as above), the
pair's outcome is *correct* (both rollouts move, in opposite directions, the true one as commanded), *reversed*
(opposite, the wrong way round), *same* (both move the same way) or *no motion* (either rollout shows no confident
shift). The score reads a detected pair as two signed trials (the true rollout against the command, the mirrored
one against its mirror): correct 1, same 0.5, reversed 0, averaged within each sign of the true command and then
over the two signs. A model that ignores the controls makes identical rollouts, so every detected pair is *same*
and it scores exactly 0.5; so does one that always walks forward. No-motion pairs are left out of the score and
reported as the detection rate.

**Statistics drift.** Per-frame channel means and standard deviations and a coarse colour histogram, compared
with a reference: the ground-truth frames of the same rollout (paired) or the opening frames (pooled). A model
that slowly washes out, darkens or saturates over a long rollout shows a growing curve. Paired drift also grows
when a rollout merely shows another part of the world than the ground truth (a frozen first frame reaches the
same values as a drifting model); :func:`look_distance` compares each frame with its theme's look (the world's
frames of the theme at many places), which a valid rollout that goes elsewhere keeps.

**Token grid.** :func:`token_grid`: power at the DiT's token period against its neighbouring frequencies, for
the checkerboard a model's rollout can break into while its colours stay right.

**Fidelity.** :func:`ssim` (gaussian-window structural similarity) per frame against the ground truth, and
:func:`sharpness` (mean difference between neighbouring pixels): PSNR rewards a blurred frame over a sharp one with
misplaced detail, so the detail a video keeps, against the ground truth's, is scored beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .game import AXES, KEYS, WorldConfig

_W, _A, _S, _D, _SPACE = (KEYS.index(k) for k in ("W", "A", "S", "D", "Space"))
KINDS = ("turn", "move", "strafe")
MIRRORED_KEYS = {"W": "S", "S": "W", "A": "D", "D": "A"}  # key -> the key that commands the opposite motion
MIRRORED_AXES = ("mouse_dx", "mouse_dy")  # axes whose sign flips
OUTCOMES = ("correct", "reversed", "same", "no_motion")  # of a counterfactual pair
SIGNS = (1, -1)  # the true command's sign, the first axis of counterfactual counts


@dataclass(frozen=True)
class MotionConfig:
    far_dx: int = 10  # far region: horizontal pixels searched either way (a full-speed turn moves the view ~7)
    far_dy: int = 2  # far region: vertical pixels searched (the eye bobs with the terrain)
    near_dx: int = 8  # near band: horizontal pixels searched (a running strafe moves the near ground ~6)
    near_dy: int = 6  # near band: vertical pixels searched (at most half the band's rows)
    min_shift: float = 0.3  # smallest observed shift that counts as motion
    confidence: float = 0.85  # best match error must be below this fraction of the median over shifts
    far: float = 0.25  # the far region: rows above horizon + far * (ground rows)
    near: float = 0.4  # the near band: rows below horizon + near * (ground rows)
    min_rows: int = 12  # fewest near-band rows worth scoring moves and strafes on (looking up hides them)
    turn_threshold: float = 0.2  # |mouse_dx| that commands a turn
    still_threshold: float = 0.05  # |mouse_dx|, |mouse_dy| below which a row counts as not turning or looking
    world: WorldConfig = field(default_factory=WorldConfig)  # look rate, pitch range, camera, jump length


def _gray(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W] float32 luma."""
    return frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def best_shift(a: np.ndarray, b: np.ndarray, max_dy: int, max_dx: int, confidence: float) -> tuple[float, float]:
    """Sub-pixel (dy, dx) with b[y + dy, x + dx] ~ a[y, x] for [h, w] images; (0, 0) if not confident.

    Mean absolute error between a's central columns (``max_dx`` dropped each side) and b at every integer shift;
    the best one is refined along each axis by a parabola through its neighbours. Not confident: the best error
    is not clearly below the median error.
    """
    h, w = a.shape
    core = a[:, max_dx:w - max_dx]  # [h, w']
    windows = sliding_window_view(b, w - 2 * max_dx, axis=1)  # [h, 2*max_dx+1, w']: b shifted by each dx
    errors = np.empty((2 * max_dy + 1, 2 * max_dx + 1))
    for i, dy in enumerate(range(-max_dy, max_dy + 1)):
        rows = slice(max(0, -dy), min(h, h - dy))
        errors[i] = np.abs(windows[max(0, dy):min(h, h + dy)] - core[rows, None, :]).mean(axis=(0, 2))
    i, j = np.unravel_index(np.argmin(errors), errors.shape)
    if errors[i, j] > confidence * np.median(errors):
        return 0.0, 0.0
    return i - max_dy + _vertex(errors[:, j], i), j - max_dx + _vertex(errors[i], j)


def _vertex(e: np.ndarray, k: int) -> float:
    """Offset of the minimum of the parabola through e[k-1], e[k], e[k+1] (0 at an edge or a flat curve)."""
    if not 0 < k < len(e) - 1:
        return 0.0
    denom = e[k - 1] - 2 * e[k] + e[k + 1]
    return float(0.5 * (e[k - 1] - e[k + 1]) / denom) if denom > 0 else 0.0


@dataclass(frozen=True)
class Motion:
    """Observed motion between two frames, in pixels (positive: right / down); 0 where not measurable."""

    turn: float  # far region, horizontal
    move: float  # near band, vertical
    strafe: float  # near band, horizontal


def horizons(axes: np.ndarray, cfg: MotionConfig = MotionConfig(), pitch: float = 0.0) -> np.ndarray:
    """[N] screen row of the horizon at each frame, integrating ``mouse_dy`` as the world does from ``pitch``."""
    look, cam = cfg.world.physics.look, cfg.world.camera
    out = np.empty(len(axes))
    for t, dy in enumerate(np.clip(axes[:, 1], -1, 1)):
        pitch = float(np.clip(pitch - look * dy, -1, 1)) if t else pitch
        out[t] = cam.height / 2 + pitch * cam.pitch_rows * cam.height
    return out


def estimate_motion(prev: np.ndarray, next_: np.ndarray, horizon: float, cfg: MotionConfig = MotionConfig()
                    ) -> Motion:
    """The motion cues between two RGB frames [H, W, 3] whose horizon lies at row ``horizon``."""
    a, b = _gray(prev), _gray(next_)
    far, near = _regions(a.shape[0], horizon, cfg)
    _, turn = best_shift(a[far], b[far], min(cfg.far_dy, (far.stop - 1) // 2), cfg.far_dx, cfg.confidence)
    rows = near.stop - near.start
    if rows < cfg.min_rows:
        return Motion(turn=turn, move=0.0, strafe=0.0)
    move, strafe = best_shift(a[near], b[near], min(cfg.near_dy, rows // 2), cfg.near_dx, cfg.confidence)
    return Motion(turn=turn, move=move, strafe=strafe)


def _regions(height: int, horizon: float, cfg: MotionConfig) -> tuple[slice, slice]:
    """Row ranges of the far region (sky, horizon, distant objects) and the near band (close ground)."""
    ground = max(height - horizon, 0.0)
    far = slice(0, int(np.clip(horizon + cfg.far * ground, 1, height)))
    near = slice(int(np.clip(np.ceil(horizon + cfg.near * ground), 0, height)), height)
    return far, near


def commanded(keys: np.ndarray, axes: np.ndarray, cfg: MotionConfig = MotionConfig()) -> dict[str, np.ndarray]:
    """Per control row [N] and kind: the expected sign of the observed shift (+1 / -1), 0 where not scored.

    A row is scored for one kind only when nothing else it commands moves the same cue: no looking for any kind,
    no turning for moves and strafes, no jump in progress for moves, no walking for strafes.
    """
    k = keys > 0.5
    dx, dy = axes[:, 0], axes[:, 1]
    level = np.abs(dy) < cfg.still_threshold
    still = level & (np.abs(dx) < cfg.still_threshold)
    jumping = np.zeros(len(k), bool)
    for t in np.flatnonzero(k[:, _SPACE]):
        jumping[t:t + cfg.world.physics.jump_frames + 1] = True
    walk = k[:, _W].astype(int) - k[:, _S]  # +1 forward: the ground streams down
    side = k[:, _D].astype(int) - k[:, _A]  # +1 right: the near ground moves left
    return {"turn": np.where(level & (np.abs(dx) >= cfg.turn_threshold), -np.sign(dx), 0).astype(int),
            "move": np.where(still & ~jumping, walk, 0),
            "strafe": np.where(still & (walk == 0), -side, 0)}


def _scored_rows(want: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the control rows that command at least one scored motion."""
    return np.flatnonzero(np.any([want[k] != 0 for k in KINDS], axis=0))


def _motions(frames: np.ndarray, axes: np.ndarray, rows: np.ndarray, cfg: MotionConfig, pitch: float
             ) -> list[tuple[Motion, bool]]:
    """Observed motion of each transition rows[i] -> rows[i] + 1, and whether enough close ground was in view to
    judge moves and strafes (the horizon follows ``axes``)."""
    horizon = horizons(axes, cfg, pitch)
    out = []
    for t in rows:
        _, near = _regions(frames.shape[1], horizon[t + 1], cfg)
        out.append((estimate_motion(frames[t], frames[t + 1], horizon[t + 1], cfg),
                    near.stop - near.start >= cfg.min_rows))
    return out


def motion_breakdown(frames: np.ndarray, keys: np.ndarray, axes: np.ndarray, cfg: MotionConfig = MotionConfig(),
                     pitch: float = 0.0) -> dict[str, tuple[int, int]]:
    """(hits, scored rows) per kind. frames [N, H, W, 3]; keys [N, 6], axes [N, 2] with row t driving t-1 -> t
    (the dataset's alignment; row 0 is ignored); ``pitch`` at frame 0 (episodes start level)."""
    keys, axes = np.asarray(keys, np.float32), np.asarray(axes, np.float32)
    want = commanded(keys[1:], axes[1:], cfg)
    rows = _scored_rows(want)
    out = {kind: [0, 0] for kind in KINDS}
    for t, (seen, near_ok) in zip(rows, _motions(frames, axes, rows, cfg, pitch)):
        for kind in KINDS:
            if want[kind][t] and (kind == "turn" or near_ok):
                shift = getattr(seen, kind)
                out[kind][0] += int(abs(shift) >= cfg.min_shift and np.sign(shift) == want[kind][t])
                out[kind][1] += 1
    return {k: (h, n) for k, (h, n) in out.items()}


def mirror_plan(key_names: tuple[str, ...] = KEYS, axis_names: tuple[str, ...] = AXES
                ) -> tuple[list[int], list[float]]:
    """For a control schema: the index of each key's mirror partner (W<->S, A<->D; itself if it has none in the
    schema) and each axis's sign under mirroring (-1 for the mouse deltas). Keys [..., K] mirror as
    ``keys[..., perm]``, axes [..., A] as ``axes * signs``, for numpy arrays and torch tensors alike."""
    perm = [key_names.index(MIRRORED_KEYS[k]) if MIRRORED_KEYS.get(k) in key_names else i
            for i, k in enumerate(key_names)]
    return perm, [-1.0 if a in MIRRORED_AXES else 1.0 for a in axis_names]


def mirror_controls(keys: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The toy world's controls keys [..., 6], axes [..., 2] mirrored: W<->S, A<->D, mouse_dx and mouse_dy
    negated, Space and Shift kept. Every motion they command is reversed (see :func:`commanded`)."""
    keys, axes = np.asarray(keys, np.float32), np.asarray(axes, np.float32)
    if keys.shape[-1] != len(KEYS) or axes.shape[-1] != len(AXES):
        raise ValueError(f"mirror_controls needs keys [..., {len(KEYS)}] ({', '.join(KEYS)}) and axes "
                         f"[..., {len(AXES)}] ({', '.join(AXES)}), got {list(keys.shape)} and {list(axes.shape)}")
    perm, signs = mirror_plan()
    return keys[..., perm], axes * np.asarray(signs, np.float32)


def _outcome(true: float, mirrored: float, sign: int, min_shift: float) -> int:
    """Index into OUTCOMES of one counterfactual pair of observed shifts under a true command of ``sign``."""
    a, b = (int(np.sign(s)) if abs(s) >= min_shift else 0 for s in (true, mirrored))
    if not a or not b:
        return OUTCOMES.index("no_motion")
    if a == b:
        return OUTCOMES.index("same")
    return OUTCOMES.index("correct" if a == sign else "reversed")


def counterfactual_counts(frames: np.ndarray, mirrored: np.ndarray, keys: np.ndarray, axes: np.ndarray,
                          cfg: MotionConfig = MotionConfig(), pitch: float = 0.0) -> dict[str, np.ndarray]:
    """Per kind, counts [2, 4] of counterfactual pairs by the true command's sign (SIGNS) and outcome (OUTCOMES).

    frames [N, H, W, 3]: a rollout under keys [N, 6], axes [N, 2] (row t driving t-1 -> t, row 0 ignored);
    mirrored [N, H, W, 3]: the rollout from the same context and noise under ``mirror_controls(keys, axes)``.
    A row is scored where the true controls command one motion (:func:`commanded`; the mirrored ones then command
    the opposite) and, for moves and strafes, enough close ground is in view. Both rollouts are read with the
    horizon of the true controls (after a look, the mirrored view's horizon differs), so identical rollouts give
    identical readings: a model that ignores the controls scores exactly 0.5.
    """
    keys, axes = np.asarray(keys, np.float32), np.asarray(axes, np.float32)
    if mirrored.shape != frames.shape:
        raise ValueError(f"the two rollouts of a pair differ in shape: {list(frames.shape)} and "
                         f"{list(mirrored.shape)}")
    want = commanded(keys[1:], axes[1:], cfg)
    rows = _scored_rows(want)
    seen = _motions(frames, axes, rows, cfg, pitch)
    seen_mirrored = _motions(mirrored, axes, rows, cfg, pitch)
    out = {kind: np.zeros((len(SIGNS), len(OUTCOMES)), np.int64) for kind in KINDS}
    for t, (a, near_ok), (b, _) in zip(rows, seen, seen_mirrored):
        for kind in KINDS:
            sign = int(want[kind][t])
            if sign and (kind == "turn" or near_ok):
                out[kind][SIGNS.index(sign), _outcome(getattr(a, kind), getattr(b, kind), sign, cfg.min_shift)] += 1
    return out


def counterfactual_summary(counts: np.ndarray) -> dict:
    """Counts [2, 4] of one kind (:func:`counterfactual_counts`, summed over episodes) -> JSON-ready figures:
    pairs, detected pairs and their rate, each outcome, the score per sign of the true command (None without
    detections) and ``score``, their mean over the signs with detections (None if none)."""
    counts = np.asarray(counts)
    correct, _, same, _ = counts.T  # each [2]: per sign
    detected = counts[:, :3].sum(1)
    by_sign = {f"{s:+d}"[0]: float((correct[i] + same[i] / 2) / detected[i]) if detected[i] else None
               for i, s in enumerate(SIGNS)}
    scores = [v for v in by_sign.values() if v is not None]
    pairs = int(counts.sum())
    return {"pairs": pairs, "detected": int(detected.sum()),
            "detection_rate": float(detected.sum() / pairs) if pairs else None,
            **{name: int(counts[:, i].sum()) for i, name in enumerate(OUTCOMES)},
            "score_by_sign": by_sign, "score": float(np.mean(scores)) if scores else None}


def motion_agreement(frames: np.ndarray, keys: np.ndarray, axes: np.ndarray, cfg: MotionConfig = MotionConfig(),
                     kinds: tuple[str, ...] = KINDS) -> float:
    """Fraction of scored control rows whose observed motion has the commanded direction (nan if none scored)."""
    counts = motion_breakdown(frames, keys, axes, cfg)
    hits, total = (sum(counts[k][i] for k in kinds) for i in (0, 1))
    return hits / total if total else float("nan")


@dataclass(frozen=True)
class Drift:
    """Per-frame distance of image statistics from the reference, and summaries."""

    moments: np.ndarray  # [N] mean |difference| of channel means and stds, in 0..255 units
    histogram: np.ndarray  # [N] total-variation distance of 4x4x4-bin colour histograms, in [0, 1]

    def final(self, frames: int = 16) -> tuple[float, float]:
        """(moments, histogram) averaged over the last ``frames`` frames."""
        return float(self.moments[-frames:].mean()), float(self.histogram[-frames:].mean())


def _moments(frames: np.ndarray) -> np.ndarray:
    """[N, 6]: per-channel mean and std of each frame."""
    x = frames.reshape(len(frames), -1, 3).astype(np.float32)
    return np.concatenate([x.mean(1), x.std(1)], axis=1)


def _histograms(frames: np.ndarray, bins: int = 4) -> np.ndarray:
    """[N, bins**3] normalised joint colour histograms."""
    q = (frames.reshape(len(frames), -1, 3).astype(np.int64) * bins) // 256
    code = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]  # [N, P]
    h = np.stack([np.bincount(c, minlength=bins ** 3) for c in code]).astype(np.float64)
    return h / h.sum(1, keepdims=True)


def _tv_distance(histograms: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """[N] total-variation distance of histograms [N, B] from reference [B] or [N or 1, B], in [0, 1]."""
    return 0.5 * np.abs(histograms - reference).sum(1)


def stat_drift(frames: np.ndarray, reference: np.ndarray | None = None, paired: bool = False,
               window: int = 8) -> Drift:
    """Drift of frames [N, H, W, 3] from ``reference``.

    paired: reference [N, H, W, 3] is the ground truth of the same rollout, compared frame by frame. Otherwise the
    reference frames (default: the first ``window`` of ``frames``) are pooled into one target.
    """
    ref = frames[:window] if reference is None else reference
    if paired and len(ref) != len(frames):
        raise ValueError(f"paired drift needs as many reference frames as frames ({len(ref)} != {len(frames)})")
    m, h = _moments(frames), _histograms(frames)
    rm, rh = _moments(ref), _histograms(ref)
    if not paired:
        rm, rh = rm.mean(0, keepdims=True), rh.mean(0, keepdims=True)
    return Drift(moments=np.abs(m - rm).mean(1), histogram=_tv_distance(h, rh))


def colour_look(frames: np.ndarray) -> np.ndarray:
    """The pooled colour histogram [64] of frames [N, H, W, 3]: a theme's look, from the world's own frames of it."""
    return _histograms(frames).mean(0)


def look_distance(frames: np.ndarray, look: np.ndarray) -> np.ndarray:
    """[N] total-variation distance of each frame's colour histogram from ``look`` (:func:`colour_look`): 0 = the
    same colours, 1 = none shared. Unlike the paired :func:`stat_drift` it does not grow when a rollout merely
    shows another part of the world than the ground truth, only when its colours stop being the theme's."""
    return _tv_distance(_histograms(frames), look)


def token_grid(frames: np.ndarray, period: int) -> np.ndarray:
    """[N] how strongly frames [N, H, W, 3] repeat every ``period`` pixels (a DiT's token, in pixels): the log ratio
    of the grey image's power at that period to the mean power of the two neighbouring frequencies, along x (rows'
    spectra averaged) and along y (columns'), averaged over the two. About 0 for the world's frames, whose spectra
    fall off smoothly; well above it for a video tiled with token-size blobs (a checkerboard), which colour
    histograms do not see."""
    n, h, w = frames.shape[:3]
    if h % period or w % period or min(h, w) // period < 2 or period < 3:
        raise ValueError(f"token_grid: a {period}-pixel period needs frames of a multiple of it with at least two "
                         f"periods and a neighbouring frequency on each side, got {h}x{w}")
    grey = frames.astype(np.float64).mean(-1)  # [N, H, W]
    ratios = []
    for axis, size in ((2, w), (1, h)):
        along = grey - grey.mean(axis, keepdims=True)
        power = (np.abs(np.fft.rfft(along, axis=axis)) ** 2).mean(3 - axis)  # [N, size // 2 + 1]
        k = size // period
        ratios.append(np.log((power[:, k] + 1e-9) / (0.5 * (power[:, k - 1] + power[:, k + 1]) + 1e-9)))
    return np.mean(ratios, axis=0)


def sharpness(frames: np.ndarray) -> np.ndarray:
    """[N] the mean absolute difference between horizontally and between vertically neighbouring pixels of frames
    [N, H, W, 3] uint8, in [0, 1] units: the detail a frame holds. A blurred copy of a frame scores less than the
    frame, a frame moved by whole pixels the same; generated frames are compared with their ground truth's."""
    x = frames.astype(np.float32) / 255
    return np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))


def _gaussian_blur(x: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """Gaussian filter of x [N, H, W, C] over H and W, valid region only: [N, H - 2r, W - 2r, C]."""
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    for axis in (1, 2):
        x = sliding_window_view(x, 2 * radius + 1, axis=axis) @ g
    return x


def ssim(frames: np.ndarray, reference: np.ndarray, radius: int = 5, sigma: float = 1.5) -> np.ndarray:
    """[N] structural similarity of frames [N, H, W, 3] uint8 to reference frames of the same shape: the mean over
    pixels (where the whole window fits) and channels of Wang et al.'s SSIM map with an 11x11 gaussian window
    (sigma 1.5), K1 = 0.01, K2 = 0.03 and a data range of 255. 1 for identical frames."""
    if frames.shape != reference.shape or frames.ndim != 4:
        raise ValueError(f"ssim needs frames and reference of one shape [N, H, W, C], got {list(frames.shape)} and "
                         f"{list(reference.shape)}")
    if min(frames.shape[1:3]) < 2 * radius + 1:
        raise ValueError(f"frames of {frames.shape[1]}x{frames.shape[2]} are smaller than the {2 * radius + 1}-pixel "
                         f"SSIM window")
    x, y = frames.astype(np.float64), reference.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x, radius, sigma), _gaussian_blur(y, radius, sigma)
    vx = _gaussian_blur(x * x, radius, sigma) - mx * mx
    vy = _gaussian_blur(y * y, radius, sigma) - my * my
    cov = _gaussian_blur(x * y, radius, sigma) - mx * my
    s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(1, 2, 3))

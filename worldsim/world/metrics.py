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

**Statistics drift.** Per-frame channel means and standard deviations and a coarse colour histogram, compared
with a reference: the ground-truth frames of the same rollout (paired) or the opening frames (pooled). A model
that slowly washes out, darkens or saturates over a long rollout shows a growing curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .game import KEYS, WorldConfig

_W, _A, _S, _D, _SPACE = (KEYS.index(k) for k in ("W", "A", "S", "D", "Space"))
KINDS = ("turn", "move", "strafe")


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


def motion_breakdown(frames: np.ndarray, keys: np.ndarray, axes: np.ndarray, cfg: MotionConfig = MotionConfig(),
                     pitch: float = 0.0) -> dict[str, tuple[int, int]]:
    """(hits, scored rows) per kind. frames [N, H, W, 3]; keys [N, 6], axes [N, 2] with row t driving t-1 -> t
    (the dataset's alignment; row 0 is ignored); ``pitch`` at frame 0 (episodes start level)."""
    keys, axes = np.asarray(keys, np.float32), np.asarray(axes, np.float32)
    want = commanded(keys[1:], axes[1:], cfg)
    horizon = horizons(axes, cfg, pitch)
    out = {kind: [0, 0] for kind in KINDS}
    for t in np.flatnonzero(np.any([want[k] != 0 for k in KINDS], axis=0)):
        _, near = _regions(frames.shape[1], horizon[t + 1], cfg)
        near_ok = near.stop - near.start >= cfg.min_rows  # enough close ground in view to judge moves
        seen = estimate_motion(frames[t], frames[t + 1], horizon[t + 1], cfg)
        for kind in KINDS:
            if want[kind][t] and (kind == "turn" or near_ok):
                shift = getattr(seen, kind)
                out[kind][0] += int(abs(shift) >= cfg.min_shift and np.sign(shift) == want[kind][t])
                out[kind][1] += 1
    return {k: (h, n) for k, (h, n) in out.items()}


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
    return Drift(moments=np.abs(m - rm).mean(1), histogram=0.5 * np.abs(h - rh).sum(1))

"""``--record DIR``: every received frame, the control that led into it and the prompts, as a training dataset.

The session is opened with ``echo_controls``, so each frame header carries the exact control row the daemon
applied (after its resampling), not what the client meant to send. A reset starts a new episode.
"""

from __future__ import annotations

from pathlib import Path

from worldsim.client import Frame
from worldsim.dataset import DatasetWriter, EpisodeWriter


class Recorder:
    def __init__(self, root: str | Path, welcome, session: int, seed: int, prompt: str, mode: str = "open"):
        v = welcome.video
        self.dataset = DatasetWriter(root, welcome.control.to_wire(), v["fps"], v["height"], v["width"])
        self.welcome, self.session, self.seed = welcome, session, seed
        self.prompts: dict[int, tuple[str, str]] = {0: (prompt, mode)}  # prompt_seq -> (text, mode)
        self.episode: EpisodeWriter | None = None
        self._epoch = self._prompt_seq = None
        self.frames = 0

    def prompt_sent(self, seq: int, text: str, mode: str) -> None:
        self.prompts[seq] = (text, mode)

    def add(self, frame: Frame) -> None:
        h = frame.header
        if self.episode is None or frame.epoch != self._epoch:
            self.close()
            self.episode = self.dataset.new_episode(session=self.session, epoch=frame.epoch, seed=self.seed,
                                                    server=self.welcome.server, model=self.welcome.model)
            self._epoch, self._prompt_seq = frame.epoch, None
        if h["prompt_seq"] != self._prompt_seq:
            text, mode = self.prompts.get(h["prompt_seq"], ("", "unknown"))
            self.episode.add_prompt(frame.index, frame.chunk, text, mode)
            self._prompt_seq = h["prompt_seq"]
        self.episode.add_frame(frame.image, frame.index, frame.chunk, frame.control)
        self.frames += 1

    def close(self) -> None:
        if self.episode is not None:
            self.episode.close()
            self.episode = None

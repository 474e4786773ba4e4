"""Recorded episodes (frames, per-frame controls, prompts), the training data format; see docs/DATASET.md."""

from .episodes import DatasetWriter, Episode, EpisodeWriter, episode_dirs, load_dataset, load_episode, read_info

__all__ = ["DatasetWriter", "Episode", "EpisodeWriter", "episode_dirs", "load_dataset", "load_episode", "read_info"]

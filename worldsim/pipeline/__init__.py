"""End-to-end generation from real model folders: folder discovery, prompt schedules, mp4 output, ``generate``."""

"""Serving: the ZeroMQ daemon (``worldsim serve``), protocol v1 and its pieces.

protocol.py (messages, validation, codes), daemon.py (socket loop), engine.py (model loop thread), sessions.py
(one stream), controls.py (per-frame control buffer), security.py (CurveZMQ), gateway.py (WebSocket gateway and
the browser client in web/), frame_format.py, stats.py, logs.py, command.py (CLI glue). The model, decoder and
prompt embedder it serves come from :mod:`worldsim.runtime`.
This package's ``__init__`` imports nothing, so the client library can use protocol.py without torch.
"""

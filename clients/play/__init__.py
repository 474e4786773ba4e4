"""``worldsim play``: the pygame reference client (app.py, controls.py, hud.py, palette.py, recorder.py,
command.py)."""

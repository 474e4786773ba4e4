"""``worldsim play``: the pygame reference client (app.py, controls.py, hud.py, recorder.py, command.py)."""

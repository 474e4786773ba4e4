"""``worldsim train``: data loading, the accelerate trainer, and the training stages (teacher, codec, ode-init,
self-forcing). See the README's "Training" section."""

"""worldsim: a real-time, action-conditioned world simulator built on Self Forcing."""

__version__ = "0.1.0"

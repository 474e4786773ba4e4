"""Text encoders: prompt cleaning, the UMT5-XXL encoder Wan2.1 is conditioned on, and the fixed hashing encoder
of the toy model (``hashing.py``)."""

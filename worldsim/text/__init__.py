"""Text encoders: prompt cleaning and the UMT5-XXL encoder Wan2.1 is conditioned on."""

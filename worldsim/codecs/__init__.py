"""Latent codecs: streaming decoders (and encoders) between DiT latents and RGB frames."""

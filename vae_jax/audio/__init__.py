"""Audio: reading and writing files, log-mel features and normalisation, JAX STFT / Griffin-Lim, acoustics."""

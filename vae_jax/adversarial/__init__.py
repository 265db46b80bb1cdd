"""Adversarial fine-tuning of a trained VAE's decoder (kind = 'adversarial' configs)."""

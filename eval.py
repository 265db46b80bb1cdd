"""Evaluates a trained speech VAE: `python eval.py --workdir=W` writes W/eval/report.md and metrics.json.

  python eval.py --workdir=W                                # test-split report
  python eval.py --workdir=W --baseline_workdir=W_ae        # ... with the deterministic AE beside it
  python eval.py --workdir=W --audio a.wav b.flac --out=DIR # reconstruct any audio files
  python eval.py --workdir=W --sample=8                     # decode draws from the prior
  python eval.py --workdir=P --sample=8 --condition=digit=7 --guidance=2  # a learned prior workdir P
  python eval.py --workdir=P --sample_quality               # its bound and sample-quality table
  python eval.py --workdir=W --interpolate a.wav b.wav --steps=8 --method=slerp
  python eval.py --workdir=W --traverse                     # shift the highest-KL latent channels
  python eval.py --workdir=W --step=best --export=DIR       # parameters, model card, jax.export'ed encode/decode

The same command as the installed `vae-jax-eval`; flags and main live in vae_jax/entry.py.
"""

from vae_jax.entry import eval_main

if __name__ == "__main__":
  eval_main()

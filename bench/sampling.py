"""Time to sample clips from a trained prior: latents, decoding to log-mel, Griffin-Lim to audio.

  python -m bench.sampling --workdir=runs/fsdd_prior              # 100 clips of 1 s
  python -m bench.sampling --workdir=runs/fsdd_prior --clips=100 --seconds=1 --guidance=2 --reps=3

The first (compiling) call is timed apart from the steady-state median of --reps calls.
"""

import argparse
import json
import os
import shlex
import statistics
import sys
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import machine  # noqa: E402


def _timed(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True, help="A prior workdir (kind = 'prior').")
  ap.add_argument("--clips", type=int, default=100)
  ap.add_argument("--seconds", type=float, default=1.0)
  ap.add_argument("--guidance", type=float, default=None, help="Default: the prior config's.")
  ap.add_argument("--condition", default="", help="e.g. digit=7 (default: unconditional).")
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()

  from vae_jax.eval import generate  # pylint: disable=g-import-not-at-top
  from vae_jax.prior import load_prior  # pylint: disable=g-import-not-at-top

  prior = load_prior(args.workdir)
  vae = prior.vae_run
  t = round(args.seconds * vae.feature_config.frames_per_second)
  frames = [t] * args.clips

  def latents():
    return prior.sample(args.clips, condition=args.condition or None, guidance=args.guidance,
                        mel_frames=frames, seed=0)

  draws, first = _timed(latents)
  times = {"latents_and_decode": [], "griffin_lim": []}
  for rep in range(args.reps):
    draws, dt = _timed(latents)
    times["latents_and_decode"].append(dt)
    _, dt = _timed(lambda: generate.synthesize(vae, [d.log_mel for d in draws], seed=rep))
    times["griffin_lim"].append(dt)
  med = {k: statistics.median(v) for k, v in times.items()}
  audio_s = args.clips * args.seconds
  result = {
      **machine.describe(shlex.join(["python", "-m", "bench.sampling"] + sys.argv[1:])), "clips": args.clips,
      "seconds_per_clip": args.seconds, "first_call_s": first, **{f"{k}_s": v for k, v in med.items()},
      "total_s": sum(med.values()), "real_time_factor": audio_s / sum(med.values()),
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()

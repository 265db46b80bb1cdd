"""Speed of the .vjx codec on CPU: encode (log-mel -> bytes) and decode (bytes -> log-mel, then audio).

  python -m bench.codec                                   # runs/fsdd, 100 FSDD test clips
  python -m bench.codec --workdir=runs/fsdd --prior=runs/fsdd_prior --clips=100 --reps=3

Times are steady-state medians of --reps passes over the clips, after one pass
that compiles every padded length; real-time factor = audio seconds / seconds.
"Decode" ends at the log-mel; "to audio" adds the project's Griffin-Lim.
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


def _median_s(fn, reps: int) -> float:
  fn()  # Compiles every padded length.
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _prior_figures(vae, clips, prior, reps: int) -> dict:
  from vae_jax import codec  # pylint: disable=g-import-not-at-top

  data = [codec.compress(vae, m, prior, num_samples=len(w)) for w, m in clips]
  seconds = sum(len(w) for w, _ in clips) / vae.feature_config.sample_rate
  encode = _median_s(lambda: [codec.compress(vae, m, prior, num_samples=len(w)) for w, m in clips], reps)
  decode = _median_s(lambda: [vae.decode(codec.decompress(vae, d, prior), len(m))
                              for d, (_, m) in zip(data, clips)], reps)
  latents = _median_s(lambda: [codec.decompress(vae, d, prior) for d in data], reps)
  return {"kbps": 8e-3 * sum(map(len, data)) / seconds, "encode_s": encode, "decode_s": decode,
          "decode_latents_only_s": latents, "encode_x_real_time": seconds / encode,
          "decode_x_real_time": seconds / decode}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="runs/fsdd", help="The VAE run.")
  ap.add_argument("--prior", default="runs/fsdd_prior", help="A learned prior of it ('' to skip).")
  ap.add_argument("--fsdd", default=os.path.join("..", "shared", "data", "fsdd", "recordings"))
  ap.add_argument("--clips", type=int, default=100)
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()

  from vae_jax.data.corpora import fsdd_corpus  # pylint: disable=g-import-not-at-top
  from vae_jax.inference import griffin_lim_batch, load_trained  # pylint: disable=g-import-not-at-top
  from vae_jax.prior import load_prior  # pylint: disable=g-import-not-at-top

  vae = load_trained(args.workdir)
  test = [e.path for e in fsdd_corpus(args.fsdd).entries if e.split == "test"]
  paths = test[::max(1, len(test) // args.clips)][:args.clips]
  clips = [vae.load_audio(p) for p in paths]
  seconds = sum(len(w) for w, _ in clips) / vae.feature_config.sample_rate
  result = {**machine.describe(shlex.join(["python", "-m", "bench.codec"] + sys.argv[1:])),
            "clips": len(clips), "audio_s": seconds,
            "standard": _prior_figures(vae, clips, None, args.reps)}
  if args.prior:
    result["learned"] = _prior_figures(vae, clips, load_prior(args.prior), args.reps)
  fc, iters = vae.feature_config, vae.config.eval.griffin_lim_iters
  gl = _median_s(lambda: griffin_lim_batch([m for _, m in clips], fc, iters), args.reps)
  result["griffin_lim_x_real_time"] = seconds / gl
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()

"""Renders a vae_jax.eval.report.Report: metrics.json, report.md with figures, and a console table."""

import math
import os
from typing import Any, Mapping

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax import fileio, plots  # noqa: E402
from vae_jax.eval.report import Report  # noqa: E402

_SYSTEM_TITLES = {"oracle": "oracle (true mel)", "vae": "VAE", "pca": "PCA", "ae": "AE (β=0)"}


def fmt(v: Any, digits: int = 3) -> str:
  """A number for a table; '—' where there is none."""
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "—"
  return f"{v:.{digits}f}"


def write_report(report: Report, directory: str) -> dict[str, str]:
  """Writes metrics.json, the figures and report.md into `directory`; returns their paths."""
  fileio.makedirs(directory)
  paths = {"metrics": os.path.join(directory, "metrics.json"),
           "report": os.path.join(directory, "report.md")}
  doc = {"workdir": report.trained.workdir, "step": report.trained.step,
         **report.metrics, "utterances": report.utterances}
  fileio.write_json(paths["metrics"], doc, indent=1)
  figures = _write_figures(report, directory)
  paths.update(figures)
  fileio.write_text(paths["report"],
                    render_markdown(report, {k: os.path.basename(v) for k, v in figures.items()}))
  return paths


def _write_figures(report: Report, directory: str) -> dict[str, str]:
  m, out = report.metrics, {}
  out["reconstructions"] = plots.save_figure(_reconstruction_figure(report),
                                             os.path.join(directory, "reconstructions.png"))
  out["latents"] = plots.save_figure(_latent_figure(m), os.path.join(directory, "latents.png"))
  if "eval/neg_iwae" in m:
    out["iwae"] = plots.save_figure(_iwae_figure(m), os.path.join(directory, "iwae.png"))
  if any(k.startswith("probe/") for k in m):
    out["probes"] = plots.save_figure(_probe_figure(m), os.path.join(directory, "probes.png"))
  if "oracle" in report.systems and report.systems["oracle"].scores is not None:
    out["stoi"] = plots.save_figure(_stoi_figure(report), os.path.join(directory, "stoi.png"))
  return out


def _examples(report: Report, n: int = 3) -> list[int]:
  """Test utterances at the quartiles of length, so short and long ones are shown."""
  order = np.argsort(report.test.lengths, kind="stable")
  picks = [order[int(q * (len(order) - 1))] for q in np.linspace(0.25, 0.75, n)]
  return list(dict.fromkeys(int(i) for i in picks))


def _reconstruction_figure(report: Report):
  names = [n for n in ("vae", "pca", "ae") if n in report.systems]
  panels = []
  for i in _examples(report):
    panels.append((f"{report.test.names[i]}: input", report.refs[i]))
    panels += [(f"{_SYSTEM_TITLES[n]}", report.systems[n].recon[i]) for n in names]
  return plots.spectrogram_grid(panels, report.trained.feature_config.frames_per_second,
                                ncols=len(names) + 1)


def _latent_figure(m: Mapping[str, Any]):
  kl, var = np.asarray(m["eval/kl_per_channel"]), np.asarray(m["eval/posterior_mean_variance"])
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
  a.bar(np.arange(len(kl)), kl)
  a.set_xlabel("latent channel")
  a.set_ylabel("KL (nats / latent frame)")
  b.bar(np.arange(len(var)), np.maximum(var, 1e-6))
  b.axhline(0.01, color="k", ls="--", lw=1)
  b.set_yscale("log")
  b.set_xlabel("latent channel")
  b.set_ylabel("Var over data of posterior mean")
  b.set_title(f"active units: {int(m['eval/active_units'])}/{len(var)} (> 0.01)", fontsize=9)
  fig.tight_layout()
  return fig


def _iwae_curve(m: Mapping[str, Any]) -> list[tuple[int, float]]:
  prefix = "eval/neg_iwae_k/"
  return sorted((int(k[len(prefix):]), v) for k, v in m.items() if k.startswith(prefix))


def _iwae_figure(m: Mapping[str, Any]):
  ks, vs = zip(*_iwae_curve(m))
  fig, ax = plt.subplots(figsize=(5, 3))
  if not np.all(np.isfinite(vs)):  # A diverged model: say so rather than fail to plot.
    ax.text(0.5, 0.5, "the bound is not finite", ha="center", va="center", transform=ax.transAxes)
    ax.axis("off")
    return fig
  ax.plot(ks, vs, "o-", label="−IWAE bound")
  ax.axhline(m["eval/neg_elbo"], color="k", ls="--", lw=1, label="−ELBO (analytic KL)")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("importance samples k")
  ax.set_ylabel("nats / frame")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def _probe_rows(m: Mapping[str, Any]) -> dict[str, dict[str, float]]:
  rows: dict[str, dict[str, float]] = {}
  for k, v in m.items():
    if k.startswith("probe/"):
      _, label, what = k.split("/")
      rows.setdefault(label, {})[what] = v
  return rows


def _probe_figure(m: Mapping[str, Any]):
  rows = _probe_rows(m)
  systems = [s for s in ("vae", "ae", "pca", "mfcc", "chance") if any(s in r for r in rows.values())]
  fig, ax = plt.subplots(figsize=(2.5 + 1.6 * len(rows), 3))
  width = 0.8 / len(systems)
  for j, s in enumerate(systems):
    ax.bar(np.arange(len(rows)) + j * width, [r.get(s, 0.0) for r in rows.values()], width, label=s)
  ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
  ax.set_xticklabels(list(rows))
  ax.set_ylabel("test accuracy")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  return fig


def _stoi_figure(report: Report):
  oracle, vae = report.systems["oracle"].scores.stoi_N, report.systems["vae"].scores.stoi_N
  ok = np.isfinite(oracle) & np.isfinite(vae)
  fig, ax = plt.subplots(figsize=(4, 4))
  ax.scatter(oracle[ok], vae[ok], s=8)
  lo = min(0.9, float(np.min(np.concatenate([oracle[ok], vae[ok]]))) - 0.05) if ok.any() else 0.0
  ax.plot([lo, 1], [lo, 1], "k--", lw=1)
  ax.set_xlim(lo, 1.01)
  ax.set_ylim(lo, 1.01)
  ax.set_xlabel("STOI, Griffin-Lim from the true mel (oracle)")
  ax.set_ylabel("STOI, Griffin-Lim from the VAE")
  ax.set_title(f"{int(ok.sum())} of {len(ok)} clips long enough for per-clip STOI", fontsize=8)
  fig.tight_layout()
  return fig


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
      "| " + " | ".join(r) + " |" for r in rows]


def render_markdown(report: Report, figures: Mapping[str, str]) -> str:
  """The report as markdown (figures referenced by file name, beside it)."""
  m, t = report.metrics, report.trained
  fc = t.feature_config
  lines = [f"# Evaluation of `{t.workdir}` at step {t.step}", "",
           f"Test split of the `{report.dataset.corpus}` corpus: {int(m['eval/utterances'])} utterances, "
           f"{int(m['eval/frames'])} frames ({m['eval/audio_seconds']:.1f} s of audio; "
           f"{fc.sample_rate} Hz, {fc.n_mels} mel bins, {fc.frames_per_second:g} frames/s). "
           f"Latents: {t.latent_channels} channels at 1/{t.stride} of the frame rate. "
           f"Evaluation took {m['eval/seconds']:.0f} s.", ""]
  lines += _bounds_section(m, fc.n_mels, figures)
  lines += _latent_section(m, t, figures)
  lines += _reconstruction_section(report, figures)
  lines += _audio_section(report, figures)
  lines += _probe_section(m, figures)
  lines += report.sections
  lines += ["## Files", "", "`metrics.json` holds every number above (NaN written as null) and "
            "a per-utterance list (`utterances`: bounds per frame, per-clip STOI and PESQ).", ""]
  return "\n".join(lines)


def _bounds_section(m, n_mels: int, figures) -> list[str]:
  if "eval/neg_elbo" not in m:
    return ["## Likelihood", "", "The model is deterministic (no posterior to sample): "
            "no ELBO or IWAE bound.", ""]
  k = int(m["eval/iwae_samples"])
  rows = [
      ["−ELBO", fmt(m["eval/neg_elbo"]), fmt(m["eval/neg_elbo_per_bin"], 4), fmt(m["eval/neg_elbo_logmel"])],
      ["  reconstruction −log p(x \\| z)", fmt(m["eval/nll"]), fmt(m["eval/nll"] / n_mels, 4), ""],
      ["  KL(q(z \\| x) ‖ p(z))", fmt(m["eval/kl"]), fmt(m["eval/kl"] / n_mels, 4), ""],
      [f"−IWAE bound, k = {k}", fmt(m["eval/neg_iwae"]), fmt(m["eval/neg_iwae_per_bin"], 4),
       fmt(m["eval/neg_iwae_logmel"])],
      ["PPCA −log p(x) (exact, PCA baseline)", fmt(m["eval/pca/ppca_nll"]),
       fmt(m["eval/pca/ppca_nll"] / n_mels, 4), fmt(m["eval/pca/ppca_nll_logmel"])],
  ]
  lines = ["## Likelihood bounds", "",
           *_table(["nats", "per frame (normalised)", "per mel bin", "per frame (log-mel)"], rows), "",
           "Both bounds are upper bounds on −log p(x), so lower is better and −IWAE ≤ −ELBO. "
           "The model's likelihood is a Gaussian over *normalised* log-mel features "
           "((x − mean) / std per mel bin, train-split statistics). The density of the unnormalised "
           "natural-log mel follows by the change of variables: −log p(log-mel) = −log p(normalised) "
           f"+ Σ_f log std_f, which adds {m['eval/log_std_per_frame']:.3f} nats per frame "
           "(last column). Floored bins (ln of the 1e-5 amplitude floor) are treated as continuous. "
           "Latents of padded frames are set to zero here, so −ELBO can differ slightly from the "
           "`eval/loss` logged during training.",
           "",
           f"The −ELBO uses the analytic KL and the reconstruction term averaged over the {k} "
           f"posterior samples; the single-sample Monte Carlo estimate of the same bound is "
           f"{fmt(m['eval/neg_elbo_mc'])}. The IWAE bound (Burda et al., 2016) is "
           f"log (1/k) Σ_k p(x, z_k) / q(z_k | x) over the whole utterance, summed over utterances "
           f"and divided by their frames. Expected −IWAE for fewer samples (averaged over disjoint "
           "groups of the same samples):", "",
           *_table(["k"] + [str(kk) for kk, _ in _iwae_curve(m)],
                   [["−IWAE"] + [fmt(v) for _, v in _iwae_curve(m)]]), ""]
  if "iwae" in figures:
    lines += [f"![IWAE bound against k]({figures['iwae']})", ""]
  return lines


def _latent_section(m, t, figures) -> list[str]:
  kl = np.asarray(m["eval/kl_per_channel"])
  var = np.asarray(m["eval/posterior_mean_variance"])
  order = np.argsort(-kl, kind="stable")
  rows = [[str(c), fmt(kl[c]), fmt(var[c], 4), "yes" if var[c] > 0.01 else "no"] for c in order]
  return ["## Latent usage", "",
          f"Active units: **{int(m['eval/active_units'])} of {len(kl)}** channels have "
          "Var_x(E_q[z_c | x]) > 0.01 (Burda et al., 2016), with every valid latent frame of every "
          "test utterance as one draw of x. That test also passes channels whose mean moves a little "
          "while they carry almost no information: "
          f"**{int(m['eval/channels_above_min_kl'])}** channels have more than 0.1 nats of KL per "
          "latent frame (KL is in nats per latent frame).", "",
          *_table(["channel", "KL", "Var of posterior mean", "active"], rows), "",
          f"![KL and posterior-mean variance per channel]({figures['latents']})", ""]


def _reconstruction_section(report: Report, figures) -> list[str]:
  m = report.metrics
  names = [n for n in ("vae", "pca", "ae") if f"eval/{n}/logmel_mse" in m]
  rows = [[_system_label(n, m)] + [fmt(m[f"eval/{n}/{k}"]) for k in ("logmel_mse", "logmel_l1", "mel_lsd_db", "logmel_cd_db")]
          for n in names]
  n_mels = report.trained.feature_config.n_mels
  bad = [f"{_system_label(n, m)}: {int(m[f'eval/{n}/nonfinite_utterances'])}" for n in names
         if m.get(f"eval/{n}/nonfinite_utterances")]
  warning = ([f"**Non-finite reconstructions** (left out of every figure below; a diverged model): "
              f"{', '.join(bad)} of {int(m['eval/utterances'])} utterances.", ""] if bad else [])
  return ["## Reconstruction", "", *warning,
          *_table(["system", "log-mel MSE", "log-mel L1", "mel LSD (dB)", "log-mel cepstral distance (dB)"],
                  rows), "",
          "All on unnormalised natural-log mel amplitudes ln A, averaged over every frame of every "
          "test utterance together; the VAE decodes its posterior mean. MSE and L1 are in (nepers)² "
          "and nepers per bin. Mel LSD = mean over frames of the RMS over mel bins of "
          "(20 / ln 10)(ln A − ln A') dB. The log-mel cepstral distance applies MCD's formula "
          "(10 / ln 10) √(2 Σ_d (c_d − c'_d)²) dB to c_1..c_"
          f"{min(24, n_mels - 1)} of the orthonormal DCT-II of ln A (c_0, the level, excluded); it "
          "grows with the number of mel bins, so it compares runs with the same features only. The "
          "standard MCD, from the waveforms, is in the audio section.", "",
          f"![input and reconstructions]({figures['reconstructions']})", ""]


def _system_label(name: str, m) -> str:
  if name == "pca":
    return f"PCA (k = {int(m['eval/pca/components'])} per frame)"
  if name == "ae":
    return f"AE (β=0, step {int(m['eval/ae/step'])})"
  return _SYSTEM_TITLES[name]


def _audio_section(report: Report, figures) -> list[str]:
  m = report.metrics
  if "eval/oracle/stoi_concat" not in m:
    return ["## Audio", "", "Audio metrics were not computed (`--noaudio_metrics`).", ""]
  fc = report.trained.feature_config
  has_pesq = "eval/oracle/pesq_clip_mean" in m
  names = [n for n in ("oracle", "vae", "pca", "ae") if f"eval/{n}/stoi_concat" in m]
  header = ["system", "STOI (all clips concatenated)", "STOI (clip mean)", "STOI clips scored", "MCD dB (clip mean)"]
  if "eval/oracle/stoi_group_mean" in m:
    header.insert(2, "STOI (speaker mean)")
  if has_pesq:
    header += ["PESQ (clip mean)", "PESQ clips scored"]
  rows = []
  for n in names:
    row = [_system_label(n, m), fmt(m[f"eval/{n}/stoi_concat"]), fmt(m[f"eval/{n}/stoi_clip_mean"]),
           f"{int(m[f'eval/{n}/stoi_clips_scored'])}/{int(m[f'eval/{n}/clips'])}",
           fmt(m.get(f"eval/{n}/mcd_db_clip_mean"), 2)]
    if "eval/oracle/stoi_group_mean" in m:
      row.insert(2, fmt(m[f"eval/{n}/stoi_group_mean"]))
    if has_pesq:
      row += [fmt(m[f"eval/{n}/pesq_clip_mean"]),
              f"{int(m[f'eval/{n}/pesq_clips_scored'])}/{int(m[f'eval/{n}/clips'])}"]
    rows.append(row)
  mode = {8000: "narrow-band (ITU-T P.862)", 16000: "wide-band (P.862.2)"}.get(fc.sample_rate)
  gap = (f"**Gap to the oracle**: STOI {fmt(m['eval/vae/stoi_concat'])} for the VAE against "
         f"{fmt(m['eval/oracle/stoi_concat'])} for Griffin-Lim from the true mel, a gap of "
         f"{fmt(m['eval/vae/stoi_gap_to_oracle'])} (concatenated clips)")
  if has_pesq:
    gap += (f"; PESQ {fmt(m['eval/vae/pesq_gap_to_oracle'], 2)} relative to the oracle "
            "(mean over the clips both score)")
  lines = ["## Audio", "",
           f"Every test utterance is re-synthesised with Griffin-Lim "
           f"({report.trained.config.eval.griffin_lim_iters} iterations, `vae_jax.audio.spectral`) from "
           "the true mel (the oracle: the ceiling any mel-domain model reaches with this inverter) "
           "and from each system's reconstruction, and scored against the original waveform.", "",
           *_table(header, rows), "", gap + ".", "",
           "pystoi cannot score a clip with fewer than 30 non-silent 25.6 ms frames (about 0.4 s of "
           "speech), so the per-clip mean covers only the clips counted beside it; nothing undefined "
           "is averaged. The concatenated score runs STOI once over all test clips back to back "
           "(each clip pair scaled by 1 / peak of the original, so quiet clips are not discarded as "
           "silence); the speaker mean averages one concatenated score per speaker.", "",
           "MCD is the standard mel-cepstral distortion (10 / ln 10) √(2 Σ_{d=1..24} (c_d − c'_d)²) dB "
           "on SPTK mel-cepstra (pysptk.mcep, order 24, Blackman frames of at least 25 ms every 5 ms) of the original "
           "and re-synthesised waveforms, over the frames within 40 dB of the clip's loudest; "
           "published vocoders score about 4–8 dB."]
  if has_pesq:
    lines += ["", f"PESQ is {mode}; clips where it finds no utterance count as unscored."]
  elif mode is None:
    lines += ["", f"PESQ needs 8 or 16 kHz audio; this model runs at {fc.sample_rate} Hz."]
  if "stoi" in figures:
    lines += ["", f"![per-clip STOI, VAE against oracle]({figures['stoi']})"]
  return lines + [""]


def _probe_section(m, figures) -> list[str]:
  rows = _probe_rows(m)
  if not rows:
    return []
  systems = [s for s in ("vae", "ae", "pca", "mfcc") if any(s in r for r in rows.values())]
  titles = {"vae": "VAE posterior mean", "ae": "AE latent", "pca": "PCA scores", "mfcc": "MFCC (13)"}
  table = [[label, str(int(r["classes"]))] + [fmt(r.get(s)) for s in systems] + [fmt(r["chance"])]
           for label, r in rows.items()]
  return ["## Linear probes", "",
          *_table(["label", "classes"] + [titles[s] for s in systems] + ["chance"], table), "",
          "Test accuracy of softmax regression with L2 (weight chosen on a held-out fifth of the "
          "train split) trained on train-split utterances. Each utterance is one vector: the mean "
          "and standard deviation over time of its code sequence (VAE: posterior means per latent "
          "frame; MFCC: c_0..c_12 of the log-mel per frame). Chance is the test accuracy of always "
          "answering the most frequent train-split class.", "",
          f"![probe accuracies]({figures['probes']})", ""]


def summary_table(m: Mapping[str, Any]) -> str:
  """A short plain-text table of the main numbers, for the console."""
  cols = [n for n in ("vae", "pca", "ae", "oracle") if any(k.startswith(f"eval/{n}/") for k in m)]
  rows = []

  def row(name, fn, digits=3):
    rows.append([name] + [fmt(fn(c), digits) if fn(c) is not None else "" for c in cols])

  get = lambda key: (lambda c: m.get(key.format(c)))
  if "eval/neg_elbo" in m:
    row("-ELBO nats/frame", lambda c: m["eval/neg_elbo"] if c == "vae" else None)
    row(f"-IWAE (k={int(m['eval/iwae_samples'])})", lambda c: m["eval/neg_iwae"] if c == "vae" else None)
    row("KL nats/frame", lambda c: m["eval/kl"] if c == "vae" else None)
  row("PPCA -log p nats/frame", lambda c: m["eval/pca/ppca_nll"] if c == "pca" else None)
  c_all = len(m["eval/kl_per_channel"])
  rows.append(["active units (KL > 0.1)"] + [
      f"{int(m['eval/active_units'])}/{c_all} ({int(m['eval/channels_above_min_kl'])})"
      if c == "vae" else "" for c in cols])
  row("log-mel MSE", get("eval/{}/logmel_mse"))
  row("mel LSD dB", get("eval/{}/mel_lsd_db"), 2)
  row("MCD dB", get("eval/{}/mcd_db_clip_mean"), 2)
  row("STOI (concatenated)", get("eval/{}/stoi_concat"))
  row("PESQ (clip mean)", get("eval/{}/pesq_clip_mean"), 2)
  for label, r in _probe_rows(m).items():
    rows.append([f"probe {label} (chance {fmt(r['chance'], 2)})"] + [fmt(r.get(c), 2) if c in r else ""
                                                                       for c in cols])
    if "mfcc" in r:
      rows[-1][0] += f", MFCC {fmt(r['mfcc'], 2)}"
  rows = [r for r in rows if any(x for x in r[1:])]
  width = max(len(r[0]) for r in rows)
  lines = [" " * width + "".join(f"{c:>10}" for c in cols)]
  lines += [r[0].ljust(width) + "".join(f"{x:>10}" for x in r[1:]) for r in rows]
  return "\n".join(lines)


# The short report train.py writes at the end of a run.


def write_training_report(workdir: str, result: dict[str, Any]) -> str:
  """A short markdown summary of the run: final evaluation and where everything is."""
  samples_dir = os.path.join(workdir, "samples")
  latest = [f for f in fileio.listdir(samples_dir) if f.endswith(".png")]
  lines = [f"# Training run `{os.path.basename(fileio.absolute(workdir).rstrip('/'))}`", ""]
  step, total = result["step"], result.get("num_steps", result["step"])
  if step < total:  # Stopped by train.max_steps_per_run: a part of the run, not its end.
    lines += [f"Steps: {step} of {total}: this part stopped at train.max_steps_per_run; "
              "rerun the same command to continue.", ""]
  else:
    lines += [f"Steps: {step}", ""]
  if result.get("skipped_updates"):
    lines += [f"Skipped updates (non-finite loss or gradient): {result['skipped_updates']}", ""]
  evals = {k: v for k, v in result.items() if k.startswith("eval/")}
  if evals:
    eval_step = result.get("last_eval_step", step)
    lines += [f"Last evaluation, at step {eval_step}:", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" for k, v in evals.items()]
  if latest:
    lines += ["", f"![reconstructions](samples/{latest[-1]})"]
  lines += ["", "Scalars: `metrics.jsonl`; TensorBoard: `tensorboard --logdir tb`; "
            "full evaluation: `python eval.py --workdir <this directory>`."]
  path = os.path.join(workdir, "report.md")
  fileio.write_text(path, "\n".join(lines) + "\n")
  return path


def _newest_step_dir(directory: str) -> str:
  steps = [int(d) for d in fileio.listdir(directory) if d.isdigit()]
  return os.path.join(directory, str(max(steps))) if steps else "none yet"


def print_training_summary(workdir: str, result: dict[str, Any]) -> None:
  """Prints where the checkpoint, logs and report of a run are (only the checkpoint if it was stopped)."""
  if jax.process_index() != 0:
    return
  # From the result or a listing, not a new CheckpointManager: opening one is a barrier
  # across processes.
  checkpoint = result.get("checkpoint") or _newest_step_dir(os.path.join(workdir, "checkpoints"))
  if result.get("stopped_by_signal"):
    print(f"checkpoint: {checkpoint}")
    return
  report = write_training_report(workdir, result)
  if result.get("skipped_updates"):
    print(f"skipped:    {result['skipped_updates']} updates with a non-finite loss or gradient")
  print(f"checkpoint: {checkpoint}")
  print(f"logs:       {os.path.join(workdir, 'metrics.jsonl')} "
        f"(TensorBoard: tensorboard --logdir {os.path.join(workdir, 'tb')})")
  print(f"samples:    {os.path.join(workdir, 'samples')}")
  print(f"report:     {report}")

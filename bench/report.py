"""The harness's results as a markdown section (what BENCHMARKS.md is made of)."""

from typing import Any


def _f(x: float, digits: int = 0) -> str:
  return f"{x:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
  return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _skipped(name: str, r: dict[str, Any]) -> list[str] | None:
  if "error" in r:
    return [f"{name}: failed: `{r['error'].splitlines()[0]}`", ""]
  if "skipped" in r:
    return [f"{name}: skipped: {r['skipped']}", ""]
  return None


def _train(r: dict[str, Any]) -> list[str]:
  s = r["shapes"]
  lines = [f"Batch {s['batch']} x {s['segment_frames']} frames x {s['n_mels']} mels, conv VAE with "
           f"{r['params_jax']:,} parameters (`conv_impl={s['conv_impl']}`, {s['dtype']}); "
           "real FSDD batches; median step time of interleaved repetitions after warm-up.", ""]
  rows = []
  names = {"jax": "JAX (pmap over 1 device, as train.py runs it)",
           f"torch_eager_{r.get('torch_threads')}_threads": f"PyTorch eager twin ({r.get('torch_threads')} threads, its default)",
           "torch_eager_1_thread": "PyTorch eager twin (1 thread)"}
  for k, v in r["results"].items():
    t = v["timing"]
    rows.append([names.get(k, k), f"{t['median_s'] * 1000:.0f} ({t['min_s'] * 1000:.0f}-{t['max_s'] * 1000:.0f}, n={t['reps']})",
                 f"{t['median_cpu_s'] * 1000:.0f}", _f(v["frames_per_s"]), _f(v["audio_s_per_s"], 1),
                 f"{t['load1']:.1f}"])
  lines += _table(["implementation", "step ms, median (range, reps)", "CPU ms/step (all threads)",
                   "mel frames/s", "audio s/s", "load1"], rows)
  if "ratio_jax_over_torch" in r:
    each = ", ".join(f"{names.get(k, k)}: {v:.2f}x" for k, v in r["ratio_jax_over_each_torch"].items())
    lines += ["", f"**JAX / fastest PyTorch eager throughput: {r['ratio_jax_over_torch']:.2f}x** ({each}; "
              f"parameter counts equal: {r['params_jax']:,})."]
  else:
    lines += ["", r.get("torch_skipped", "")]
  return lines + [""]


def _compile(r: dict[str, Any]) -> list[str]:
  rows = [[k, f"{v['timing']['median_s'] * 1000:.0f}", _f(v["frames_per_s"]), f"{v['timing']['load1']:.1f}"]
          for k, v in r["results"].items()]
  return ([f"PyTorch threads: {r['threads']}.", ""]
          + _table(["implementation", "step ms", "mel frames/s", "load1"], rows)
          + ["", f"JAX / torch.compile: {r['ratio_jax_over_torch_compile']:.2f}x "
             f"(first compiled call {r['first_call_s']:.0f} s).", ""])


def _variants(r: dict[str, Any]) -> list[str]:
  rows = [[k, f"{v['timing']['median_s'] * 1000:.0f}", f"{v['relative_to_default']:.2f}",
           _f(v["frames_per_s"]), f"{v['timing']['load1']:.1f}"] for k, v in r.items() if isinstance(v, dict)]
  return _table(["JAX step variant", "step ms", "time vs default", "mel frames/s", "load1"], rows) + [""]


def _conv(r: dict[str, Any]) -> list[str]:
  rows = [[x["shape"], x["part"], f"{x['lax']['ms']:.1f}", f"{x['lax']['gflop_per_s']:.0f}",
           f"{x['matmul']['ms']:.1f}", f"{x['matmul']['gflop_per_s']:.0f}", f"{x['lax_over_matmul_time']:.2f}"]
          for x in r["rows"]]
  load = max(x["lax"]["load1"] for x in r["rows"])
  return ([f"Batch {r['batch']}; each part jitted alone; medians of interleaved repetitions "
           f"(load1 up to {load:.1f}). Sum over the table: lax {r['total_ms']['lax']:.0f} ms, matmul "
           f"{r['total_ms']['matmul']:.0f} ms ({r['total_lax_over_matmul']:.2f}x).", ""]
          + _table(["conv (T, C_in->C_out, kernel, stride)", "part", "lax ms", "lax GFLOP/s", "matmul ms",
                    "matmul GFLOP/s", "lax / matmul time"], rows) + [""])


def _flags(r: dict[str, Any]) -> list[str]:
  rows = []
  for k, v in r["results"].items():
    if "error" in v:
      rows.append([k, f"`{v['flags'] or '(none)'}`", "failed", "", "", v["error"][:80]])
      continue
    rounds = ", ".join(f"{x * 1000:.0f}" for x in v["per_round_step_s"])
    rows.append([k, f"`{v['flags'] or '(none)'}`", f"{v['step_s'] * 1000:.0f}", f"{v.get('relative_to_none', 1):.2f}",
                 f"{v['first_call_s']:.0f}", f"{rounds} (load1 {v['load1']:.1f})"])
  return ([f"One process per setting, {r['rounds']} rounds in alternating order; median over rounds of "
           "each round's median step time.", ""]
          + _table(["setting", "XLA_FLAGS", "step ms", "time vs none", "first call s", "per round ms"], rows)
          + [""])


def _loop(r: dict[str, Any]) -> list[str]:
  return [f"`train_and_evaluate` loop: {r['loop_steps_per_s']:.2f} steps/s (median of "
          f"{len(r['loop_windows_steps_per_s'])} windows of {r['log_every']} steps) against "
          f"{r['bare_step_steps_per_s']:.2f} steps/s for the bare step: {r['loop_over_bare']:.2f}x, "
          f"{r['host_overhead_ms_per_step']:.0f} ms of host overhead per step (load1 {r['load1']:.1f}).", ""]


def _data(r: dict[str, Any]) -> list[str]:
  rows = [["cold (empty cache: decode, librosa log-mel, shards, normaliser)", f"{r['cold']['s']:.1f}",
           _f(r["cold"]["files_per_s"]), _f(r["cold"]["frames_per_s"])],
          ["cached (shards + normaliser)", f"{r['cached']['s']:.2f}", _f(r["cached"]["files_per_s"]),
           _f(r["cached"]["frames_per_s"])]]
  return ([f"`load_dataset` on {r['files']} files ({r['audio_s']:.0f} s of audio, {r['frames']:,} frames), "
           f"workers: {r['workers']} (load1 {r['load1']:.1f})."]
          + [""] + _table(["feature pipeline", "s", "files/s", "frames/s"], rows) + [""])


def _front_end(r: dict[str, Any]) -> list[str]:
  return [f"JAX log-mel front end (jit, batch {r['batch']} x {r['clip_s']:g} s): "
          f"{_f(r['frames_per_s'])} frames/s, {_f(r['x_real_time'])}x real time.", ""]


def _loader(r: dict[str, Any]) -> list[str]:
  loop = r["in_loop"]
  return [f"Loader alone (warm cache, no prefetch thread): {r['loader_batches_per_s']:.0f} batches/s "
          f"({r['batch_ms']:.1f} ms a batch); the train step consumes {r['step_batches_per_s']:.2f} batches/s: "
          f"**{r['loader_over_step']:.0f}x** (target >= 10x: {'met' if r['target_met'] else 'not met'}). "
          f"In a loop shaped like the training loop (prefetch {loop['prefetch']}), `next(loader)` waited "
          f"{loop['mean_wait_ms']:.2f} ms per step on average (max {loop['max_wait_ms']:.1f} ms, "
          f"{100 * loop['wait_fraction']:.2f}% of the time).", ""]


def _inference(r: dict[str, Any]) -> list[str]:
  names = {"encode_decode": "encode + decode (normalised log-mel in and out)",
           "encode_decode_griffin_lim": f"encode + decode + Griffin-Lim ({r['griffin_lim_iters']} it.)",
           "wave_to_wave": "wave -> JAX log-mel -> encode + decode -> Griffin-Lim -> wave"}
  rows = []
  for k, v in r["results"].items():
    name, batch = k.rsplit(", batch ", 1)
    rows.append([names[name], batch, f"{v['timing']['median_s'] * 1000:.1f}", _f(v["x_real_time"]),
                 f"{v['timing']['load1']:.1f}"])
  return ([f"{r['clip_s']:g} s clips ({r['mel_frames']} padded mel frames); real-time factor = seconds of "
           "audio per second of compute. Targets: encode + decode >= 500x, with the inverter >= 20x.", ""]
          + _table(["path", "batch", "ms", "x real time", "load1"], rows) + [""])


def _memory(r: dict[str, Any]) -> list[str]:
  return [f"Peak RSS of `{r['command']}`: **{r['peak_rss_mib']:.0f} MiB** "
          f"({r['steps']} steps, evaluation and checkpoint included; {r['wall_s']:.0f} s).", ""]


def _scaling(r: dict[str, Any]) -> list[str]:
  rows = [[k, f"{v['step_s'] * 1000:.0f}", _f(v["frames_per_s"]), f"{v['speedup_vs_1']:.2f}",
           f"{v['timing']['load1']:.1f}"] for k, v in r["results"].items()]
  lines = [f"Global batch {r['global_batch']}, pmap over {r['device_kind']} devices."]
  if r.get("forced_host_devices"):
    lines[0] += (f" {r['note']}: this is the overhead of splitting the batch and the all-reduce, "
                 "not a speed-up.")
  return lines + [""] + _table(["devices", "step ms", "mel frames/s", "speed-up vs 1", "load1"], rows) + [""]


def _profile(r: dict[str, Any]) -> list[str]:
  lines = []
  if "jax" in r:
    j = r["jax"]
    rows = [[k, f"{v:.1f}", f"{100 * j['share'][k]:.0f}%"] for k, v in j["ms_per_step"].items()]
    lines += [f"JAX step with `conv_impl={j.get('conv_impl', '?')}` (its dots are synchronous thunks; "
              "Eigen's convolutions are not), XLA thunk time by kind (sum "
              f"{j['total_thunk_ms']:.0f} ms/step; the two cores overlap; traced wall "
              f"{j['wall_ms_per_step_traced']:.0f} ms/step, load1 {j['load1']:.1f}):", ""]
    lines += _table(["kind", "ms/step", "share"], rows) + [""]
  if "torch" in r:
    t = r["torch"]
    rows = [[k, f"{v:.1f}"] for k, v in t["self_cpu_ms_per_step"].items()]
    lines += [f"PyTorch twin ({t['threads']} threads), top ops by self CPU time (total "
              f"{t['total_self_cpu_ms']:.0f} ms/step, load1 {t['load1']:.1f}):", ""]
    lines += _table(["op", "self CPU ms/step"], rows) + [""]
  return lines


SECTIONS = [
    ("train", "Train step: JAX vs PyTorch", _train),
    ("torch_compile", "torch.compile", _compile),
    ("variants", "JAX step variants and ablations", _variants),
    ("conv", "Conv1D formulations per shape", _conv),
    ("xla_flags", "XLA CPU flags", _flags),
    ("loop", "Training loop overhead", _loop),
    ("data", "Feature pipeline", _data),
    ("front_end", "JAX front end", _front_end),
    ("loader", "Does training wait on data?", _loader),
    ("inference", "Inference", _inference),
    ("memory", "Peak memory", _memory),
    ("scaling", "Device-count scaling", _scaling),
    ("profile", "Profile", _profile),
]


def markdown(results: dict[str, Any]) -> str:
  """One markdown section: provenance first, then one subsection per benchmark that ran."""
  m = results["machine"]
  lines = [f"## {m['date']}: {m['machine']}", "",
           f"Command: `{m['command']}` (from the repository root). Machine: {m['machine']}. "
           f"Date: {m['date']}. jax {m['jax']}, flax {m['flax']}, torch {m['torch'] or 'not installed'}, "
           f"Python {m['python']}. XLA_FLAGS: `{m['xla_flags'] or '(none)'}`. "
           f"Load average at start: {m['load_at_start'][0]:.1f}.", ""]
  for key, title, render in SECTIONS:
    if key not in results["sections"]:
      continue
    r = results["sections"][key]
    lines += [f"### {title}", ""]
    lines += _skipped(title, r) or render(r)
  return "\n".join(lines).rstrip() + "\n"

"""Spectrogram figures shared by training, evaluation and the notebooks."""

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax import fileio  # noqa: E402


def spectrogram_grid(panels: Sequence[tuple[str, np.ndarray]], frames_per_second: float,
                     ncols: int = 2, vmin: float | None = None, vmax: float | None = None):
  """A figure of log-mel panels ([T, F] each) sharing one colour scale."""
  n = len(panels)
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.6 * nrows), squeeze=False)
  # The colour scale comes from the wholly finite panels: a diverged model's panel (NaN, inf or
  # huge values) is drawn clipped to it, with its non-finite bins blank.
  clean = [np.asarray(p) for _, p in panels if np.all(np.isfinite(p))] or [np.zeros(1)]
  lo = vmin if vmin is not None else min(float(np.min(p)) for p in clean)
  hi = vmax if vmax is not None else max(float(np.max(p)) for p in clean)
  for ax, (title, mel) in zip(axes.flat, panels):
    extent = (0, len(mel) / frames_per_second, 0, mel.shape[1])
    ok = np.isfinite(mel)
    shown = np.ma.masked_array(np.clip(np.where(ok, mel, lo), lo, hi), mask=~ok)
    ax.imshow(shown.T, origin="lower", aspect="auto", vmin=lo, vmax=hi, extent=extent, cmap="magma")
    ax.set_title(title if ok.all() else f"{title} (not finite)", fontsize=9)
    ax.set_xlabel("s")
    ax.set_ylabel("mel bin")
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.tight_layout()
  return fig


def save_figure(fig, path: str, dpi: int = 100) -> str:
  """Saves a figure as PNG (to a local or remote path) and closes it."""
  buf = io.BytesIO()
  fig.savefig(buf, dpi=dpi, format="png")
  plt.close(fig)
  fileio.write_bytes(path, buf.getvalue())
  return path

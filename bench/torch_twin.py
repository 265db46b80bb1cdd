"""A PyTorch twin of the conv VAE and its train step, for side-by-side timing only.

Same layers in the same order as `vae_jax.models.vae` (pre-LayerNorm residual
blocks, tanh-approximate GELU, strided convs down, sub-pixel convs up, masking
at every resolution), the same parameter count, the same loss (masked Gaussian
NLL with a learned per-bin log scale plus beta * KL, reparameterised) and the
same optimiser (AdamW with warm-up and cosine decay after global-norm clipping,
with non-finite updates skipped). Activations are [B, C, T], the layout
PyTorch's conv kernels want; the LayerNorms normalise over C.

Needs the `bench` extra (`pip install -e .[bench]`); nothing in `vae_jax` imports it.
"""

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _gelu(x: torch.Tensor) -> torch.Tensor:
  # flax.linen.gelu defaults to the tanh approximation.
  return F.gelu(x, approximate="tanh")


class ChannelLayerNorm(nn.Module):
  """LayerNorm over the channels of [B, C, T] (flax's epsilon)."""

  def __init__(self, channels: int, eps: float = 1e-6):
    super().__init__()
    self.norm = nn.LayerNorm(channels, eps=eps)

  def forward(self, x_BxCxT: torch.Tensor) -> torch.Tensor:
    return self.norm(x_BxCxT.transpose(1, 2)).transpose(1, 2)


def conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Conv1d:
  """'Same'-padded conv for odd kernels: output length ceil(T / stride), as the JAX Conv1D."""
  if kernel_size % 2 != 1:
    raise ValueError(f"the twin supports odd kernels only, got {kernel_size}")
  return nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2)


class ResBlock(nn.Module):
  """Pre-norm residual block of two temporal convolutions; padded frames stay zero."""

  def __init__(self, channels: int, kernel_size: int):
    super().__init__()
    self.norm1, self.conv1 = ChannelLayerNorm(channels), conv(channels, channels, kernel_size)
    self.norm2, self.conv2 = ChannelLayerNorm(channels), conv(channels, channels, kernel_size)

  def forward(self, x: torch.Tensor, m_Bx1xT: torch.Tensor) -> torch.Tensor:
    h = self.conv1(_gelu(self.norm1(x))) * m_Bx1xT
    h = self.conv2(_gelu(self.norm2(h))) * m_Bx1xT
    return x + h


class Upsample(nn.Module):
  """Sub-pixel upsampling: a conv to factor x channels, then the factor moves into time."""

  def __init__(self, c_in: int, c_out: int, factor: int, kernel_size: int):
    super().__init__()
    self.c_out, self.factor = c_out, factor
    self.conv = conv(c_in, c_out * factor, kernel_size)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv(x)
    b, _, t = y.shape
    # Channel j = f * c_out + c becomes channel c of frame factor * t + f, as the JAX reshape.
    return y.view(b, self.factor, self.c_out, t).permute(0, 2, 3, 1).reshape(b, self.c_out, t * self.factor)


def downsample_mask(mask_BxT: torch.Tensor, stride: int) -> torch.Tensor:
  """A coarse frame is valid when any of the fine frames it covers is valid."""
  b, t = mask_BxT.shape
  m = F.pad(mask_BxT, (0, -t % stride))
  return m.view(b, -1, stride).amax(-1)


class Encoder(nn.Module):
  """mel [B, F, T] -> mean, logvar [B, latent, T / prod(strides)] and the latent mask."""

  def __init__(self, n_mels: int, latent_channels: int, channels: int,
               channel_multipliers: Sequence[int], strides: Sequence[int],
               blocks_per_stage: int, kernel_size: int):
    super().__init__()
    self.strides = tuple(strides)
    self.conv_in = conv(n_mels, channels, kernel_size)
    self.stages = nn.ModuleList()
    width = channels
    for stride, mult in zip(strides, channel_multipliers):
      blocks = nn.ModuleList(ResBlock(width, kernel_size) for _ in range(blocks_per_stage))
      down = conv(width, channels * mult, kernel_size, stride)
      self.stages.append(nn.ModuleDict({"blocks": blocks, "down": down}))
      width = channels * mult
    self.bottom = nn.ModuleList(ResBlock(width, kernel_size) for _ in range(blocks_per_stage))
    self.stats = conv(width, 2 * latent_channels, 3)

  def forward(self, mel: torch.Tensor, mask_BxT: torch.Tensor):
    m = mask_BxT[:, None]
    h = self.conv_in(mel) * m
    for stride, stage in zip(self.strides, self.stages):
      for block in stage["blocks"]:
        h = block(h, m)
      mask_BxT = downsample_mask(mask_BxT, stride)
      m = mask_BxT[:, None]
      h = stage["down"](_gelu(h)) * m
    for block in self.bottom:
      h = block(h, m)
    mean, logvar = self.stats(_gelu(h)).chunk(2, dim=1)
    return mean, logvar, mask_BxT


class Decoder(nn.Module):
  """z [B, latent, Tz] -> likelihood mean [B, F, Tz * prod(strides)]; mirrors the encoder."""

  def __init__(self, n_mels: int, latent_channels: int, channels: int,
               channel_multipliers: Sequence[int], strides: Sequence[int],
               blocks_per_stage: int, kernel_size: int):
    super().__init__()
    self.strides = tuple(strides)
    width = channels * channel_multipliers[-1]
    self.conv_in = conv(latent_channels, width, 3)
    self.bottom = nn.ModuleList(ResBlock(width, kernel_size) for _ in range(blocks_per_stage))
    self.stages = nn.ModuleList()
    stages = list(zip(strides, channel_multipliers))[::-1]
    for i, (stride, _) in enumerate(stages):
      out = channels * (stages[i + 1][1] if i + 1 < len(stages) else 1)
      up = Upsample(width, out, stride, kernel_size)
      blocks = nn.ModuleList(ResBlock(out, kernel_size) for _ in range(blocks_per_stage))
      self.stages.append(nn.ModuleDict({"up": up, "blocks": blocks}))
      width = out
    self.conv_out = conv(width, n_mels, kernel_size)

  def forward(self, z: torch.Tensor, mask_BxT: torch.Tensor) -> torch.Tensor:
    masks = [mask_BxT]
    for stride in self.strides:
      masks.append(downsample_mask(masks[-1], stride))
    h = self.conv_in(z) * masks[-1][:, None]
    for block in self.bottom:
      h = block(h, masks[-1][:, None])
    for stage, mask in zip(self.stages, masks[:-1][::-1]):
      m = mask[:, None]
      h = stage["up"](_gelu(h))[..., :mask.shape[1]] * m
      for block in stage["blocks"]:
        h = block(h, m)
    return self.conv_out(_gelu(h))


class TwinVAE(nn.Module):
  """The conv VAE with a Gaussian likelihood of learned per-bin log scale; returns per-example terms."""

  def __init__(self, n_mels: int, latent_channels: int, channels: int,
               channel_multipliers: Sequence[int], strides: Sequence[int],
               blocks_per_stage: int, kernel_size: int, init_log_scale: float = 0.0):
    super().__init__()
    shared = dict(n_mels=n_mels, latent_channels=latent_channels, channels=channels,
                  channel_multipliers=channel_multipliers, strides=strides,
                  blocks_per_stage=blocks_per_stage, kernel_size=kernel_size)
    self.encoder, self.decoder = Encoder(**shared), Decoder(**shared)
    self.log_scale = nn.Parameter(torch.full((n_mels,), float(init_log_scale)))

  def forward(self, mel_BxTxF: torch.Tensor, mask_BxT: torch.Tensor,
              noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-example ELBO terms; `noise` ([B, latent, Tz]) replaces the standard normal draw."""
    mel = mel_BxTxF.transpose(1, 2)
    mean, logvar, mask_z = self.encoder(mel, mask_BxT)
    eps = torch.randn_like(mean) if noise is None else noise
    z = mean + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar)
    recon = self.decoder(z, mask_BxT)
    log_scale = self.log_scale[:, None]
    nll = 0.5 * ((mel - recon) * torch.exp(-log_scale)) ** 2 + log_scale + HALF_LOG_2PI
    m = mask_BxT[:, None]
    kl_BxC = (kl * mask_z[:, None]).sum(2)
    return {
        "nll": (nll * m).sum((1, 2)),
        "kl": kl_BxC.sum(-1),
        "kl_per_channel": kl_BxC,
        "sq_err": (((mel - recon) ** 2) * m).sum((1, 2)),
        "latent_frames": mask_z.sum(-1),
    }


def build_twin(config) -> TwinVAE:
  """The twin of `vae_jax.models.build_model(config)` for a conv model."""
  m = config.model
  if m.name != "conv":
    raise ValueError(f"the twin mirrors the conv model only, got {m.name!r}")
  return TwinVAE(config.features.n_mels, m.latent_channels, m.channels,
                 tuple(m.channel_multipliers), tuple(m.strides), m.blocks_per_stage,
                 m.kernel_size, m.init_log_scale)


def _tensor(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, np.float32))  # A writable copy.


def load_flax_params(twin: TwinVAE, params) -> None:
  """Copies the JAX model's parameters into the twin (flax names follow the call order)."""

  def conv_from(module: nn.Conv1d, p) -> None:
    # flax kernels are [K, C_in, C_out]; torch's are [C_out, C_in, K].
    module.weight.copy_(_tensor(np.asarray(p["kernel"]).transpose(2, 1, 0)))
    module.bias.copy_(_tensor(p["bias"]))

  def norm_from(module: ChannelLayerNorm, p) -> None:
    module.norm.weight.copy_(_tensor(p["scale"]))
    module.norm.bias.copy_(_tensor(p["bias"]))

  def block_from(block: ResBlock, p) -> None:
    norm_from(block.norm1, p["LayerNorm_0"])
    conv_from(block.conv1, p["Conv1D_0"])
    norm_from(block.norm2, p["LayerNorm_1"])
    conv_from(block.conv2, p["Conv1D_1"])

  enc, dec = twin.encoder, twin.decoder
  enc_convs = [enc.conv_in] + [s["down"] for s in enc.stages] + [enc.stats]
  enc_blocks = [b for s in enc.stages for b in s["blocks"]] + list(enc.bottom)
  dec_blocks = list(dec.bottom) + [b for s in dec.stages for b in s["blocks"]]
  with torch.no_grad():
    for i, m in enumerate(enc_convs):
      conv_from(m, params["encoder"][f"Conv1D_{i}"])
    for i, b in enumerate(enc_blocks):
      block_from(b, params["encoder"][f"ResBlock_{i}"])
    for i, m in enumerate([dec.conv_in, dec.conv_out]):
      conv_from(m, params["decoder"][f"Conv1D_{i}"])
    for i, b in enumerate(dec_blocks):
      block_from(b, params["decoder"][f"ResBlock_{i}"])
    for i, s in enumerate(dec.stages):
      conv_from(s["up"].conv, params["decoder"][f"Upsample_{i}"]["Conv1D_0"])
    twin.log_scale.copy_(_tensor(params["log_scale"]))


def num_params(model: nn.Module) -> int:
  """Number of trainable scalars."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lr_lambda(config):
  """optax.warmup_cosine_decay_schedule as a multiplier of the peak rate, for LambdaLR."""
  o = config.optim
  warmup = o.warmup_steps
  decay = max(config.train.num_steps, warmup + 1)
  end = o.end_lr_factor

  def factor(step: int) -> float:
    if step < warmup:
      return step / warmup
    progress = min(step - warmup, decay - warmup) / (decay - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

  return factor


class TwinTrainer:
  """The train step of `vae_jax.train.train_step` (single device, free_bits 0) in PyTorch eager."""

  def __init__(self, config, seed: int = 0, optimizer_impl: str = "foreach"):
    torch.manual_seed(seed)
    self.config = config
    self.model = build_twin(config)
    o = config.optim
    kwargs = {"foreach": True} if optimizer_impl == "foreach" else {"fused": True} if optimizer_impl == "fused" else {}
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                 eps=1e-8, weight_decay=o.weight_decay, **kwargs)
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(config))
    self.step_count = 0

  def step(self, mel_BxTxF: torch.Tensor, mask_BxT: torch.Tensor) -> dict[str, float]:
    """One update; returns the loss and grad norm as floats (which waits for the step)."""
    c = self.config
    warm = c.loss.kl_warmup_steps
    beta = c.loss.beta * (min(1.0, self.step_count / warm) if warm > 0 else 1.0)
    terms = self.model(mel_BxTxF, mask_BxT)
    frames = mask_BxT.sum()
    loss = (terms["nll"].sum() + beta * terms["kl"].sum()) / frames
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if c.optim.grad_clip_norm > 0:
      grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip_norm)
    else:
      grad_norm = torch.linalg.vector_norm(
          torch.stack([torch.linalg.vector_norm(p.grad) for p in self.model.parameters()]))
    finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
    if finite:  # As in the JAX step, a non-finite update is never applied.
      self.opt.step()
    self.sched.step()
    self.step_count += 1
    with torch.no_grad():
      mse = terms["sq_err"].sum() / (frames * mel_BxTxF.shape[-1])
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "mse": float(mse),
            "finite": finite}

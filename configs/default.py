"""Base config: a conv VAE on the embedded synthetic speech corpus.

  python train.py                       # this config, workdir runs/default
  python train.py --config=configs/default.py --workdir=/tmp/run --config.train.num_steps=500

Every other config imports this one and overrides a few fields.
Runtime: 5 min 50 s on 2 CPU cores (Intel Xeon, no GPU, idle machine; 8 min 09 s beside a test run) from
a fresh checkout for the README's first command, `pip install` and synthetic corpus generation and
features included (about 16 steps/s idle, 10.8 beside a test run); 9 min 16 s on an AMD EPYC before.
Measured at step 4000 on the synthetic test split: log-mel MSE 0.136, -ELBO -20.67 nats/frame
(a density over continuous normalised features, so it can be negative), KL 2.92 nats/frame; with
pmap as the default wrapper it read 0.137 and -20.80 (the same model, another order of reductions).
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the base config."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # One base PRNG key per run; data order, init and sampling all derive from it.
  # What train.py trains: "vae", "prior" (a latent prior over a trained VAE run) or "adversarial"
  # (adversarial fine-tuning of a trained VAE run's decoder).
  c.kind = "vae"

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "synthetic"  # "synthetic" (generated, no download), "fsdd" or "folder".
  c.data.path = ""  # Audio directory for "fsdd"/"folder"; unused for "synthetic".
  c.data.cache_dir = ""  # Feature/corpus cache; "" means $VAE_JAX_CACHE or ~/.cache/vae-jax.
  c.data.segment_frames = 64  # Training crop length in mel frames (shorter clips are padded and masked).
  c.data.test_fraction = 0.1  # "folder" corpora: share of files hashed into the test split.
  c.data.speaker_level = 1  # "folder" corpora: the speaker is the directory this many levels up (LibriSpeech: 2).
  c.data.num_workers = 0  # Feature-extraction processes; 0 means one per CPU core.
  c.data.prefetch = 4  # Batches prepared ahead of the train step by a background thread.
  c.data.max_memory_mb = 2048  # A split whose float32 features exceed this many MiB streams from disk.
  # Generalisation: "speaker=jackson" leaves one speaker out (train: the other speakers' train-split
  # utterances; test: their test-split ones; the extra "unseen" split: every utterance of jackson);
  # "digit=7" (or any "label=class") likewise.
  c.data.holdout = ""  # Class left out of train and test ("label=class"); "" = the corpus's own split.

  # Augmented copies of the train split's utterances, extracted into the feature cache (whose
  # key covers these fields). Each copy draws its perturbation from a hash of (seed, utterance).
  c.augment = ml_collections.ConfigDict()
  c.augment.copies = 0  # Augmented copies per train utterance, beside the original (0: no augmentation).
  c.augment.seed = 0  # Seed of the per-copy draws, independent of the training seed so runs share a cache.
  c.augment.speed = 0.0  # Speed factor uniform in [1 - speed, 1 + speed] (resampling: pitch and tempo move).
  c.augment.pitch_semitones = 0.0  # Pitch shift uniform in +-this many semitones at constant tempo.
  c.augment.gain_db = 0.0  # Gain uniform in +-this many dB.
  # Spectral colouring (a microphone's or a room's): a random smooth gain curve over frequency.
  c.augment.eq_db = 0.0  # Three cosines up to Nyquist, each uniform in +-eq_db / 3 dB (0: none).
  c.augment.noise_snr_db = 0.0  # White noise at an SNR uniform in [this, 40] dB (0: no noise).

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_speakers = 8  # Synthetic voices, each with its own vocal-tract length and pitch range.
  c.synthetic.utterances_per_speaker = 200  # About 0.4-1.2 s each; about 10% go to the test split.
  c.synthetic.seed = 0  # Generator seed, independent of the training seed so runs share a corpus.

  c.features = ml_collections.ConfigDict()
  c.features.sample_rate = 16000  # Hz; audio at other rates is resampled to it.
  c.features.n_fft = 512  # FFT size in samples.
  c.features.win_length = 512  # Analysis window in samples (<= n_fft).
  c.features.hop_length = 128  # Frame shift in samples (8 ms at 16 kHz).
  c.features.window = "hann"  # Any window name librosa.filters.get_window accepts.
  c.features.n_mels = 64  # Mel bands (Slaney scale and normalisation).
  c.features.fmin = 0.0  # Lowest mel band edge in Hz.
  c.features.fmax = 8000.0  # Highest mel band edge in Hz (<= sample_rate / 2).
  c.features.log_floor = 1e-5  # Features are ln(max(mel amplitude, log_floor)).

  c.model = ml_collections.ConfigDict()
  c.model.name = "conv"  # "conv" (temporal conv VAE) or "mlp" (frame-level MLP VAE).
  c.model.latent_channels = 16  # Latent numbers per latent frame.
  c.model.channels = 128  # Conv width at full time resolution.
  c.model.channel_multipliers = (1, 1)  # Width multiplier after each time downsampling stage.
  c.model.strides = (2, 2)  # Time downsampling per stage; latent rate = frame rate / prod(strides).
  c.model.blocks_per_stage = 1  # Residual blocks at each resolution.
  c.model.kernel_size = 5  # Temporal kernel of every conv (odd).
  c.model.mlp_hidden = (128, 64)  # "mlp" model: encoder hidden sizes; the decoder mirrors them.
  c.model.conv_impl = "auto"  # "lax" (lax.conv), "matmul" (stacked time shifts) or "auto" (per backend).
  c.model.deterministic = False  # True: the encoder outputs z = mean (an autoencoder when beta = 0).
  c.model.dtype = "float32"  # Compute dtype ("float32" or "bfloat16"); parameters stay float32.
  c.model.init_log_scale = 0.0  # Initial per-bin log standard deviation of the Gaussian likelihood.

  c.loss = ml_collections.ConfigDict()
  c.loss.beta = 1.0  # KL weight; 1 gives the ELBO.
  c.loss.kl_warmup_steps = 1000  # Linear ramp of beta from 0 over this many steps (0: no ramp).
  c.loss.free_bits = 0.0  # Nats per latent channel and latent frame below which KL is not penalised.

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-3  # Peak learning rate of AdamW.
  c.optim.warmup_steps = 200  # Linear warm-up steps before the cosine decay.
  c.optim.end_lr_factor = 0.05  # Final learning rate as a fraction of the peak.
  c.optim.weight_decay = 1e-4  # Decoupled weight decay.
  c.optim.b1 = 0.9  # Adam first-moment decay.
  c.optim.b2 = 0.99  # Adam second-moment decay.
  c.optim.grad_clip_norm = 1.0  # Global-norm gradient clipping (0 disables).

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 4000  # Optimiser steps (the learning-rate schedule spans them).
  c.train.max_steps_per_run = 0  # Stop this invocation after so many steps (0: no limit); rerun to resume.
  c.train.batch_size = 16  # Global batch (all devices of all processes).
  c.train.parallel = "shard_map"  # "shard_map" (jit over a 1-D mesh of every device) or "pmap"; same step function.
  c.train.stop_check_every = 10  # Multi-process runs: steps between the processes' agreement on a stop signal.
  c.train.num_devices = 0  # Local devices to use; 0 means all.
  c.train.log_every = 50  # Steps between scalar logs.
  c.train.eval_every = 1000  # Steps between held-out evaluations (and the final step).
  c.train.checkpoint_every = 500  # Steps between checkpoints (and the final step).
  c.train.keep_checkpoints = 2  # Most recent checkpoints kept, besides the best by eval loss.
  c.train.async_checkpoints = True  # Write checkpoints in the background.
  c.train.on_nonfinite = "stop"  # "stop" at a NaN/inf loss or gradient, or "skip" that update.
  c.train.progress_bar = True  # tqdm bar on a terminal; plain log lines otherwise.

  # kind = "prior" (configs/fsdd_prior.py): a causal transformer over a frozen VAE's latent
  # sequences. The data, features and model sections then come from the VAE run; train and
  # optim apply to the prior.
  c.prior = ml_collections.ConfigDict()
  c.prior.vae_workdir = ""  # The trained VAE run whose posterior latents the prior models (never changed).
  c.prior.vae_step = 0  # That run's checkpoint step (0: its latest).
  c.prior.conditions = ()  # Corpus labels to condition on, e.g. ("digit", "speaker"); each optional at sampling.
  c.prior.label_dropout = 0.2  # Chance per label and example that training sees it as unknown (guidance).
  c.prior.width = 128  # Transformer width.
  c.prior.depth = 4  # Transformer blocks.
  c.prior.heads = 4  # Attention heads.
  c.prior.mlp_ratio = 4  # MLP hidden width / transformer width.
  c.prior.num_mixtures = 8  # Gaussian mixture components per latent frame.
  c.prior.dropout = 0.0  # Residual dropout rate in the transformer's blocks (training only).
  c.prior.max_latent_frames = 256  # Longest latent sequence the prior can model (position tables).
  c.prior.guidance = 1.0  # Default classifier-free guidance scale for sampling (0: unconditional).
  c.prior.temperature = 1.0  # Default sampling temperature (scales every mixture component's std).
  c.prior.eval_samples = 4  # Posterior draws per test utterance for the learned prior's eval KL.

  # kind = "adversarial" (configs/fsdd_adversarial.py): a RAVE-style second phase over a trained
  # VAE run, whose parameters are copied at start (that run is never changed). The encoder stays
  # frozen; the decoder and the likelihood scale train against a multi-scale discriminator on
  # normalised log-mel patches, beside the VAE's reconstruction NLL. The model and features
  # sections must equal the VAE run's (import its config); optim applies to the decoder.
  c.adversarial = ml_collections.ConfigDict()
  c.adversarial.vae_workdir = ""  # The trained VAE run to start from (never changed).
  c.adversarial.vae_step = 0  # That run's checkpoint step (0: its latest).
  c.adversarial.loss = "hinge"  # GAN loss: "hinge" or "lsgan" (least squares).
  # With the mean, train/nll is that of the mean's decoding (the ELBO's term uses draws z ~ q(z | x)).
  c.adversarial.decode_mean = False  # Decode the posterior mean (as reconstructions and eval.py do), not a draw.
  c.adversarial.nll_weight = 1.0  # Weight of the reconstruction NLL (nats per mel frame, as train/nll).
  c.adversarial.adv_weight = 1.0  # Weight of the decoder's adversarial loss (mean over scales and patches).
  c.adversarial.feature_matching_weight = 1.0  # Weight of the L1 between discriminator features (real vs decoded).
  c.adversarial.disc_channels = (16, 16, 32)  # Conv widths per scale; each layer after the first halves time and mel.
  c.adversarial.disc_kernel = 3  # 2-D (time x mel bin) kernel size of the discriminator's convs (odd).
  c.adversarial.disc_scales = (1, 2, 4)  # Time pooling of each scale's input (1: every frame); one conv stack each.
  c.adversarial.disc_learning_rate = 1e-4  # Peak learning rate of the discriminator (optim's schedule and betas).

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32  # Utterances per evaluation batch.
  c.eval.length_multiple = 32  # Utterances are padded to a multiple of this (bounds compilations).
  c.eval.max_utterances = 0  # Evaluate on at most this many test utterances during training (0: all).
  c.eval.iwae_samples = 64  # Importance samples for the IWAE bound in eval.py.
  c.eval.griffin_lim_iters = 32  # Griffin-Lim iterations for re-synthesis.
  c.eval.num_audio_examples = 4  # Reconstructions written as audio and images at eval steps.
  c.eval.audio_metrics = True  # STOI/PESQ in eval.py (needs re-synthesis of every test utterance).
  return c


def fsdd_default_path() -> str:
  """$FSDD_DIR, else the FSDD recordings in ../shared beside the repository."""
  here = os.path.dirname(os.path.abspath(__file__))
  return os.environ.get("FSDD_DIR") or os.path.normpath(
      os.path.join(here, "..", "..", "shared", "data", "fsdd", "recordings"))

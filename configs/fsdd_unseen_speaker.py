"""configs/fsdd.py with one speaker left out of training: the unseen-speaker generalisation gap.

  python train.py --config=configs/fsdd_unseen_speaker.py   # workdir runs/fsdd_unseen_speaker
  python eval.py --workdir=runs/fsdd_unseen_speaker --generalisation
  python train.py --config=configs/fsdd_unseen_speaker.py --config.data.holdout=speaker=theo \
      --config.augment.copies=2 --config.augment.speed=0.1   # another speaker, speed perturbation

Train: the train-split utterances (index 5-49) of the other five speakers; test: their
test-split utterances (index 0-4); unseen: all 500 utterances of the held-out speaker.
Runtime: 7-10 min on 2 CPU cores (Intel Xeon, no GPU, machine shared) for 8000 steps, and
4 min for eval.py --generalisation (750 utterances re-synthesised twice: model and oracle).
Measured at step 8000 (log-mel MSE in-split -> unseen, gap; STOI and PESQ the same way):
  jackson: 0.173 -> 0.358 (+0.185), STOI 0.925 -> 0.828, PESQ 3.34 -> 2.32
  theo:    0.167 -> 0.335 (+0.168), STOI 0.919 -> 0.840, PESQ 3.30 -> 2.18
With 2 speed-perturbed copies per train utterance (augment.copies=2, augment.speed=0.1):
  jackson: 0.172 -> 0.333 (+0.161), theo: 0.166 -> 0.292 (+0.125): the gap shrinks by 13% and
  25%, in-split MSE is unchanged. Adding pitch shifts (augment.pitch_semitones=2.0):
  jackson: 0.166 -> 0.268 (+0.102), theo: 0.169 -> 0.270 (+0.100): 45% and 40% smaller.
george (a third fold): 0.179 -> 0.550 (+0.371); with speed and pitch 0.174 -> 0.407 (+0.233).
Three copies with pitch shifts of +-3 semitones (augment.copies=3, augment.pitch_semitones=3.0):
  jackson: 0.175 -> 0.291 (+0.115), no better than two copies at +-2.
lucas: +0.129 -> +0.078 with speed and pitch; nicolas: +0.171 -> +0.117; yweweler: +0.100 -> +0.044.
Six folds: +0.187 -> +0.112 on average (-40%; halving needs +0.094). Four copies (jackson +0.111)
and gain +-6 dB with noise at 10-40 dB SNR on top (george +0.239) do not narrow it further.
Speed and pitch alone do not halve the gap; configs/fsdd_unseen_speaker_augmented.py (pitch
+-4 semitones, spectral colouring, three copies, 14000 steps) does: +0.081 on average.
An unseen word instead (--config.data.holdout=digit=7): 0.177 -> 0.204 (+0.028), STOI 0.913 ->
0.917, PESQ 3.20 -> 2.88 (6 min 53 s to train, 2 min 44 s to evaluate).
The Griffin-Lim oracle scores the held-out speakers as the others (STOI 0.986-0.990), so the
gap is the model's, not the mel inverter's.
"""

from configs import fsdd


def get_config():
  c = fsdd.get_config()
  c.data.holdout = "speaker=jackson"
  return c

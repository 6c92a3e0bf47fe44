"""KD-rewinding on ImageNet ResNet-50 (Ma et al. 2021, `ImageNet/kd_ticket.py`; docs/methods.md §1).

Command (TPU pod; see README "Running on a TPU pod"):
  python -m kdt.main --config configs/imagenet_resnet50_kd_rewind.py \
      --workdir gs://BUCKET/kdt/imagenet_rn50_kd_rewind --config.data.tfds_dir=/path/to/tfds

Protocol: dense ResNet-50 (the teacher): 90 epochs, SGD momentum 0.9, lr 0.4 with 5 epochs of
linear warm-up, x0.1 at epochs 30, 60 and 80, weight decay 1e-4, RandomResizedCrop(224, scale
(0.1, 1), ratio (0.8, 1.25)) + flip. One-shot global magnitude pruning of all conv weights to the
sparsities 36, 59.04, 73.79, 83.22, 89.26 % (densities 0.8^(2k)). Re-training rewinds to epoch 6
and runs epochs 6 -> 90 with `rewind` (CE) and `kd_rewind` (KD, T = 4, alpha = 0.9, per-sample
'batchmean' KL, until the KD cut-off at epoch 60 — the released `--eskd 60` — then plain CE).
Batch 1024 (open_lth / `baseline.py`); the KD-ticket `lottery_ticket.py` and `kd_ticket.py` use
batch 512 with the lr left at 0.4 — an inconsistency in the released code (docs/methods.md §1.6).
Hardware: a TPU v3-32 / v4-32 slice; 11 runs x ~7 h.
Expected: dense 76.1 % top-1; Stabilizing reports that rewinding to epoch 6 keeps dense accuracy
at 20 % of the weights (R5), and the KD-ticket paper claims KD-rewinding is best of all (no
per-sparsity numbers found, docs/methods.md §1.8).
"""

from kdt import config_lib

IMAGENET_TRAIN, BATCH = 1_281_167, 1024


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "resnet50"
  config.model.init_scheme = "kd_ticket"  # the KD-ticket code's conv / BN / head init
  config.data.name = "imagenet2012"
  steps = lambda epochs: config_lib.epochs_to_steps(epochs, IMAGENET_TRAIN, BATCH)  # noqa: E731
  config.train.batch_size = BATCH
  config.train.num_steps = steps(90)
  config.train.eval_batch_size = 1024
  config.train.eval_every_steps = steps(5)
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.optimizer.learning_rate = 0.4
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.warmup_steps = steps(5)
  config.schedule.milestones = (steps(30), steps(60), steps(80))
  config.loss.kd_temperature = 4.0
  config.loss.kd_alpha = 0.9
  config.loss.kd_reduction = "batchmean"
  config.loss.kd_stop_step = steps(60)
  config.imp.recipes = ("rewind", "kd_rewind")
  config.imp.pruning_schedule = "oneshot"
  config.imp.num_rounds = 5
  config.imp.densities = (0.64, 0.4096, 0.262144, 0.16777216, 0.1073741824)
  config.imp.selector = "conv"
  config.imp.rewind_step = steps(6)
  return config

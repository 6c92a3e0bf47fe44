"""Quickstart for ToST's sparse re-training tweaks: LTH vs LTH + tweaks on digits, offline.

Command:
  python -m kdt.main --config configs/quickstart_tost.py --workdir /tmp/kdt_quickstart_tost

What it does: the IMP of configs/quickstart.py (LeNet-300-100 on scikit-learn's 8x8 digits,
300 steps, 8 rounds of 20 % global magnitude pruning, output layer dense), re-training each
round's subnetwork twice on the *same* mask: `lth` (theta_0, ReLU, plain CE) and `tost` (the
`lth` mask and theta_0 re-trained with ToST's tweaks, kdt.tickets.tweaks): swish in place of
ReLU, label smoothing 0.1 with alpha/(C-1) off target, and GradInit layer-wise re-scaling of the
masked network (100 iterations here instead of ToST's 390, to stay quick). LeNet has no residual
blocks, so there are no ghost skips: configs/cifar*_tost.py have them. Writes results.json/.csv
and plots/accuracy_vs_weights.png (tost vs lth by weights remaining).

Hardware: any CPU (about 2 minutes on 2 cores). Expected: both within about a point of the dense
~0.97-0.98 down to ~17 % of the weights. Digits is tiny and both recipes are near its ceiling, so
single-seed differences are noise: compare several seeds (--config.seeds.init=1 ...) with
`python -m kdt.tickets.compare`.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "lenet_300_100"
  config.data.name = "digits"
  config.train.batch_size = 64
  config.train.num_steps = 300            # ~13 epochs of the 1,437 training digits
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 100
  config.train.checkpoint_every_steps = 150
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = (200,)
  config.imp.recipes = ("lth",)
  config.imp.num_rounds = 10
  config.imp.pruning_rate = 0.35
  config.imp.selector = "conv_dense_no_head"
  config_lib.tost_preset(config, ghost_skips=False)   # adds the `tost` recipe
  config.tost.gradinit_iters = 100
  return config

"""Quickstart for dynamic sparse training: RigL and SET vs IMP at the same densities, on digits.

Command:
  python -m kdt.main --config configs/quickstart_dst.py --workdir /tmp/kdt_quickstart_dst

What it does: the IMP of configs/quickstart.py (LeNet-300-100 on scikit-learn's 8x8 digits, 300
steps, 20 % global magnitude pruning per round, output layer dense) with the `lth` and `rewind`
recipes in workdir/imp, then trains sparse networks from scratch at the same 6 densities
(80 % ... 26 %) with the same steps, schedule, data order and theta_0: `rigl` (drop 30 % of each
layer's active weights by magnitude, cosine-decayed, grow by dense-gradient magnitude at 0, every
25 steps until step 225), `set` (the same with random growth) and `static` (the initial ERK
random mask, never updated). Writes results.json/.csv and plots/accuracy_vs_weights.png with
all of them against weights remaining.

Hardware: any CPU (about 2 minutes on 2 cores). Expected: every method within a point or two of
the dense ~0.97-0.98; on this tiny task the differences between methods are of the order of the
seed-to-seed spread, so compare several seeds (--config.seeds.init=1 --config.seeds.prune=1 ...)
with `python -m kdt.tickets.compare`.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("dst")
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
  config.imp.recipes = ("lth", "rewind")
  config.imp.num_rounds = 6
  config.imp.pruning_rate = 0.35
  config.imp.selector = "conv_dense_no_head"
  config.imp.rewind_step = 20
  config.dst.methods = ("rigl", "set", "static")
  config.dst.update_every = 50            # Delta T (RigL: 100 of ~97k steps; scaled to 300)
  config.dst.update_end_step = 225        # 75 % of the run, as RigL's CIFAR setting
  config.dst.drop_fraction = 0.3
  config.dst.drop_schedule = "cosine"
  config.dst.allocation = "erk"
  return config

"""Quickstart for dynamic sparse training: RigL and SET vs IMP at the same densities, on digits.

Command:
  python -m kdt.main --config configs/quickstart_dst.py --workdir /tmp/kdt_quickstart_dst

What it does: the IMP of configs/quickstart.py (LeNet-300-100 on scikit-learn's 8x8 digits, 300
steps, output layer dense), here 6 rounds of 35 % global magnitude pruning, with the `lth` and
`rewind` recipes in workdir/imp; then sparse networks trained from scratch at the same 6
densities (65 % ... 7.5 %) with the same steps, schedule, data order and theta_0, from a random
mask with ERK per-layer densities: `rigl` (every 50 steps until step 225, drop 30 % of each
layer's active weights by magnitude, cosine-decayed, and grow as many by dense-gradient
magnitude, new weights at 0), `set` (the same with random growth) and `static` (the initial
mask, never updated). Writes results.json/.csv and plots/accuracy_vs_weights.png with all of
them against weights remaining.

Hardware: any CPU (about 2-3 minutes on 2 cores). Expected (5 seeds, seeds.* = 0..4, mean over
seeds): dense 98.1 %; down to 27 % of the weights every method is within 0.4 points of `lth`
(~98 %); at 18 / 12 / 7.5 %: `lth` 98.1 / 97.7 / 97.5, `rigl` 97.2 / 97.1 / 96.8, `set` 97.0 /
96.3 / 95.9, `static` 97.5 / 96.1 / 96.2 (spread over seeds 0.3-1.2 points): RigL trails IMP by
0.7-0.8 points at the same step budget and beats SET and the static mask at 12 and 7.5 %. One
seed's difference is noise: run several (--config.seeds.init=1 --config.seeds.prune=1 ...) and
compare them with `python -m kdt.compare --workdirs ... --out DIR --baseline lth`.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("dst")
  config_lib.digits_quickstart(config)   # LeNet-300-100 on digits, 300 steps of 64
  config.optimizer.learning_rate = 0.05
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

"""Quickstart: lottery tickets on scikit-learn's bundled digits, offline, in under a minute.

Command:
  python -m kdt.main --config configs/quickstart.py --workdir /tmp/kdt_quickstart

What it does: trains LeNet-300-100 densely on the 1,437 training digits (8x8), then runs 8 rounds
of iterative magnitude pruning (20 % of the remaining weights per round, global, output layer
kept dense as in open_lth's LeNet), re-training each round's subnetwork four ways: `lth` (reset to
theta_0), `rewind` (reset to step 20), `kd` (theta_0 + distillation from the dense model) and
`random_reinit` (the lth mask with a fresh random init). Writes results.json/.csv and
plots/accuracy_vs_weights.png, plots/layer_density.png.

Hardware: any CPU (about 15-30 s on 2 cores). Expected: dense test accuracy ~0.98 on the 360 held-out
digits; the tickets stay within about a point of it down to ~17 % of the weights.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config_lib.digits_quickstart(config)   # LeNet-300-100 on digits, 300 steps of 64
  config.optimizer.learning_rate = 0.05
  config.imp.recipes = ("lth", "rewind", "kd", "random_reinit")
  config.imp.num_rounds = 8
  config.imp.pruning_rate = 0.2
  config.imp.selector = "conv_dense_no_head"
  config.imp.rewind_step = 20
  config.loss.kd_temperature = 4.0
  config.loss.kd_alpha = 0.9
  return config

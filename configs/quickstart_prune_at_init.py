"""Quickstart, pruning at initialisation: SNIP, GraSP, SynFlow and random masks against IMP's.

Command:
  python -m kdt.main --config configs/quickstart_prune_at_init.py --workdir /tmp/kdt_pai

What it does: trains LeNet-300-100 densely on scikit-learn's bundled digits (offline), then runs
IMP (6 rounds, 50 % of the remaining weights per round, global magnitude, output layer dense as in
open_lth's LeNet; recipe `lth`) and, at the same six densities (50 % ... 1.6 %), takes one-shot
masks of theta_0 with SNIP, GraSP, SynFlow and random scores (global allocation; SNIP/GraSP on one
training batch of 64, SynFlow data-free with 100 iterations). Every mask is re-trained the same way
(`lth`: theta_0, the full 300-step schedule), so the masks are the only difference. Writes
results.json/.csv and plots/accuracy_vs_weights.png (one line per mask source).

Hardware: 2-core x86 CPU; see the README for the measured wall time. Expected (the literature:
Frankle et al. 2021, "Pruning neural networks at initialization: why are we missing the mark?"):
near-dense accuracy for every mask down to ~12 %, and IMP ahead of the masks found at
initialisation at the lowest densities. The numbers of one run are in the README.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("prune_at_init")
  config_lib.digits_quickstart(config)   # LeNet-300-100 on digits, 300 steps of 64
  config.optimizer.learning_rate = 0.05
  config.imp.recipes = ("lth",)
  config.imp.num_rounds = 6
  config.imp.pruning_rate = 0.5
  config.imp.selector = "conv_dense_no_head"
  config.imp.score_batches = 1
  config.prune_at_init.scores = ("snip", "grasp", "synflow", "random")
  config.prune_at_init.allocation = "global"
  config.prune_at_init.recipe = "lth"
  return config

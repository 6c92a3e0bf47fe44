"""Quickstart for Liu et al.'s weight-correlation study: a learning-rate sweep on digits, offline.

Command:
  python -m kdt.main --config configs/quickstart_correlation.py \
      --workdir /tmp/kdt_quickstart_correlation

What it does: for each learning rate in (0.003, 0.01, 0.03, 0.1, 0.2) (SGD, momentum 0.9, 300
steps of 64 on the 1,437 training digits, x0.1 at step 200) it trains LeNet-300-100 from the same
theta_0, runs 4 rounds of IMP (20 % per round, global magnitude, output layer dense) with the
`lth` ticket (reset to theta_0) and the `random_reinit` control, and measures the theta_0 <->
trained correlation (Pearson of |w|, overlap of the top-20 % |w| sets) of the dense network and of
the final ticket over its surviving weights, the ticket-minus-reinit accuracy gap, and how much
the ticket's mask overlaps the magnitude mask of theta_0 itself. Writes results.json/.csv,
correlation_summary.json, plots/correlation.png and plots/mask_overlap.png.

Hardware: any CPU (about 2.5 minutes on 2 cores). Liu et al. (docs/methods.md §5) predict the
correlation, the mask's overlap with theta_0's magnitudes and the ticket's edge over random
re-initialisation to shrink as the learning rate grows.

Expected (measured on 2 CPU cores): the Pearson correlation of |theta_0| and |theta_T| falls from
~0.99 (lr 0.003) to ~0.45 (lr 0.2), the top-20 % overlap from ~0.95 to ~0.46 (chance 0.2), and the
Jaccard of the ticket's mask with theta_0's own magnitude mask from ~0.93 to ~0.63 (random: ~0.3).
The ticket's edge over random re-init is largest at the smallest lr (~+2.8 points) and ~+0.6-1.1
points (2-4 of 360 test digits, i.e. noise) from lr 0.01 on.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("correlation")
  config_lib.digits_quickstart(config)   # LeNet-300-100 on digits, 300 steps of 64
  config.train.eval_every_steps = 0
  config.imp.num_rounds = 4
  config.imp.pruning_rate = 0.2
  config.imp.selector = "conv_dense_no_head"
  config.correlation.learning_rates = (0.003, 0.01, 0.03, 0.1, 0.2)
  config.correlation.top_p = 0.2
  return config

"""Lottery tickets in LeNet-300-100 on MNIST (Frankle & Carbin 2019; docs/methods.md §3.4).

Command:
  python -m kdt.main --config configs/mnist_lenet_300_100_lth.py \
      --workdir /tmp/kdt_mnist_lenet_lth [--config.data.dir=/path/with/mnist_idx_gz]

Recipe (Frankle & Carbin / Stabilizing the LTH, Fig. 2): batch 60, Adam lr 1.2e-3, constant LR,
50,000 iterations. IMP: 20 % of the remaining weights per round, global magnitude over the
hidden layers' weights (output layer kept dense, as open_lth's LeNet), 15 rounds down to 3.5 %
of the weights (the LMC paper's IMP density for LeNet). Recipes: `lth` (reset to theta_0, the
winning ticket), `random_reinit` (same mask, new init) and `random_prune` (random mask with the
ticket's per-layer counts, theta_0), the two controls of the paper.
Hardware: one CPU core is enough (~16 runs x ~5 min on 2 cores).
Expected: dense 98.0 +- 0.2 %; winning tickets stay at or above dense accuracy down to a few
percent of the weights, while both random controls lose accuracy steadily below ~20 %.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "lenet_300_100"
  config.data.name = "mnist"
  config.train.batch_size = 60
  config.train.num_steps = 50_000
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = 5_000
  config.train.checkpoint_every_steps = 5_000
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1.2e-3
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.schedule.name = "constant"
  config.imp.recipes = ("lth", "random_reinit", "random_prune")
  config.imp.num_rounds = 15
  config.imp.pruning_rate = 0.2
  config.imp.count_convention = "open_lth"  # open_lth sparse_global: counts + 1, head counted
  config.imp.selector = "conv_dense_no_head"
  config.imp.control_recipe = "lth"
  return config

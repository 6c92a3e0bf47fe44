"""Quickstart: dense LeNet-300-100 on scikit-learn's bundled digits (offline, ~20 s on 2 CPU cores).

Command:
  python -m kdt.main --config configs/quickstart.py --workdir /tmp/kdt_quickstart

Hardware: any CPU. Expected: test accuracy >= 0.95 on the 360 held-out digits.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("train")
  config.model.name = "lenet_300_100"
  config.data.name = "digits"
  config.train.batch_size = 64
  config.train.num_steps = 600            # ~29 epochs of the 1,437 training digits
  config.train.eval_batch_size = 120
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = (400,)
  return config

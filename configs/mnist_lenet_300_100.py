"""LeNet-300-100 on MNIST, open_lth `mnist_lenet_300_100` defaults (docs/methods.md §3.4a).

Command:
  python -m kdt.main --config configs/mnist_lenet_300_100.py --workdir /tmp/kdt_mnist_lenet \
      [--config.data.dir=/path/to/mnist_idx_gz]

Recipe: batch 128, plain SGD lr 0.1 (no momentum, no weight decay), constant LR, 40 epochs
(= 18,760 steps of 469: open_lth keeps the last partial batch, `data.last_batch="keep"`). Hardware: one CPU core is enough (~5 min on 2 cores).
Expected: ~98.3 % test accuracy (open_lth / LMC Table 1 report 98.3 % for the dense net).
"""

from kdt import config_lib

MNIST_TRAIN = 60_000


def get_config():
  config = config_lib.base_config("train")
  config.model.name = "lenet_300_100"
  config.model.init_scheme = "open_lth"  # kaiming_normal fan-in, PyTorch biases, BN gamma ~ U(0, 1)
  config.data.name = "mnist"
  config.data.last_batch = "keep"  # PyTorch's drop_last=False, as open_lth: 469 steps per epoch
  config.train.batch_size = 128
  config.train.num_steps = config_lib.epochs_to_steps(40, MNIST_TRAIN, 128, "keep")
  config.train.eval_batch_size = 1024
  config.train.eval_every_steps = config_lib.epochs_to_steps(5, MNIST_TRAIN, 128, "keep")
  config.train.checkpoint_every_steps = 2000
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.schedule.name = "constant"
  return config

"""Lottery tickets in LeNet-300-100 on Fashion-MNIST with open_lth's `mnist_lenet_300_100` protocol.

Command:
  python -m kdt.main --config configs/fashion_mnist_lenet_300_100_open_lth.py \
      --workdir /tmp/kdt_fmnist_open_lth --config.data.dir=../shared/data/fashion-mnist

open_lth defaults (``models/mnist_lenet.py`` ``default_hparams``, docs/methods.md §3.4a): LeNet-300-100,
plain SGD lr 0.1 (no momentum, no weight decay), constant LR, batch 128, 40 epochs per level; IMP
with ``sparse_global`` pruning 20 % per level, ``fc.weight`` (kdt's ``head``) ignored, open_lth's
count arithmetic (``imp.count_convention="open_lth"``: level 1 keeps 211,959 of the 265,200 hidden
weights, level 8 keeps 43,655); open_lth's initialisation (``kaiming_normal`` fan-in, PyTorch's
default biases); MNIST's normalisation 0.1307 / 0.3081, which open_lth applies to this dataset as
well; open_lth's epoch of 469 steps (PyTorch keeps the last partial batch of 96 images,
``data.last_batch="keep"``), so 40 epochs are 18,760 steps; evaluation every epoch and at epoch 0.
Recipes: ``lth`` (reset to theta_0) and its control ``random_reinit``; 8 levels.

Hardware: CPU. Measured 2026-12-02 on 2 shared cores (AMD EPYC, load 5-10): one replicate (17 runs
of 18,760 steps) took 50 min with two replicates running side by side, 21.5 min alone.
Expected (3 replicates, mean of the last 5 per-epoch test accuracies, docs/
fashion_mnist_open_lth_3_replicates.json and .png): dense 88.88 +- 0.06 %; lth 88.95 (level 1,
79.9 %) ... 89.03 +- 0.23 % (level 8, 16.5 %); random_reinit 88.92 ... 88.74 +- 0.22 %; the
ticket-reinit gap is 0.03-0.47 points, its 95 % interval excludes 0 only at level 5.
"""

from kdt import config_lib

FASHION_MNIST_TRAIN = 60_000


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "lenet_300_100"
  config.model.init_scheme = "open_lth"
  config.data.name = "fashion_mnist"
  config.data.mean = (0.1307,)       # open_lth datasets/mnist.py Normalize, used for this data too
  config.data.std = (0.3081,)
  config.data.last_batch = "keep"  # PyTorch's drop_last=False, as open_lth: 469 steps per epoch
  config.train.batch_size = 128
  config.train.num_steps = config_lib.epochs_to_steps(40, FASHION_MNIST_TRAIN, 128, "keep")
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = 0
  config.train.eval_every_epochs = 1.0
  config.train.eval_at_start = True
  config.train.report_metric = "last_mean"  # open_lth-style: mean test accuracy of the last 5 epochs
  config.train.report_last_evals = 5
  config.train.checkpoint_every_steps = 2000
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.0
  config.schedule.name = "constant"
  config.imp.recipes = ("lth", "random_reinit")
  config.imp.control_recipe = "lth"
  config.imp.num_rounds = 8
  config.imp.pruning_rate = 0.2
  config.imp.count_convention = "open_lth"
  config.imp.allocation = "global"
  config.imp.selector = "conv_dense_no_head"
  return config

"""Rewinding vs fine-tuning (Renda, Frankle & Carbin 2020): ResNet-56 on CIFAR-10.

Command:
  python -m kdt.main --config configs/cifar10_resnet56_lr_rewind.py \
      --workdir /tmp/kdt_cifar10_resnet56_lrr [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Recipe (the reproduction's `resnet-56-iterative.yaml`, docs/methods.md §4.2): standard basic-block
ResNet-56, batch 128, SGD momentum 0.9, 72,000 iterations, lr 0.1 -> 0.01 at 36K -> 0.001 at 54K,
L2 1e-4. IMP: 20 % of the remaining weights per round, global magnitude, 10 rounds (to 10.7 %).
Every recipe re-trains for the same budget t = T - 8K = 64K iterations:
`rewind` (weights rewound to iteration 8K, schedule from 8K), `lr_rewind` (final weights, the
schedule replayed from 8K — Renda et al.'s proposal) and `finetune` (final weights, constant
lr 0.001).
Hardware: one GPU (~31 runs x 40 min).
Expected (Renda et al., docs/methods.md §4.3/§7 R10): both rewinding recipes beat fine-tuning at every
sparsity, and LR rewinding matches or beats weight rewinding; dense ~93-94 %.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "resnet56"
  config.data.name = "cifar10"
  config.train.batch_size = 128
  config.train.num_steps = 72_000
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = 4_000
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 2_000
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = (36_000, 54_000)
  config.imp.recipes = ("lr_rewind", "rewind", "finetune")
  config.imp.num_rounds = 10
  config.imp.pruning_rate = 0.2
  config.imp.selector = "conv_dense"
  config.imp.rewind_step = 8_000
  config.imp.finetune_steps = 64_000
  config.imp.finetune_learning_rate = 0.001
  return config

"""Dense teacher of the KD ticket: KD-ticket "ResNet-110" (`oresnet110`) on CIFAR-10 (METHODS.md §1).

Command:
  python -m kdt.main --config configs/cifar10_resnet110_kd_ticket.py \
      --workdir /tmp/kdt_cifar10_resnet110_kd [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Recipe (VITA-Group/KD-ticket `cifar_baseline.py`): the first 5,000 training images are the
validation set, 45,000 train; batch 128, SGD momentum 0.9, lr 0.1, x0.1 at epochs 90 and 135,
weight decay 2e-4, 182 epochs (63,882 steps of 351); crop (pad 4) + flip, normalisation
(0.4914, 0.4822, 0.4465)/(0.2023, 0.1994, 0.2010). The model is the code's depth-quirk network:
18 bottleneck blocks per stage, 164 layers (not the basic-block ResNet-110).
KD settings used when this run is the teacher: T = 5, alpha = 0.9, KL reduction 'mean' over
batch x classes (PyTorch default `nn.KLDivLoss()`), as in `cifar_lt_kd.py`.
Hardware: one accelerator (~3 h on a V100-class GPU).
Expected: ~94 % test accuracy for the dense bottleneck ResNet-164 (He et al. 2016 report a 5.93 %
error for it); the KD-ticket paper's own per-sparsity numbers were not found (METHODS.md §1.8).
"""

from kdt import config_lib

CIFAR_TRAIN, VAL = 50_000, 5_000


def get_config():
  config = config_lib.base_config("train")
  config.model.name = "oresnet110"
  config.data.name = "cifar10"
  config.data.val_size = VAL
  steps = lambda epochs: config_lib.epochs_to_steps(epochs, CIFAR_TRAIN - VAL, 128)  # noqa: E731
  config.train.batch_size = 128
  config.train.num_steps = steps(182)
  config.train.eval_batch_size = 1024
  config.train.eval_every_steps = steps(1)
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = steps(1)
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 2e-4
  config.schedule.name = "step"
  config.schedule.milestones = (steps(90), steps(135))
  config.loss.kd_temperature = 5.0
  config.loss.kd_alpha = 0.9
  config.loss.kd_reduction = "mean"
  return config

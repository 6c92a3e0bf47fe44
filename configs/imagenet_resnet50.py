"""ResNet-50 on ImageNet, open_lth `imagenet_resnet_50` defaults (docs/methods.md §3.4a).

Command (TPU pod; see README "Running on a TPU pod"):
  python -m kdt.main --config configs/imagenet_resnet50.py --workdir gs://BUCKET/kdt/imagenet_rn50 \
      --config.data.tfds_dir=gs://BUCKET/tensorflow_datasets

Recipe: batch 1024, SGD momentum 0.9, lr 0.4 with 5 epochs of linear warm-up, x0.1 at epochs 30,
60 and 80, weight decay 1e-4, 90 epochs (112,680 steps of 1,252: open_lth keeps the last partial batch); RandomResizedCrop(224, scale
(0.1, 1), ratio (0.8, 1.25)) + flip; eval resize 256, centre crop 224.
Hardware: a TPU v3-32 / v4-32 slice (~6-8 h).
Expected: 76.1 % top-1 (open_lth docstring; Stabilizing the LTH: 76.1 +- 0.1 %).
"""

from kdt import config_lib

IMAGENET_TRAIN = 1_281_167


def get_config():
  config = config_lib.base_config("train")
  config.model.name = "resnet50"
  config.model.init_scheme = "open_lth"  # kaiming_normal fan-in, PyTorch biases, BN gamma ~ U(0, 1)
  config.data.name = "imagenet2012"
  config.data.last_batch = "keep"  # open_lth datasets/base.py: iterations_per_epoch = ceil(n / batch)
  steps = lambda epochs: config_lib.epochs_to_steps(epochs, IMAGENET_TRAIN, 1024, "keep")  # noqa: E731
  config.train.batch_size = 1024
  config.train.num_steps = steps(90)
  config.train.eval_batch_size = 1024
  config.train.eval_every_steps = steps(5)
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.optimizer.learning_rate = 0.4
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.warmup_steps = steps(5)
  config.schedule.milestones = (steps(30), steps(60), steps(80))
  return config

"""VGG-16 (BN) on CIFAR-10, open_lth `cifar_vgg_16` defaults (docs/methods.md §3.4a).

Command:
  python -m kdt.main --config configs/cifar10_vgg16.py --workdir /tmp/kdt_cifar10_vgg16 \
      [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Recipe: batch 128, SGD momentum 0.9, lr 0.1, x0.1 at epochs 80 and 120, weight decay 1e-4,
160 epochs (62,560 steps of 391, the last partial batch kept); random crop (pad 4) + flip.
Hardware: one accelerator (~1 h on a V100-class GPU; many hours on a 2-core CPU).
Expected: ~93.7 % test accuracy (LMC Table 1, VGG-16 standard).
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("train")
  config.model.name = "vgg16"
  config.model.init_scheme = "open_lth"  # kaiming_normal fan-in, PyTorch biases, BN gamma ~ U(0, 1)
  config.data.name = "cifar10"
  config_lib.open_lth_cifar_recipe(config)
  return config

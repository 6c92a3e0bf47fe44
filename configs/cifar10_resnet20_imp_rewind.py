"""IMP with weight rewinding, ResNet-20 on CIFAR-10 (open_lth defaults; Stabilizing the LTH).

Command:
  python -m kdt.main --config configs/cifar10_resnet20_imp_rewind.py \
      --workdir /tmp/kdt_cifar10_resnet20_rewind [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Recipe (open_lth `cifar_resnet_20`, docs/methods.md §3.4a): batch 128, SGD momentum 0.9, lr 0.1, x0.1 at
epochs 80 and 120, weight decay 1e-4, 160 epochs (62,560 steps of 391); crop + flip; IMP removes 20 % of
the remaining weights per round, globally over all conv and dense kernels (1x1 shortcuts and the
head included). Rewind to iteration 500 (Stabilizing the LTH: ResNet-20-style net on CIFAR-10).
Recipes: `rewind`, `lth` (k = 0) and the `random_reinit` control of the rewound ticket.
Hardware: one GPU (~11 runs x 30 min).
Expected (Stabilizing / LMC, docs/methods.md §3.5): with k = 500 the subnetworks stay matching (within
0.2 % of the dense ~91.7 %) down to ~13.4 % of the weights remaining; `lth` (k = 0) and random
re-init do not; random subnetworks are matching only above ~80 %.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "resnet20"
  config.model.init_scheme = "open_lth"  # kaiming_normal fan-in, PyTorch biases, BN gamma ~ U(0, 1)
  config.data.name = "cifar10"
  config_lib.open_lth_cifar_recipe(config)
  config.imp.recipes = ("rewind", "lth", "random_reinit")
  config.imp.control_recipe = "rewind"
  config.imp.num_rounds = 10
  config.imp.pruning_rate = 0.2
  config.imp.count_convention = "open_lth"  # open_lth sparse_global: counts + 1, head counted
  config.imp.selector = "conv_dense"
  config.imp.rewind_step = 500
  return config

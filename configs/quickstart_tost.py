"""Quickstart for ToST's sparse re-training tweaks: LTH vs LTH + tweaks on digits, offline.

Command:
  python -m kdt.main --config configs/quickstart_tost.py --workdir /tmp/kdt_quickstart_tost

What it does: the IMP of configs/quickstart.py (LeNet-300-100 on scikit-learn's 8x8 digits,
300 steps, output layer dense), here with 10 rounds of 35 % global magnitude pruning (65 % ...
1.3 % of the weights), re-training each round's subnetwork twice on the *same* mask: `lth`
(theta_0, ReLU, plain CE) and `tost` (the `lth` mask and theta_0 re-trained with ToST's tweaks,
kdt.tickets.tweaks): swish in place of ReLU, label smoothing 0.1 with alpha/(C-1) off target,
and GradInit layer-wise re-scaling of the masked network (100 iterations instead of ToST's 390,
to stay quick). LeNet has no residual blocks, so there are no ghost skips (the ResNet-18 configs
configs/cifar*_resnet18_tost.py have them). Writes results.json/.csv and
plots/accuracy_vs_weights.png.

Hardware: any CPU (about 1 minute on 2 cores). Expected (5 seeds, seeds.* = 0..4, mean over
seeds): dense 98.1 %; `lth` 98.1 % at 65 % of the weights down to 96.2 % at 1.3 %; `tost` above
`lth` by +0.7, +0.7, +0.7, +0.2, +0.4, +0.2, +0.7, +0.4, +0.4 and -0.1 points from 65 % to 1.3 %
(per-seed spread 0.3-1.2 points; label smoothing alone gives most of the gain, swish alone
none). One seed's difference is noise: run several (--config.seeds.init=1 ...) and compare
them with `python -m kdt.compare --workdirs ... --out DIR --baseline lth`.
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("imp")
  config_lib.digits_quickstart(config)   # LeNet-300-100 on digits, 300 steps of 64
  config.optimizer.learning_rate = 0.05
  config.imp.recipes = ("lth",)
  config.imp.num_rounds = 10
  config.imp.pruning_rate = 0.35
  config.imp.selector = "conv_dense_no_head"
  config_lib.tost_preset(config, ghost_skips=False)   # adds the `tost` recipe
  config.tost.gradinit_iters = 100
  return config

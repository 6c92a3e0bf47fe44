"""Instability analysis of VGG-16 on CIFAR-10 (Frankle et al., "Linear Mode Connectivity and the
Lottery Ticket Hypothesis", ICML 2020; docs/methods.md §3.3-3.5).

Command:
  python -m kdt.main --config configs/cifar10_vgg16_lmc.py --workdir /tmp/kdt_vgg16_lmc \
      [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Recipe: the open_lth `cifar_vgg_16` run (docs/methods.md §3.4a): batch 128, SGD momentum 0.9, lr 0.1,
x0.1 at epochs 80 and 120, weight decay 1e-4, 160 epochs = 62,560 steps of 391 (the last partial batch kept, as open_lth); crop + flip.
Subnetworks: IMP with rewinding to each k (LMC Algorithm 2), global magnitude over the conv
kernels (output layer dense, as open_lth), 20 % per round for 19 rounds = 1.44 % of the weights
(LMC Table 1: 1.5 %). For every k in (0, 100, 250, 500, 1000, 2000, 5000) two copies each of the
dense network, the IMP subnetwork and a random mask with its per-layer counts train from theta_k
with data orders 0 and 1; error along the linear path at 30 points on train and test data, BatchNorm
statistics re-estimated at every point on 40 training batches.

Variants (LMC Table 1): "low" --config.optimizer.learning_rate=0.01 (IMP density 5.5 %:
--config.imp.num_rounds=13 --config.lmc.rounds="(13,)"); "warm-up"
--config.schedule.warmup_steps=30000.

Hardware and cost: one accelerator. One 160-epoch VGG-16 run is ~1 h on a V100-class GPU; with
masks by IMP rewound to each k the sweep is ~7 x (19 + 5) runs (~170 GPU-hours).
--config.lmc.mask_rewind_step=1000 finds the masks once (~19 h) and then trains 5 copies per k
(~35 h more); this deviates from Algorithm 2 for k != 1000.

Expected (docs/methods.md §3.5; LMC [2nd-hand]): dense accuracy ~93.7 %; the dense network becomes
stable (test instability < 2 %) at k = 1000 (1.5 % of training); the IMP subnetwork is not
matching at k = 0 and becomes stable and matching at k = 1000; random pruning is neither stable
nor matching. The L2 distance between stable copies stays ~45 % of the distance travelled.
"""

from kdt import config_lib

CIFAR_TRAIN = 50_000


def get_config():
  config = config_lib.base_config("lmc")
  config.model.name = "vgg16"
  config.model.init_scheme = "open_lth"  # kaiming_normal fan-in, PyTorch biases, BN gamma ~ U(0, 1)
  config.data.name = "cifar10"
  config.data.last_batch = "keep"  # open_lth datasets/base.py: iterations_per_epoch = ceil(n / batch)
  config.train.batch_size = 128
  config.train.num_steps = config_lib.epochs_to_steps(160, CIFAR_TRAIN, 128, "keep")
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = 0
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 2000
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.schedule.name = "step"
  config.schedule.milestones = tuple(config_lib.epochs_to_steps(e, CIFAR_TRAIN, 128, "keep") for e in (80, 120))
  config.imp.num_rounds = 19
  config.imp.pruning_rate = 0.2
  config.imp.count_convention = "open_lth"  # open_lth sparse_global: counts + 1, head counted
  config.imp.allocation = "global"
  config.imp.selector = "conv_dense_no_head"
  config.lmc.rewind_steps = (0, 100, 250, 500, 1000, 2000, 5000)
  config.lmc.networks = ("dense", "imp", "random")
  config.lmc.rounds = (19,)
  config.lmc.pair_seeds = (1,)
  config.lmc.num_alphas = 30
  config.lmc.splits = ("test", "train")
  config.lmc.batch_norm = "reestimate"
  config.lmc.bn_batches = 40
  return config

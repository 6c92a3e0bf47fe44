"""ResNet-20 on CIFAR-10: SNIP, GraSP, SynFlow and random masks at initialisation against IMP.

Command:
  python -m kdt.main --config configs/cifar10_resnet20_prune_at_init.py \
      --workdir /tmp/kdt_cifar10_pai [--config.data.dir=/path/with/cifar-10-python.tar.gz]

Setting of Tanaka et al. 2020 ("Pruning neural networks without any data by iteratively conserving
synaptic flow") for ResNet-20: SGD momentum 0.9, batch 128, lr 0.01, x0.2 at epochs 60 and 120,
weight decay 5e-4, 160 post-pruning epochs (62,560 steps of 391: its PyTorch loader keeps the last partial batch), crop (pad 4) + flip. Source read:
a run script built on ganguli-lab/Synaptic-Flow's `main.py` (`--model-class lottery --model
resnet20 --lr 0.01 --lr-drops 60 120 --lr-drop-rate 0.2 --weight-decay 0.0005 --post-epochs 160`);
`main.py`'s own defaults differ (lr 0.1, x0.1, wd 1e-4), so check against the paper's appendix.
SynFlow data-free with 100 iterations (exponential schedule), global allocation for every score.
Densities: IMP's schedule, 20 % of the remaining weights per round over 10 rounds (80 % ...
10.7 %; the paper sweeps compression 10^(k/4) instead); set `--config.imp.pruning_rate` /
`num_rounds` for other grids. Every mask is re-trained with `lth`
(theta_0, the full schedule); IMP (recipe `lth`, global magnitude, rewinding to 0) runs on the same
dense run. Departures: SNIP / GraSP score one training batch of 128 augmented images (the
reference scores 10 images per class, 100, in batches of 256) — `--config.imp.score_batches`.

Hardware: one accelerator; each of the 1 + 5 x 10 runs is ~30 min on a V100-class GPU (~26 h in
all, less with fewer rounds); on a 2-core CPU it is impractical.
Expected (Tanaka et al. Fig. 6; Frankle et al. 2021, "Pruning neural networks at initialization:
why are we missing the mark?"): dense ~91-92 %; down to ~10 % density SNIP, GraSP and SynFlow stay
within about 2 points of dense and above random pruning; IMP matches or beats every mask found at
initialisation, and its lead grows as density falls. These are literature ranges, not kdt
measurements: no CIFAR run was made for this config on the development machine (no data, no GPU).
"""

from kdt import config_lib


def get_config():
  config = config_lib.base_config("prune_at_init")
  config.model.name = "resnet20"
  config.data.name = "cifar10"
  config_lib.open_lth_cifar_recipe(config)
  steps = lambda epochs: config_lib.epochs_to_steps(epochs, config_lib.CIFAR_TRAIN, 128, "keep")  # noqa: E731
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.schedule.milestones = (steps(60), steps(120))
  config.schedule.gamma = 0.2
  config.imp.recipes = ("lth",)
  config.imp.num_rounds = 10
  config.imp.pruning_rate = 0.2
  config.imp.allocation = "global"
  config.imp.selector = "conv_dense"
  config.imp.synflow_iterations = 100
  config.imp.score_batches = 1
  config.prune_at_init.scores = ("snip", "grasp", "synflow", "random")
  config.prune_at_init.allocation = "global"
  config.prune_at_init.recipe = "lth"
  return config

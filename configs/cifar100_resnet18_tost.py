"""ToST (Jaiswal et al., ICML 2022): LTH vs LTH + all re-training tweaks, ResNet-18 on CIFAR-100,
docs/methods.md §2.

Command:
  python -m kdt.main --config configs/cifar100_resnet18_tost.py \
      --workdir /tmp/kdt_cifar100_resnet18_tost \
      [--config.data.dir=/path/with/cifar-100-python.tar.gz]

Protocol (VITA-Group/ToST, the KD-ticket CIFAR recipe of §2.3): train the dense ResNet-18 (CIFAR
stem) (ReLU), prune it ONE-SHOT to the sparsities 1 - 0.8^k, k = 1..16 (20 % ... 97.19 %), by
global magnitude over all conv weights (the FC head, BN and biases are never pruned; 1x1 shortcut
convs are), and re-train every mask twice from theta_0: `lth` (the vanilla lottery ticket) and
`tost` (the same mask and theta_0 with every tweak of config_lib.tost_preset: swish instead of
ReLU, two ghost 1x1 conv + BN skip branches per block (kernels 0.0001, never pruned), label
smoothing 0.1 with alpha/(C-1) off target, GradInit layer-wise re-scaling of the pruned network
with the code defaults: 390 iterations, lr 1e-3, sgd, eta 0.1, min scale 0.01, grad clip 1, no norm
constraint). Recipe: first 5,000 training images = validation set, 45,000 train; batch 128, SGD
momentum 0.9, lr 0.1, x0.1 at epochs 90 and 135, weight decay 2e-4, 182 epochs (63,882 steps of
351); crop (pad 4) + flip.
Variants: --config.tost.lrsi=dense (GradInit before masking, ToST `train_ticket.py`);
--config.tost.gradinit_variant=masked (GradInit search on the kept weights only; the default is
ToST `train_ticket_type2.py`'s search, which also sees the pruned ones);
--config.tost.activation_anneal_steps=N / --config.tost.ghost_fade_steps=N (back to the plain
network over N steps; the paper's "early stage of training", schedule not in the released code).
Hardware: one accelerator; 33 runs of 182 epochs (~1 h each on a V100-class GPU, ~1.5 days in all;
several times faster on a TPU v3-8 or an H100).
Expected: the paper's headline: combining all the tweaks gives +1.05 % to +4.93 % test accuracy
over vanilla LTH (the abstract's range; the gain grows with sparsity, the exact sparsities of both
ends were not found, docs/methods.md §2.4); dense ResNet-18 ~76-78 % on CIFAR-100. Results: results.json
(best-validation test accuracy in `test_accuracy_at_best_val`), plots/accuracy_vs_weights.png.
"""

from kdt import config_lib

CIFAR_TRAIN, VAL, BATCH = 50_000, 5_000, 128


def get_config():
  config = config_lib.base_config("imp")
  config.model.name = "resnet18"
  config.data.name = "cifar100"
  config.data.val_size = VAL
  steps = lambda epochs: config_lib.epochs_to_steps(epochs, CIFAR_TRAIN - VAL, BATCH)  # noqa: E731
  config.train.batch_size = BATCH
  config.train.num_steps = steps(182)
  config.train.eval_batch_size = 1000
  config.train.eval_every_steps = steps(1)
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = steps(1)
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 2e-4
  config.schedule.name = "step"
  config.schedule.milestones = (steps(90), steps(135))
  config.imp.recipes = ("lth",)
  config.imp.pruning_schedule = "oneshot"
  config.imp.num_rounds = 16
  config.imp.densities = tuple(round(0.8**k, 10) for k in range(1, 17))
  config.imp.selector = "conv"
  config.imp.allocation = "global"
  config_lib.tost_preset(config, ghost_skips=True)  # adds the `tost` recipe
  return config

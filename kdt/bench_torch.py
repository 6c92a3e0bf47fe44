"""PyTorch twins of kdt's benchmark models and train steps, for ``python -m kdt.bench``.

Only the benchmark imports this module (PyTorch is the ``bench`` extra; the library never needs it).
Each twin is the *same network* as its kdt model: same layers, same names, same padding, same
BatchNorm settings, and :func:`copy_from_kdt` copies a kdt ``(params, batch_stats)`` pair into it
(HWIO kernels become OIHW, Dense kernels are transposed, the first Dense layer after a flatten has
its rows permuted from kdt's NHWC flatten order to PyTorch's NCHW order), so the two frameworks
compute the same function from the same weights. :func:`agreement` checks that before any timing.

The train steps are written the way a user of open_lth or of the KD-ticket code runs PyTorch:
``torch.optim.SGD`` (momentum, L2 weight decay added to the gradient — the same update as
:func:`kdt.train.optim.make_direction`), cross-entropy, and the KD loss

.. math::
  \\alpha T^2 \\, \\mathrm{KL}(\\mathrm{softmax}(z_t/T) \\| \\mathrm{softmax}(z_s/T)) + (1-\\alpha)\\,\\mathrm{CE}

with ``F.kl_div(..., reduction="batchmean")``; masks multiply the gradient before the optimizer
step and the weights after it (kdt's mask contract, so pruned weights stay exactly zero). The
teacher on the fly is a dense twin in eval mode under ``torch.no_grad()``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODES = ("eager", "channels_last", "compile")
"""How the PyTorch step runs: plain eager NCHW, eager ``channels_last``, ``torch.compile``."""


# ----- the networks -------------------------------------------------------------------------------

class LeNet(nn.Module):
  """kdt's LeNet (:class:`kdt.models.lenet.LeNet`): flatten, Dense + ReLU layers, ``head``."""

  def __init__(self, input_shape, num_classes: int, hidden=(300, 100)):
    super().__init__()
    self.flat_shape = tuple(input_shape)  # flattened input: NHWC (kdt) vs NCHW (PyTorch) order
    features = int(np.prod(input_shape))
    self.names = ["stem"] + [f"fc{i + 1}" for i in range(1, len(hidden))]
    for name, width in zip(self.names, hidden):
      setattr(self, name, nn.Linear(features, width))
      features = width
    self.head = nn.Linear(features, num_classes)

  def forward(self, x):
    x = torch.flatten(x, 1)
    for name in self.names:
      x = F.relu(getattr(self, name)(x))
    return self.head(x)


class ConvNet(nn.Module):
  """kdt's Conv-N (:class:`kdt.models.convnets.ConvNet`): pairs of 3x3 convs and 2x2 max-pools."""

  def __init__(self, input_shape, num_classes: int, widths=(64, 128, 256), dense_widths=(256, 256)):
    super().__init__()
    height, width, channels = input_shape
    self.conv_names = []
    for stage, features in enumerate(widths):
      for j in range(2):
        index = 2 * stage + j
        name = "stem" if index == 0 else f"conv{index + 1}"
        setattr(self, name, nn.Conv2d(channels, features, 3, padding=1, bias=True))
        self.conv_names.append(name)
        channels = features
      height, width = height // 2, width // 2
    self.flat_shape = (height, width, channels)
    features = height * width * channels
    self.dense_names = [f"fc{i + 1}" for i in range(len(dense_widths))]
    for name, dense_width in zip(self.dense_names, dense_widths):
      setattr(self, name, nn.Linear(features, dense_width))
      features = dense_width
    self.head = nn.Linear(features, num_classes)

  def forward(self, x):
    for i, name in enumerate(self.conv_names):
      x = F.relu(getattr(self, name)(x))
      if i % 2 == 1:
        x = F.max_pool2d(x, 2)
    x = torch.flatten(x, 1)
    for name in self.dense_names:
      x = F.relu(getattr(self, name)(x))
    return self.head(x)


def _bn(features: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
  """kdt's :class:`kdt.models.resnet.BasicBlock` with the 1x1 conv + BN projection shortcut."""

  def __init__(self, in_features: int, features: int, strides: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, stride=strides, padding=1, bias=False)
    self.bn1 = _bn(features)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
    self.bn2 = _bn(features)
    self.project = in_features != features or strides != 1
    if self.project:
      self.shortcut_conv = nn.Conv2d(in_features, features, 1, stride=strides, bias=False)
      self.shortcut_bn = _bn(features)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.project else x
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):
  """kdt's CIFAR ResNet-N (:class:`kdt.models.resnet.CifarResNet`, ``shortcut="conv"``)."""

  def __init__(self, input_shape, num_classes: int, depth: int = 20, width: int = 16):
    super().__init__()
    channels = input_shape[-1]
    self.stem = nn.Conv2d(channels, width, 3, padding=1, bias=False)
    self.stem_bn = _bn(width)
    self.block_names = []
    in_features = width
    for stage in range(3):
      for index in range((depth - 2) // 6):
        features = width * 2**stage
        name = f"layer{stage + 1}_{index}"
        setattr(self, name, BasicBlock(in_features, features, 2 if stage and not index else 1))
        self.block_names.append(name)
        in_features = features
    self.head = nn.Linear(in_features, num_classes)

  def forward(self, x):
    x = F.relu(self.stem_bn(self.stem(x)))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return self.head(torch.mean(x, dim=(2, 3)))


def create(name: str, input_shape, num_classes: int) -> nn.Module:
  """The PyTorch twin of the kdt model ``name`` (``lenet_300_100``, ``conv2/4/6``, ``resnetN``)."""
  if name == "lenet_300_100":
    return LeNet(input_shape, num_classes)
  if name in ("conv2", "conv4", "conv6"):
    widths = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256)}[name]
    return ConvNet(input_shape, num_classes, widths=widths)
  if name.startswith("resnet") and name[6:].isdigit():
    return CifarResNet(input_shape, num_classes, depth=int(name[6:]))
  raise ValueError(f"no PyTorch twin for model {name!r}; allowed: lenet_300_100, conv2, conv4, "
                   "conv6, resnet<6n+2>")


# ----- weights and masks --------------------------------------------------------------------------

def _flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) or hasattr(value, "items"):
      out.update(_flatten_tree(dict(value), name + "."))
    else:
      out[name] = np.asarray(value)
  return out


def _torch_tensor_name(kdt_name: str) -> tuple[str, str]:
  """Maps a flattened kdt leaf name to ``(torch state_dict key, kind)``."""
  module, leaf = kdt_name.rsplit(".", 1)
  kind = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
          "var": "running_var"}[leaf]
  return f"{module}.{kind}", leaf


def _to_torch_array(model: nn.Module, key: str, leaf: str, value: np.ndarray) -> np.ndarray:
  """Converts one kdt array to the layout of the twin's tensor ``key``."""
  if leaf != "kernel":
    return value
  if value.ndim == 4:  # HWIO -> OIHW
    return value.transpose(3, 2, 0, 1)
  module_name = key.rsplit(".", 1)[0]
  flat_shape = getattr(model, "flat_shape", None)
  first_after_flatten = (isinstance(model, ConvNet) and module_name == model.dense_names[0]) or (
      isinstance(model, LeNet) and module_name == "stem")
  if first_after_flatten and flat_shape is not None:
    height, width, channels = flat_shape
    value = value.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(
        height * width * channels, -1)
  return value.T  # Dense (in, out) -> Linear (out, in)


def copy_from_kdt(model: nn.Module, params: Any, batch_stats: Any = None) -> None:
  """Copies kdt's ``params`` (and BN ``batch_stats``) into the twin, in place.

  Args:
    model: a twin from :func:`create` (any memory format; the copy keeps it).
    params: the kdt model's parameter pytree (nested dicts of arrays).
    batch_stats: BN running statistics, or None / empty.

  Raises:
    ValueError: a kdt leaf has no counterpart in the twin, or a shape differs.
  """
  state = model.state_dict()
  arrays = _flatten_tree(dict(params))
  if batch_stats:
    arrays.update(_flatten_tree(dict(batch_stats)))
  with torch.no_grad():
    for kdt_name, value in arrays.items():
      key, leaf = _torch_tensor_name(kdt_name)
      if key not in state:
        raise ValueError(f"kdt leaf {kdt_name!r} has no PyTorch counterpart {key!r}")
      converted = _to_torch_array(model, key, leaf, value.astype(np.float32))
      if tuple(converted.shape) != tuple(state[key].shape):
        raise ValueError(f"{kdt_name}: kdt shape {value.shape} -> {converted.shape} does not fit "
                         f"{key} {tuple(state[key].shape)}")
      state[key].copy_(torch.from_numpy(np.ascontiguousarray(converted)))


def torch_masks(model: nn.Module, mask: Any) -> dict[str, torch.Tensor]:
  """kdt's bool mask as float tensors for the twin's pruned tensors (all-True leaves left out)."""
  state = model.state_dict()
  out = {}
  for kdt_name, value in _flatten_tree(dict(mask)).items():
    if value.all():
      continue
    key, leaf = _torch_tensor_name(kdt_name)
    out[key] = torch.from_numpy(np.ascontiguousarray(
        _to_torch_array(model, key, leaf, value.astype(np.float32)))).to(
            memory_format=_format_of(state[key]))
  return out


def _format_of(tensor: torch.Tensor):
  if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) and not \
      tensor.is_contiguous():
    return torch.channels_last
  return torch.contiguous_format


def nchw(images: np.ndarray) -> torch.Tensor:
  """NHWC numpy images -> an NCHW float32 tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))


# ----- the train step -----------------------------------------------------------------------------

def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, alpha: float,
            temperature: float) -> torch.Tensor:
  """alpha * T^2 * KL(teacher || student) (``batchmean``) + (1 - alpha) * CE, as the KD-ticket code."""
  kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                reduction="batchmean")
  return alpha * temperature**2 * kl + (1.0 - alpha) * F.cross_entropy(student, labels)


@dataclasses.dataclass
class TorchStep:
  """One compiled-or-eager PyTorch train step, ready to call as ``step(images, labels, logits)``.

  Attributes:
    model: the student twin.
    optimizer: its ``torch.optim.SGD``.
    run: ``(images NCHW, labels, teacher_logits or None) -> loss tensor``; one SGD step.
  """

  model: nn.Module
  optimizer: torch.optim.Optimizer
  run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

  def __call__(self, images, labels, teacher_logits=None):
    return self.run(images, labels, teacher_logits)


def make_step(student: nn.Module, *, variant: str, mode: str = "eager",
              masks: dict[str, torch.Tensor] | None = None, teacher: nn.Module | None = None,
              learning_rate: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4,
              kd_alpha: float = 0.9, kd_temperature: float = 4.0) -> TorchStep:
  """A PyTorch train step for one of the benchmark's variants.

  Args:
    student: the twin to train (modified in place; ``channels_last`` mode converts it).
    variant: ``"dense_ce"``, ``"masked_ce"``, ``"masked_kd"`` (teacher logits computed on the fly
      by ``teacher``) or ``"masked_kd_cached"`` (teacher logits passed in).
    mode: one of :data:`MODES`.
    masks: ``torch state_dict key -> float mask`` (:func:`torch_masks`) for the masked variants.
    teacher: the dense teacher twin for ``"masked_kd"``.
    learning_rate: SGD learning rate.
    momentum: SGD momentum.
    weight_decay: L2 weight decay (added to the gradient, PyTorch SGD).
    kd_alpha: KD weight alpha.
    kd_temperature: KD temperature T.

  Returns:
    A :class:`TorchStep`.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; allowed: {MODES}")
  masked = variant != "dense_ce"
  if masked and not masks:
    raise ValueError(f"variant {variant!r} needs masks")
  if variant == "masked_kd" and teacher is None:
    raise ValueError("variant 'masked_kd' needs a teacher")
  if mode == "channels_last":
    student = student.to(memory_format=torch.channels_last)
    if teacher is not None:
      teacher = teacher.to(memory_format=torch.channels_last)
  if teacher is not None:
    teacher.eval()
  student.train()
  optimizer = torch.optim.SGD(student.parameters(), lr=learning_rate, momentum=momentum,
                              weight_decay=weight_decay)
  named = dict(student.named_parameters())
  masked_params = [named[k] for k in (masks or {})]
  mask_values = [m.to(memory_format=_format_of(named[k])) for k, m in (masks or {}).items()]
  forward = torch.compile(student) if mode == "compile" else student
  teacher_forward = (torch.compile(teacher) if mode == "compile" and teacher is not None
                     else teacher)

  def run(images, labels, teacher_logits):
    if mode == "channels_last":
      images = images.contiguous(memory_format=torch.channels_last)
    if variant == "masked_kd":
      with torch.no_grad():
        teacher_logits = teacher_forward(images)
    optimizer.zero_grad(set_to_none=True)
    logits = forward(images)
    if variant in ("masked_kd", "masked_kd_cached"):
      loss = kd_loss(logits, teacher_logits, labels, alpha=kd_alpha, temperature=kd_temperature)
    else:
      loss = F.cross_entropy(logits, labels)
    loss.backward()
    if masked:
      with torch.no_grad():
        torch._foreach_mul_([p.grad for p in masked_params], mask_values)
    optimizer.step()
    if masked:
      with torch.no_grad():
        torch._foreach_mul_(masked_params, mask_values)
    return loss

  return TorchStep(student, optimizer, run)


# ----- the input pipeline -------------------------------------------------------------------------

class AugmentedImages(torch.utils.data.Dataset):
  """uint8 NHWC images with torchvision's CIFAR recipe, written out per sample in plain torch.

  ``RandomCrop(size, padding=4)`` + ``RandomHorizontalFlip()`` + ``ToTensor()`` + ``Normalize``
  (when ``augment == "crop_flip"``; ``"none"`` only converts and normalises) — the augmentation of
  :func:`kdt.data.preprocess`, done the way a PyTorch ``DataLoader`` pipeline does it.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std, augment: str,
               seed: int = 0):
    self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    self.labels = torch.from_numpy(labels.astype(np.int64))
    self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    self.augment = augment
    self.seed = seed

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    x = self.images[index]
    if self.augment == "crop_flip":
      _, height, width = x.shape
      x = F.pad(x, (4, 4, 4, 4))
      top, left = np.random.randint(0, 9, size=2)
      x = x[:, top:top + height, left:left + width]
      if np.random.rand() < 0.5:
        x = torch.flip(x, dims=(2,))
    x = (x.float() / 255.0 - self.mean) / self.std
    return x, self.labels[index]


def data_loader(dataset: AugmentedImages, batch_size: int, num_workers: int, seed: int = 0):
  """An endless shuffled ``DataLoader`` iterator (persistent workers, drop_last), as open_lth."""
  generator = torch.Generator().manual_seed(seed)
  sampler = torch.utils.data.RandomSampler(dataset, replacement=False,
                                           num_samples=10**9, generator=generator)
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
      persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
      # Fresh worker processes: forking a process that runs JAX's threads can deadlock.
      multiprocessing_context="spawn" if num_workers > 0 else None)
  return iter(loader)


def _seed_worker(worker_id: int) -> None:
  np.random.seed((torch.initial_seed() + worker_id) % 2**32)


# ----- agreement ----------------------------------------------------------------------------------

def agreement(name: str, kdt_model, variables: dict, images: np.ndarray, *,
              input_shape, num_classes: int) -> dict:
  """Largest |kdt - PyTorch| logit difference (train and eval mode) for the same weights.

  Args:
    name: the kdt model name.
    kdt_model: the Flax module.
    variables: ``{"params": ..., ["batch_stats": ...]}`` of the kdt model.
    images: float NHWC inputs.
    input_shape: one example's shape.
    num_classes: logits per example.

  Returns:
    ``{"train_max_abs", "eval_max_abs", "logit_scale"}`` (scale = max |logit|, for a relative view).
  """
  twin = create(name, input_shape, num_classes)
  copy_from_kdt(twin, variables["params"], variables.get("batch_stats"))
  out = {}
  x = nchw(images)
  # Eval first: a PyTorch forward in train mode updates the BN running statistics in place.
  for mode, train in (("eval", False), ("train", True)):
    if "batch_stats" in variables and train:
      kdt_logits, _ = kdt_model.apply(variables, images, train=True, mutable=["batch_stats"])
    else:
      kdt_logits = kdt_model.apply(variables, images, train=train)
    twin.train(train)
    with torch.no_grad():
      torch_logits = twin(x).numpy()
    out[f"{mode}_max_abs"] = float(np.max(np.abs(np.asarray(kdt_logits) - torch_logits)))
    out["logit_scale"] = max(out.get("logit_scale", 0.0), float(np.max(np.abs(torch_logits))))
  return out


def check_agreement(result: dict, name: str, tolerance: float = 1e-3) -> None:
  """Raises AssertionError if the twins disagree by more than ``tolerance`` relative to the scale."""
  scale = max(1.0, result["logit_scale"])
  worst = max(result["train_max_abs"], result["eval_max_abs"])
  if not math.isfinite(worst) or worst > tolerance * scale:
    raise AssertionError(f"{name}: kdt and PyTorch logits differ by {worst:.3g} (scale {scale:.3g}, "
                         f"tolerance {tolerance} relative): the networks are not the same")

"""kdt.models: the model zoo (Flax Linen) and its registry.

Build a model by name with ``create_model``; ``model_names()`` lists the registered names and
``check_model_input`` says, without any JAX computation, whether a model takes a given input shape.

Contract other kdt code relies on:

* ``model.apply(variables, x, train=False)`` takes float NHWC ``x`` (already normalised) and
  returns float32 logits ``[batch, num_classes]``. With ``train=True`` BatchNorm uses batch
  statistics and updates the ``batch_stats`` collection (pass ``mutable=["batch_stats"]``);
  BN momentum is PyTorch's 0.1 (Flax 0.9), epsilon 1e-5.
* The first layer (input conv, or LeNet's first Dense) is a submodule named ``stem`` and the
  output classifier is a Dense named ``head``. Conv kernels are 4-D HWIO ``kernel`` leaves, Dense
  kernels 2-D ``kernel`` leaves. Parameters are float32; ``dtype`` is only the compute dtype.
* ``activation`` (a key of ``ACTIVATIONS``) is used at every place the reference uses ReLU.
* ``init_scheme`` (``INIT_SCHEMES``): kdt's own initialisation, or open_lth's / KD-ticket's
  (:mod:`kdt.models.init_schemes`).
"""

from kdt.models.convnets import ConvNet
from kdt.models.init_schemes import INIT_SCHEMES, apply_init_scheme, init_scheme_problem
from kdt.models.layers import ACTIVATIONS, get_activation
from kdt.models.lenet import LeNet
from kdt.models.mobilenet import InvertedResidual, MobileNetV2
from kdt.models.registry import (CIFAR_STEM_MAX_SIDE, check_model_input, create_model,
                                 ghost_skip_problem, model_names)
from kdt.models.resnet import BasicBlock, Bottleneck, CifarResNet, OResNet, ResNet
from kdt.models.vgg import VGG
from kdt.models.wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "ACTIVATIONS",
    "CIFAR_STEM_MAX_SIDE",
    "INIT_SCHEMES",
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ConvNet",
    "ghost_skip_problem",
    "InvertedResidual",
    "LeNet",
    "MobileNetV2",
    "OResNet",
    "ResNet",
    "VGG",
    "WideBasicBlock",
    "WideResNet",
    "apply_init_scheme",
    "check_model_input",
    "create_model",
    "get_activation",
    "init_scheme_problem",
    "model_names",
]

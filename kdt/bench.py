"""``python -m kdt.bench [--quick]``: kdt's speed, side by side with PyTorch, measured fairly.

Machines are shared and noisy, so every comparison is made *inside one run, interleaved*: the
contenders of a group take turns step by step (A B C A B C ...), each step is timed on its own
(blocking until its results exist), warm-up steps are dropped, and the figures are medians over at
least 20 timed steps. A ratio between two contenders is the median of their per-round ratios (each
round's A and B ran seconds apart, under the same load). Compilation (XLA's, ``torch.compile``'s)
is timed separately, on the first call.

Sections (``--sections``, all by default):

``step``      train-step throughput (images/s) of lenet_300_100 (MNIST shape), conv6 and resnet20
              (CIFAR shape) at batch 128, four variants — dense CE, masked CE, masked KD with the
              teacher's logits computed on the fly, masked KD with cached logits — for kdt and for
              the PyTorch twins (:mod:`kdt.bench_torch`: the same networks with kdt's weights
              copied in, outputs checked to agree before timing) run eager, ``channels_last`` and
              ``torch.compile``d (the full run times Conv-6 in two variants only). The "levers"
              — kdt on one host device vs split over several (:mod:`kdt.host_devices`), the
              convolution weight gradient unchunked (:mod:`kdt.models.conv_grad`), bf16 compute
              — and PyTorch eager with one thread are timed in the same rounds.
``loop``      the whole training loop with its input pipeline (kdt's :class:`kdt.train.loop.Trainer`
              pieces: batch gather, device transfer, on-device augmentation, step; metrics fetched
              as at a log step) against a PyTorch ``DataLoader`` loop doing the same augmentation.
``tickets``   K tickets at once (K = 1, 2, 4, 8, 16) for LeNet-300-100 and ResNet-20, the
              strategies of :mod:`kdt.tickets.batch` (``vmap``, ``shard_map`` over host devices,
              ``sequential``; ``lax_map`` on request): ticket-images/s relative to K = 1 and to
              sequential, XLA's memory plan of each program, the strategy ``auto`` picks; then
              the quickstart with ``replicates=3`` against three single-replicate commands.
              ``--device`` runs this section alone on a GPU/TPU.
``pipeline``  the quickstart IMP (``configs/quickstart.py``): wall time, split into train steps,
              compilation, data, evaluation, pruning, checkpoints and results/plots as the loop
              and the experiments record it themselves (:mod:`kdt.timing`).
              With other sections it runs in a fresh process, on the host devices
              ``python -m kdt.main`` would give the quickstart.
``flops``     achieved FLOP/s of every kdt step (XLA's cost analysis / measured step time) against
              this machine's measured matmul peak, and the peak host memory.

Everything lands in one JSON file (``--out``; hardware, versions, load average, every figure) and
a Markdown table on stdout. ``--quick`` is a smoke run (LeNet only, a reduced quickstart; under 2
minutes on 2 cores): its figures are not for quoting.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from kdt import host_devices

VARIANTS = ("dense_ce", "masked_ce", "masked_kd", "masked_kd_cached")
"""Train-step variants: no mask + CE; mask + CE; mask + KD (teacher on the fly); mask + cached KD."""

SECTIONS = ("step", "loop", "tickets", "pipeline", "flops")

MODEL_DATASETS = {"lenet_300_100": "mnist", "conv2": "cifar10", "conv4": "cifar10",
                  "conv6": "cifar10"}
"""The dataset whose shape a benchmark model sees (``resnet*``: CIFAR-10)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a benchmark run measures.

  Attributes:
    models: models of the ``step`` section.
    variants: step variants (:data:`VARIANTS`).
    model_variants: per-model exceptions to ``variants`` (the full run times Conv-6, the slowest
      model, in two variants to stay within its time budget).
    torch_modes: PyTorch modes (:data:`kdt.bench_torch.MODES`); () = no PyTorch.
    batch_size: global batch size of every step.
    warmup: untimed rounds after compilation.
    steps: timed rounds (each contender one step per round).
    lever_models: models whose step group also times the levers (host devices, bf16).
    loop_models: models of the ``loop`` section.
    loop_chunk: loop steps per timed chunk (metrics fetched once per chunk, as at a log step).
    loop_chunks: timed chunks per contender.
    loop_torch_modes: PyTorch modes of the loop section.
    loop_examples: synthetic training examples the loops draw from.
    torch_workers: ``DataLoader`` worker processes.
    torch_one_thread: also time PyTorch eager masked KD with one thread (a reference for loaded
      machines, where a multi-threaded OpenMP step slows down far more than one thread).
    ticket_models: models of the ``tickets`` section.
    ticket_counts: the K's (K = 1 is the reference of the throughput ratios).
    ticket_batch_size: batch size of each ticket.
    ticket_steps: timed rounds of the ``tickets`` section.
    ticket_strategies: strategies timed (``"lax_map"`` too if listed; it is slowest on CPU).
    ticket_budget_s: the ``tickets`` section starts no new (model, K) group once it has run this
      long (0 = no limit); the groups left out are listed in the JSON and the table.
    ticket_quickstart_replicates: R of the quickstart timed with ``replicates=R`` against R
      single-replicate commands (0 = skip).
    quickstart_overrides: config overrides for the ``pipeline`` section (empty = the quickstart).
    matmul_size: side of the square matmuls that measure the peak.
  """

  models: tuple[str, ...] = ("lenet_300_100", "conv6", "resnet20")
  variants: tuple[str, ...] = VARIANTS
  model_variants: tuple[tuple[str, tuple[str, ...]], ...] = (("conv6", ("dense_ce", "masked_kd")),)
  torch_modes: tuple[str, ...] = ("eager", "channels_last", "compile")
  batch_size: int = 128
  warmup: int = 2
  steps: int = 20
  lever_models: tuple[str, ...] = ("lenet_300_100", "conv6", "resnet20")
  loop_models: tuple[str, ...] = ("lenet_300_100", "resnet20")
  loop_chunk: int = 4
  loop_chunks: int = 20
  loop_torch_modes: tuple[str, ...] = ("eager",)
  loop_examples: int = 10_000
  torch_workers: int = 2
  torch_one_thread: bool = True
  ticket_models: tuple[str, ...] = ("lenet_300_100", "resnet20")
  ticket_counts: tuple[int, ...] = (1, 2, 4, 8, 16)
  ticket_batch_size: int = 128
  ticket_steps: int = 20
  ticket_strategies: tuple[str, ...] = ("vmap", "shard_map", "sequential")
  ticket_budget_s: float = 0.0
  ticket_quickstart_replicates: int = 3
  quickstart_overrides: tuple[tuple[str, Any], ...] = ()
  matmul_size: int = 2048


FULL = Settings()
DEVICE = Settings(ticket_models=("resnet20", "lenet_300_100"),
                  ticket_strategies=("vmap", "sequential", "lax_map"), ticket_budget_s=300.0,
                  ticket_quickstart_replicates=0)
"""``--device``: the tickets section on an accelerator, one command under 8 minutes on one GPU:
ResNet-20 first (the K = 8 vs K = 1 goal), and no group starts after 5 minutes (compiles of the
larger K's dominate there), so the JSON is always written."""
QUICK = Settings(
    models=("lenet_300_100",), lever_models=("lenet_300_100",), loop_models=("lenet_300_100",),
    loop_chunks=20, loop_examples=2_000, ticket_models=("lenet_300_100",), ticket_counts=(1, 2),
    ticket_quickstart_replicates=0,
    quickstart_overrides=(("imp.num_rounds", 2), ("imp.recipes", ("lth", "kd"))),
    matmul_size=1024)


# ----- timing ---------------------------------------------------------------------------------------

SETTLE_S = 0.005
"""Pause before each timed step: the previous contender's worker threads (PyTorch's OpenMP team
spin-waits for a few milliseconds after each parallel region, XLA's pool likewise) go idle first,
so no contender pays for the one before it."""


def interleaved(contenders: dict[str, Callable[[], Any]], *, warmup: int, steps: int,
                settle_s: float = SETTLE_S) -> dict[str, list[float]]:
  """Runs the contenders in turn (A B C A B C ...) and returns each one's timed step seconds.

  Args:
    contenders: name -> a callable that runs one step and returns once its results exist.
    warmup: untimed rounds first.
    steps: timed rounds.
    settle_s: untimed pause before each step (see :data:`SETTLE_S`).

  Returns:
    name -> ``steps`` durations in seconds, in round order (so round ``i`` of every contender ran
    within one round of the others).
  """
  for _ in range(warmup):
    for run in contenders.values():
      time.sleep(settle_s)
      run()
  times: dict[str, list[float]] = {name: [] for name in contenders}
  for _ in range(steps):
    for name, run in contenders.items():
      time.sleep(settle_s)
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return times


def summary(seconds: list[float], images: int) -> dict:
  """Median / quartiles of step times and the images per second at the median."""
  q = np.percentile(seconds, [25, 50, 75])
  return {"median_s": float(q[1]), "p25_s": float(q[0]), "p75_s": float(q[2]),
          "images_per_s": images / float(q[1]), "n": len(seconds)}


def paired_ratio(a: list[float], b: list[float]) -> float:
  """Median over rounds of ``b[i] / a[i]``: how many times faster A is than B (> 1: A faster)."""
  return float(statistics.median(y / x for x, y in zip(a, b)))


# ----- environment ----------------------------------------------------------------------------------

def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
  except OSError:
    pass
  return []


def _memory_gib() -> float | None:
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("MemTotal"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return None


def _version(module: str) -> str | None:
  try:
    from importlib import metadata
    return metadata.version(module)
  except Exception:  # pylint: disable=broad-except
    return None


def environment() -> dict:
  """Hardware, software versions and the load on the machine."""
  import jax
  return {
      "cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cores": host_devices.cpu_cores(),
      "memory_gib": _memory_gib(), "platform": platform.platform(),
      "python": platform.python_version(),
      "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "numpy", "torch")},
      "backend": jax.default_backend(), "devices": jax.device_count(),
      "device_kind": jax.devices()[0].device_kind,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "torch_threads": _torch_threads(),
      "load_average_start": list(os.getloadavg()),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join([os.path.basename(sys.executable), "-m", "kdt.bench", *sys.argv[1:]]),
  }


def _torch_threads() -> int | None:
  torch = _torch()
  return torch.get_num_threads() if torch is not None else None


def torch_available() -> bool:
  """Whether PyTorch (the ``bench`` extra) is installed."""
  return _torch() is not None


@functools.lru_cache(maxsize=1)
def _torch():
  try:
    import torch
  except ImportError:
    return None
  return torch


# ----- kdt pieces -----------------------------------------------------------------------------------

def input_shape(model_name: str) -> tuple[int, int, int]:
  from kdt.data import registry
  return registry.dataset_info(MODEL_DATASETS.get(model_name, "cifar10")).input_shape


def kdt_device_count(model_name: str, batch_size: int) -> int:
  """The devices kdt's automatic policy gives ``model_name`` here (capped by what JAX has)."""
  import jax
  wanted = host_devices.auto_count(model_name, input_shape(model_name), (batch_size,))
  return max(1, min(wanted, jax.device_count()))


def _mesh(count: int):
  import jax
  from kdt import parallel
  return jax.make_mesh((count,), (parallel.DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:count])


def random_mask(params, key, density: float = 0.2):
  """A bool mask keeping ``density`` of every kernel (ndim >= 2) at random; other leaves all True."""
  import jax
  import jax.numpy as jnp
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = [jax.random.bernoulli(k, density, x.shape) if x.ndim >= 2 else jnp.ones(x.shape, bool)
         for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass
class Problem:
  """One model's benchmark inputs, shared by kdt and PyTorch: weights, mask, teacher, a batch."""
  name: str
  model: Any
  shape: tuple[int, int, int]
  variables: dict
  teacher_variables: dict
  mask: Any
  images: np.ndarray
  labels: np.ndarray
  teacher_logits: np.ndarray


def make_problem(name: str, batch_size: int, dtype: str = "float32") -> Problem:
  """kdt model ``name`` with seed-0 weights, a seed-1 dense teacher, a 20 % mask and a batch."""
  import jax
  import jax.numpy as jnp
  from kdt import models
  shape = input_shape(name)
  model = models.create_model(name, num_classes=10, input_shape=shape,
                              dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])
  dummy = jnp.zeros((1, *shape), jnp.float32)
  variables = dict(jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), dummy))
  teacher = dict(jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), dummy))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch_size, *shape)).astype(np.float32)
  labels = rng.integers(0, 10, batch_size).astype(np.int32)
  logits = np.asarray(model.apply(teacher, images, train=False), np.float32)
  mask = random_mask(variables["params"], jax.random.key(2))
  return Problem(name, model, shape, variables, teacher, mask, images, labels, logits)


def kdt_step(problem: Problem, variant: str, devices: int, *, model=None,
             weight_grad_chunks: int | str | None = None) -> tuple[Callable, dict]:
  """kdt's jitted train step for ``variant`` on ``devices`` host devices, ready to time.

  The step is :func:`kdt.train.steps.train_step` as the Trainer jits it (state donated, state and
  mask replicated, batch and cached logits sharded over ``"data"``). ``dense_ce`` binds an
  all-True mask as a constant, so XLA removes the mask (the plain step); the masked variants take
  the mask as an argument.

  ``weight_grad_chunks`` overrides :func:`kdt.models.conv_grad.set_weight_grad_chunks` for this
  step only (None: kdt's setting, with ``"auto"`` evaluated for ``devices`` devices).

  Returns:
    ``(run, info)``: ``run()`` performs one step and blocks on its outputs; ``info`` holds the
    compile time (first call), XLA's FLOP count and the trace count.
  """
  import jax
  from kdt.models import conv_grad
  previous = conv_grad.weight_grad_chunks_setting()
  if weight_grad_chunks is None and previous == "auto" and devices != jax.device_count():
    # "auto" counts rows per device over jax.device_count(); this step's mesh is smaller.
    weight_grad_chunks = conv_grad.chunks_for(len(problem.images), devices=devices)
  if weight_grad_chunks is not None:
    conv_grad.set_weight_grad_chunks(weight_grad_chunks)
  try:
    return _kdt_step(problem, variant, devices, model)
  finally:
    conv_grad.set_weight_grad_chunks(previous)


def _kdt_step(problem: Problem, variant: str, devices: int, model) -> tuple[Callable, dict]:
  import jax
  from kdt import parallel
  from kdt.train import losses, optim, steps
  from kdt.train.state import create_train_state

  model = problem.model if model is None else model
  direction = optim.make_direction("sgd", momentum=0.9, weight_decay=1e-4)
  schedule = optim.make_schedule("constant", learning_rate=0.1, num_steps=10**6)
  loss = losses.LossConfig()
  mesh = _mesh(devices)
  replicated, rows = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  traces = {"count": 0}
  constant_mask = jax.tree.map(lambda _: True, problem.variables["params"])

  def step(state, mask, batch, teacher):
    traces["count"] += 1
    if variant == "dense_ce":
      mask, teacher_logits = constant_mask, None
    elif variant == "masked_ce":
      teacher_logits = None
    elif variant == "masked_kd":
      teacher_logits = steps.teacher_logits(teacher["params"], teacher.get("batch_stats", {}),
                                            batch["image"], model=model)
    else:
      teacher_logits = teacher
    return steps.train_step(state, mask, batch, teacher_logits, model=model, direction=direction,
                            schedule=schedule, loss=loss)

  jitted = jax.jit(step, donate_argnums=(0,), out_shardings=(replicated, replicated))
  # Fresh buffers (via host copies): the step donates its state.
  state = jax.device_put(jax.tree.map(np.array, create_train_state(problem.variables, direction)),
                         replicated)
  mask = jax.device_put(problem.mask, replicated)
  batch = {"image": jax.device_put(problem.images, rows),
           "label": jax.device_put(problem.labels, rows)}
  teacher = {"masked_kd": jax.device_put(problem.teacher_variables, replicated),
             "masked_kd_cached": jax.device_put(problem.teacher_logits, rows)}.get(variant)
  lowered = jitted.lower(state, mask, batch, teacher)
  flops = _flops(lowered)
  box = [state]

  def run():
    box[0], metrics = jitted(box[0], mask, batch, teacher)
    jax.block_until_ready((box[0], metrics))

  start = time.perf_counter()
  run()
  info = {"compile_s": time.perf_counter() - start, "flops": flops, "traces": traces,
          "devices": devices}
  return run, info


def _flops(lowered) -> float | None:
  """XLA's FLOP count of a lowered (not yet partitioned: whole-batch) computation."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  value = (cost or {}).get("flops")
  return float(value) if value else None


# ----- PyTorch pieces -------------------------------------------------------------------------------

def torch_step(problem: Problem, variant: str, mode: str, threads: int | None = None
               ) -> tuple[Callable, dict]:
  """The PyTorch twin's train step for ``variant`` in ``mode``, with kdt's weights and mask.

  ``threads``: run this step with ``torch.set_num_threads(threads)`` (restored afterwards);
  None keeps PyTorch's default (one thread per core).
  """
  import jax
  torch = _torch()
  from kdt import bench_torch as bt
  from kdt import pruning
  params = problem.variables["params"]
  if variant != "dense_ce":  # the twin starts from the weights kdt's masked forward pass sees
    params = jax.tree.map(np.asarray, pruning.apply_mask(params, problem.mask))
  student = bt.create(problem.name, problem.shape, 10)
  bt.copy_from_kdt(student, params, problem.variables.get("batch_stats"))
  teacher = None
  if variant == "masked_kd":
    teacher = bt.create(problem.name, problem.shape, 10)
    bt.copy_from_kdt(teacher, problem.teacher_variables["params"],
                     problem.teacher_variables.get("batch_stats"))
  masks = bt.torch_masks(student, problem.mask) if variant != "dense_ce" else None
  step = bt.make_step(student, variant=variant, mode=mode, masks=masks, teacher=teacher)
  images, labels = bt.nchw(problem.images), torch.from_numpy(problem.labels.astype(np.int64))
  logits = torch.from_numpy(np.array(problem.teacher_logits)) if variant == "masked_kd_cached" else None

  def run():
    if threads is None:
      step(images, labels, logits).item()
      return
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
      step(images, labels, logits).item()
    finally:
      torch.set_num_threads(default)

  start = time.perf_counter()
  run()
  return run, {"compile_s": time.perf_counter() - start}


# ----- section: step --------------------------------------------------------------------------------

def section_step(settings: Settings, log: Callable[[str], None]) -> dict:
  """Train-step throughput of kdt and the PyTorch twins, plus the levers (see module docstring)."""
  import jax
  out = {}
  use_torch = bool(settings.torch_modes) and torch_available()
  for name in settings.models:
    problem = make_problem(name, settings.batch_size)
    devices = kdt_device_count(name, settings.batch_size)
    result: dict[str, Any] = {"kdt_devices": devices, "contenders": {}, "compile_s": {},
                              "flops": {}}
    if use_torch:
      from kdt import bench_torch as bt
      agreement = bt.agreement(name, problem.model, _with_perturbed_stats(problem.variables),
                               problem.images[:16], input_shape=problem.shape, num_classes=10)
      bt.check_agreement(agreement, name)
      result["agreement"] = agreement
      log(f"[step] {name}: PyTorch twin agrees with kdt (max |logit diff| "
          f"{max(agreement['train_max_abs'], agreement['eval_max_abs']):.2e}).")
    contenders, traces = {}, {}
    variants = dict(settings.model_variants).get(name, settings.variants)
    result["variants"] = list(variants)
    for variant in variants:
      run, info = kdt_step(problem, variant, devices)
      contenders[f"kdt/{variant}"] = run
      result["compile_s"][f"kdt/{variant}"] = info["compile_s"]
      result["flops"][f"kdt/{variant}"] = info["flops"]
      traces[f"kdt/{variant}"] = info["traces"]
    if name in settings.lever_models:
      others = [n for n in sorted({1, jax.device_count()}) if n != devices]
      for count in others:
        run, info = kdt_step(problem, "masked_kd", count)
        contenders[f"kdt/masked_kd@{count}dev"] = run
        result["compile_s"][f"kdt/masked_kd@{count}dev"] = info["compile_s"]
        traces[f"kdt/masked_kd@{count}dev"] = info["traces"]
      if any(layer.ndim == 4 for layer in jax.tree.leaves(problem.variables["params"])):
        run, info = kdt_step(problem, "masked_kd", devices, weight_grad_chunks=1)
        contenders["kdt/masked_kd/unchunked"] = run
        result["compile_s"]["kdt/masked_kd/unchunked"] = info["compile_s"]
        traces["kdt/masked_kd/unchunked"] = info["traces"]
      bf16 = make_problem(name, settings.batch_size, dtype="bfloat16")
      run, info = kdt_step(bf16, "masked_kd", devices)
      contenders["kdt/masked_kd/bf16"] = run
      result["compile_s"]["kdt/masked_kd/bf16"] = info["compile_s"]
      traces["kdt/masked_kd/bf16"] = info["traces"]
    if use_torch:
      for mode in settings.torch_modes:
        for variant in variants:
          log(f"[step] {name}: preparing PyTorch {mode} {variant}")
          run, info = torch_step(problem, variant, mode)
          contenders[f"torch_{mode}/{variant}"] = run
          result["compile_s"][f"torch_{mode}/{variant}"] = info["compile_s"]
      if settings.torch_one_thread and "masked_kd" in variants:
        # On a loaded machine PyTorch's OpenMP team stalls at every barrier when a core is taken;
        # one thread shows what PyTorch does without that.
        run, info = torch_step(problem, "masked_kd", "eager", threads=1)
        contenders["torch_eager_1thread/masked_kd"] = run
        result["compile_s"]["torch_eager_1thread/masked_kd"] = info["compile_s"]
    log(f"[step] {name}: timing {len(contenders)} contenders interleaved, "
        f"{settings.steps} rounds (kdt on {devices} device(s))")
    times = interleaved(contenders, warmup=settings.warmup, steps=settings.steps)
    result["contenders"] = {k: summary(v, settings.batch_size) for k, v in times.items()}
    result["one_compile_per_variant"] = all(t["count"] == 1 for t in traces.values())
    result["ratios"] = _step_ratios(times, variants, settings.torch_modes)
    result["times"] = {k: [round(t, 6) for t in v] for k, v in times.items()}
    out[name] = result
  return out


def _with_perturbed_stats(variables: dict) -> dict:
  """Variables with non-trivial BN running statistics, so eval mode is really compared."""
  import jax
  if not variables.get("batch_stats"):
    return variables
  rng = np.random.default_rng(3)

  def perturb(path, x):
    kind = jax.tree_util.keystr(path[-1:])
    noise = rng.normal(size=x.shape).astype(np.float32)
    return x + 0.1 * noise if "mean" in kind else x * (1.0 + 0.3 * np.abs(noise))

  return dict(variables, batch_stats=jax.tree_util.tree_map_with_path(perturb,
                                                                       variables["batch_stats"]))


def _step_ratios(times: dict[str, list[float]], variants, torch_modes) -> dict:
  ratios = {}
  for variant in variants:
    kdt_times = times[f"kdt/{variant}"]
    for mode in torch_modes:
      key = f"torch_{mode}/{variant}"
      if key in times:
        ratios[f"kdt_vs_torch_{mode}/{variant}"] = paired_ratio(kdt_times, times[key])
  if "kdt/masked_kd" in times and "torch_eager_1thread/masked_kd" in times:
    ratios["kdt_vs_torch_eager_1thread/masked_kd"] = paired_ratio(
        times["kdt/masked_kd"], times["torch_eager_1thread/masked_kd"])
  plain = times.get("kdt/dense_ce")
  if plain:
    for variant in ("masked_ce", "masked_kd_cached"):
      if f"kdt/{variant}" in times:
        ratios[f"overhead/{variant}"] = paired_ratio(plain, times[f"kdt/{variant}"]) - 1.0
    for mode in torch_modes:
      base, masked = times.get(f"torch_{mode}/dense_ce"), times.get(f"torch_{mode}/masked_kd_cached")
      if base and masked:
        ratios[f"overhead_torch_{mode}/masked_kd_cached"] = paired_ratio(base, masked) - 1.0
  default = times.get("kdt/masked_kd")
  for key in times:
    if key.startswith("kdt/masked_kd@") or key in ("kdt/masked_kd/bf16",
                                                    "kdt/masked_kd/unchunked"):
      ratios[f"lever/{key[len('kdt/masked_kd'):].lstrip('/@') or key}_vs_default"] = paired_ratio(
          times[key], default)
  return ratios


# ----- section: loop --------------------------------------------------------------------------------

def synthetic_dataset(dataset_name: str, examples: int, seed: int = 0):
  """A :class:`kdt.data.Dataset` of random uint8 images with ``dataset_name``'s shape and stats."""
  from kdt import data as data_lib
  from kdt.data import registry
  info = registry.dataset_info(dataset_name)
  rng = np.random.default_rng(seed)

  def split(n):
    return data_lib.Split(rng.integers(0, 256, (n, *info.input_shape), dtype=np.uint8),
                          rng.integers(0, info.num_classes, n).astype(np.int32))

  return data_lib.Dataset(info, split(examples), split(max(256, examples // 10)))


def kdt_loop(name: str, settings: Settings) -> tuple[Callable, dict]:
  """``chunk()``: ``loop_chunk`` steps of kdt's training loop (masked CE, dataset augmentation)."""
  import jax
  from kdt import models, parallel
  from kdt.train import loop, optim
  dataset = synthetic_dataset(MODEL_DATASETS.get(name, "cifar10"), settings.loop_examples)
  shape = dataset.info.input_shape
  model = models.create_model(name, num_classes=10, input_shape=shape)
  mesh = _mesh(kdt_device_count(name, settings.batch_size))
  trainer = loop.Trainer(model, dataset, mesh, loop.LoopSettings(
      batch_size=settings.batch_size, log_every_steps=0, checkpoint_every_steps=0))
  optimizer = optim.OptimizerSpec()
  init = loop.init_state_fn(model, shape, optimizer.make(), 0)
  mask = random_mask(jax.eval_shape(init).params, jax.random.key(2))
  run = loop.Run(name="bench", directory="", init_state=init, mask=mask, end_step=10**9,
                 optimizer=optimizer,
                 schedule=optim.ScheduleSpec(name="constant", learning_rate=0.1, num_steps=10**9))
  step_fn = trainer.train_step_for(run)
  box = {"state": jax.jit(init, out_shardings=parallel.replicated(mesh))(), "step": 0}
  mask = parallel.replicate(mask, mesh)
  augment_key = jax.random.key(0)

  def chunk():
    metrics = None
    for _ in range(settings.loop_chunk):
      local = trainer.train_batch(box["step"], run)
      raw = parallel.global_batch(local, mesh)
      box["state"], metrics = step_fn(box["state"], mask, raw, None, augment_key)
      box["step"] += 1
    float(metrics["loss"])  # a log step: the metrics come to the host
    jax.block_until_ready(box["state"])

  start = time.perf_counter()
  chunk()
  return chunk, {"compile_s": time.perf_counter() - start, "devices": mesh.size,
                 "augment": trainer.augment, "traces": trainer.trace_counts}


def torch_loop(name: str, settings: Settings, mode: str) -> tuple[Callable, dict]:
  """``chunk()``: ``loop_chunk`` steps of a PyTorch ``DataLoader`` loop (same augmentation)."""
  import jax
  from kdt import bench_torch as bt
  from kdt import models
  from kdt.data import registry
  info = registry.dataset_info(MODEL_DATASETS.get(name, "cifar10"))
  dataset = synthetic_dataset(info.name, settings.loop_examples)
  model = models.create_model(name, num_classes=10, input_shape=info.input_shape)
  variables = model.init(jax.random.key(0), np.zeros((1, *info.input_shape), np.float32))
  student = bt.create(name, info.input_shape, 10)
  bt.copy_from_kdt(student, variables["params"], variables.get("batch_stats"))
  masks = bt.torch_masks(student, random_mask(variables["params"], jax.random.key(2)))
  step = bt.make_step(student, variant="masked_ce", mode=mode, masks=masks)
  images = bt.AugmentedImages(dataset.train.images, dataset.train.labels, info.mean, info.std,
                              info.augment)
  batches = bt.data_loader(images, settings.batch_size, settings.torch_workers)

  def chunk():
    loss = None
    for _ in range(settings.loop_chunk):
      x, y = next(batches)
      loss = step(x, y)
    loss.item()

  start = time.perf_counter()
  chunk()
  return chunk, {"compile_s": time.perf_counter() - start, "workers": settings.torch_workers,
                 "augment": info.augment}


def section_loop(settings: Settings, log: Callable[[str], None]) -> dict:
  """Whole-loop throughput: kdt's loop vs a PyTorch DataLoader loop, interleaved by chunks."""
  out = {}
  for name in settings.loop_models:
    contenders, info = {}, {}
    contenders["kdt"], info["kdt"] = kdt_loop(name, settings)
    if torch_available():
      for mode in settings.loop_torch_modes:
        contenders[f"torch_{mode}"], info[f"torch_{mode}"] = torch_loop(name, settings, mode)
    log(f"[loop] {name}: timing {list(contenders)} in chunks of {settings.loop_chunk} steps, "
        f"{settings.loop_chunks} chunks each")
    times = interleaved(contenders, warmup=settings.warmup, steps=settings.loop_chunks)
    per_step = {k: [t / settings.loop_chunk for t in v] for k, v in times.items()}
    result = {"contenders": {k: summary(v, settings.batch_size) for k, v in per_step.items()},
              "info": {k: {kk: vv for kk, vv in v.items() if kk != "traces"}
                       for k, v in info.items()},
              "one_compile": all(c == 1 for c in info["kdt"]["traces"].values()),
              "ratios": {f"kdt_vs_{k}": paired_ratio(per_step["kdt"], v)
                         for k, v in per_step.items() if k != "kdt"}}
    out[name] = result
  return out


# ----- section: tickets -----------------------------------------------------------------------------

def _program_bytes(jitted, *args) -> int:
  """XLA's own memory plan of one compiled program: arguments + outputs + temporaries - aliased
  (donated) buffers. Deterministic, and the same figure on CPU, GPU and TPU."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  if analysis is None:
    return 0
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def _tree_bytes(tree) -> int:
  import jax
  return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def ticket_group(name: str, k: int, settings: Settings, log: Callable[[str], None]) -> dict:
  """K tickets of ``name`` (batch ``ticket_batch_size`` each), every strategy interleaved:
  ticket-images/s, memory of the program, compiles."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from kdt import parallel
  from kdt.tickets import batch as batch_lib
  from kdt.train import losses, optim, steps
  from kdt.train.state import create_train_state

  b = settings.ticket_batch_size
  problem = make_problem(name, b)
  direction = optim.make_direction("sgd", momentum=0.9, weight_decay=1e-4)
  schedule = optim.make_schedule("constant", learning_rate=0.1, num_steps=10**6)
  loss = losses.LossConfig()
  devices = kdt_device_count(name, b)
  mesh = _mesh(devices)
  replicated = parallel.replicated(mesh)

  def one(state, mask, batch, teacher, key):
    del teacher, key
    return steps.train_step(state, mask, batch, None, model=problem.model, direction=direction,
                            schedule=schedule, loss=loss)

  states = [create_train_state(
      dict(problem.model.init(jax.random.key(i), jnp.zeros((1, *problem.shape)), train=False)),
      direction) for i in range(k)]
  masks = [random_mask(s.params, jax.random.key(10 + i)) for i, s in enumerate(states)]
  rng = np.random.default_rng(k)
  images = rng.normal(size=(k, b, *problem.shape)).astype(np.float32)
  labels = rng.integers(0, 10, (k, b)).astype(np.int32)
  keys = jax.vmap(jax.random.key)(jnp.arange(k))
  contenders, traces, memory = {}, {}, {}

  def stacked_runner(strategy, state_sharding, batch_sharding, ticket_mesh=None):
    mapped = batch_lib.map_over_tickets(one, strategy, ticket_mesh=ticket_mesh)
    count = {"count": 0}

    def counted(*args):
      count["count"] += 1
      return mapped(*args)

    jitted = jax.jit(counted, donate_argnums=(0,), out_shardings=(state_sharding, state_sharding))
    box = [jax.device_put(jax.tree.map(np.array, batch_lib.stack(states)), state_sharding)]
    stacked_masks = jax.device_put(batch_lib.stack(masks), state_sharding)
    batch = {"image": jax.device_put(images, batch_sharding),
             "label": jax.device_put(labels, batch_sharding)}
    key_array = jax.device_put(keys, state_sharding)
    def run():
      box[0], metrics = jitted(box[0], stacked_masks, batch, None, key_array)
      jax.block_until_ready((box[0], metrics))

    run()
    traced = count["count"]
    memory[strategy] = _program_bytes(jitted, box[0], stacked_masks, batch, None, key_array)
    count["count"] = traced  # the memory plan's lowering is not a step compile
    return run, count

  def sequential_runner():
    """The single-ticket step (compiled once) called once per ticket, synced after all K."""
    count = {"count": 0}

    def counted(*args):
      count["count"] += 1
      return one(*args)

    rows = parallel.batch_sharded(mesh)
    jitted = jax.jit(counted, donate_argnums=(0,), out_shardings=(replicated, replicated))
    boxes = [jax.device_put(jax.tree.map(np.array, s), replicated) for s in states]
    placed = [(jax.device_put(m, replicated),
               {"image": jax.device_put(x, rows), "label": jax.device_put(y, rows)})
              for m, x, y in zip(masks, images, labels)]
    def run():
      metrics = []
      for i, (mask, batch) in enumerate(placed):
        boxes[i], m = jitted(boxes[i], mask, batch, None, None)
        metrics.append(m)
      jax.block_until_ready((boxes, metrics))

    run()
    traced = count["count"]
    # One program in flight at a time, the other K - 1 states and masks resident.
    memory["sequential"] = (_program_bytes(jitted, boxes[0], *placed[0], None, None)
                            + (k - 1) * (_tree_bytes(states[0]) + _tree_bytes(masks[0])))
    count["count"] = traced
    return run, count

  data_rows = NamedSharding(mesh, P(None, parallel.DATA_AXIS))
  for strategy in ("vmap", "lax_map"):
    if strategy in settings.ticket_strategies:
      contenders[strategy], traces[strategy] = stacked_runner(strategy, replicated, data_rows)
  ticket_devices = max(d for d in range(1, jax.device_count() + 1)
                       if k % d == 0 and d <= jax.device_count())
  if ticket_devices > 1 and "shard_map" in settings.ticket_strategies:
    ticket_mesh = jax.sharding.Mesh(np.array(jax.devices()[:ticket_devices]),
                                    (batch_lib.TICKET_AXIS,),
                                    axis_types=(jax.sharding.AxisType.Explicit,))
    tickets_sharded = NamedSharding(ticket_mesh, P(batch_lib.TICKET_AXIS))
    contenders["shard_map"], traces["shard_map"] = stacked_runner(
        "shard_map", tickets_sharded, tickets_sharded, ticket_mesh)
  if "sequential" in settings.ticket_strategies:
    contenders["sequential"], traces["sequential"] = sequential_runner()
  log(f"[tickets] {name} K={k}: timing {list(contenders)}, {settings.ticket_steps} rounds")
  times = interleaved(contenders, warmup=settings.warmup, steps=settings.ticket_steps)
  choice, reason = batch_lib.choose_strategy("auto", k)
  # Each K's figures as soon as they exist: a bench stopped later still leaves them in its log.
  log(f"[tickets] {name} K={k}: " + ", ".join(
      f"{s} {summary(v, k * b)['images_per_s']:.0f} ticket-img/s, {(memory.get(s) or 0) / 2**20:.0f} MiB"
      for s, v in times.items()))
  return {
      "contenders": {s: summary(v, k * b) for s, v in times.items()},
      "times": times,
      "ratios_vs_sequential": {s: paired_ratio(v, times["sequential"])
                               for s, v in times.items() if s != "sequential"}
                              if "sequential" in times else {},
      "memory_bytes": memory,
      "auto_choice": choice, "auto_reason": reason, "shard_map_devices": ticket_devices,
      "kdt_devices": devices,
      "one_compile_per_strategy": all(t["count"] == 1 for t in traces.values()),
  }


def quickstart_replicates(replicates: int, log: Callable[[str], None],
                          overrides: tuple[str, ...] = ()) -> dict:
  """``python -m kdt.main`` on the quickstart with ``replicates=R`` against R single-replicate
  commands with the same seeds, one after another (fresh processes, wall and CPU seconds;
  ``overrides``: extra ``--config.a.b=v`` flags for both)."""
  import subprocess
  from kdt import config_lib
  config = quickstart_config()
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "quickstart.py")

  def command(workdir, extra):
    return [sys.executable, "-m", "kdt.main", "--config", path, "--workdir", workdir, *overrides,
            *extra]

  def timed(commands) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for c in commands:
      subprocess.run(c, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (time.perf_counter() - start,
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

  with tempfile.TemporaryDirectory() as tmp:
    log(f"[tickets] quickstart: replicates={replicates} in one command")
    together_wall, together_cpu = timed([command(os.path.join(tmp, "together"),
                                                 [f"--config.replicates={replicates}"])])
    singles = []
    for r in range(replicates):
      seeds = config_lib.replicate_config(config, r).seeds
      singles.append(command(os.path.join(tmp, f"single_{r}"),
                             [f"--config.seeds.{f}={seeds[f]}" for f in config_lib.SEED_FIELDS]))
    log(f"[tickets] quickstart: {replicates} single-replicate commands")
    apart_wall, apart_cpu = timed(singles)
  return {"replicates": replicates, "together_wall_s": together_wall,
          "together_cpu_s": together_cpu, "apart_wall_s": apart_wall, "apart_cpu_s": apart_cpu,
          "wall_ratio": together_wall / apart_wall, "load_average": list(os.getloadavg())}


def section_tickets(settings: Settings, log: Callable[[str], None]) -> dict:
  """Many tickets at once: per model and K, every strategy's ticket-images/s relative to K = 1
  and to sequential, and the memory of its program; then the quickstart with replicates."""
  out = {"batch_size_per_ticket": settings.ticket_batch_size, "models": {}, "skipped": []}
  start = time.perf_counter()
  for name in settings.ticket_models:
    groups = {}
    for k in settings.ticket_counts:
      elapsed = time.perf_counter() - start
      if settings.ticket_budget_s and elapsed >= settings.ticket_budget_s:
        log(f"[tickets] {name} K={k}: skipped, the section has run {elapsed:.0f} s of its "
            f"{settings.ticket_budget_s:.0f} s budget")
        out["skipped"].append(f"{name} K={k}")
        continue
      groups[k] = ticket_group(name, k, settings, log)
    base = groups.get(1)
    for group in groups.values():
      group["throughput_vs_k1"] = (
          {s: c["images_per_s"] / base["contenders"][s]["images_per_s"]
           for s, c in group["contenders"].items() if s in base["contenders"]} if base else {})
      group.pop("times")
    if groups:
      out["models"][name] = {f"K={k}": g for k, g in groups.items()}
  if settings.ticket_quickstart_replicates:
    out["quickstart"] = quickstart_replicates(settings.ticket_quickstart_replicates, log)
  return out


# ----- section: pipeline ----------------------------------------------------------------------------

def quickstart_config(overrides=()):
  """``configs/quickstart.py``'s config (found next to the package), with ``overrides`` applied."""
  from kdt import config_lib
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "quickstart.py")
  return config_lib.load_file(path, overrides)


def section_pipeline(settings: Settings, log: Callable[[str], None]) -> dict:
  """The quickstart IMP: wall time, then the split by category that kdt records itself
  (:mod:`kdt.timing`: the loop charges data, compile, train steps, eval and checkpoints; the
  experiments setup, pruning and results/plots)."""
  from kdt import experiments, timing
  config = quickstart_config(settings.quickstart_overrides)
  out = {"config": "configs/quickstart.py", "overrides": dict(settings.quickstart_overrides)}
  with tempfile.TemporaryDirectory() as tmp:
    log("[pipeline] quickstart IMP")
    timing.reset()
    start = time.perf_counter()
    experiments.run(config, os.path.join(tmp, "quickstart"))
    wall = time.perf_counter() - start
    recorded = timing.snapshot()
  seconds = dict(recorded["seconds"])
  steps_s, compile_s = seconds.get("train_steps", 0.0), seconds.get("compile", 0.0)
  seconds["other"] = max(0.0, wall - sum(seconds.values()))
  out.update({
      "wall_s": wall,
      "seconds": seconds,
      "calls": recorded["calls"],
      "fraction_outside_steps": (wall - steps_s - compile_s) / wall,
      "fraction_outside_steps_incl_compile": (wall - steps_s) / wall,
      "train_step_compiles": recorded["calls"].get("compile", 0),
  })
  return out


# ----- section: flops -------------------------------------------------------------------------------

def matmul_peak(size: int, repeats: int = 5) -> dict:
  """Measured FLOP/s of square f32 and bf16 matmuls (JAX on one device, and PyTorch)."""
  import jax
  import jax.numpy as jnp
  out = {}
  for dtype in ("float32", "bfloat16"):
    a = jax.device_put(jnp.ones((size, size), dtype), jax.devices()[0])
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(f(a, a))
      times.append(time.perf_counter() - start)
    out[f"jax_{dtype}"] = 2 * size**3 / min(times)
    torch = _torch()
    if torch is not None:
      t = torch.ones((size, size), dtype=getattr(torch, dtype))
      torch.matmul(t, t)
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(t, t)
        times.append(time.perf_counter() - start)
      out[f"torch_{dtype}"] = 2 * size**3 / min(times)
  return out


def section_flops(settings: Settings, step_results: dict) -> dict:
  """Achieved FLOP/s of each timed kdt step against the measured matmul peak; peak host memory."""
  peak = matmul_peak(settings.matmul_size)
  reference = max(peak.get("jax_float32", 0.0), peak.get("torch_float32", 0.0)) or None
  steps_out = {}
  for name, result in step_results.items():
    for key, flops in result.get("flops", {}).items():
      if not flops or key not in result["contenders"]:
        continue
      achieved = flops / result["contenders"][key]["median_s"]
      steps_out[f"{name}/{key}"] = {"flops_per_step": flops, "achieved_flops_per_s": achieved,
                                    "fraction_of_f32_matmul_peak": achieved / reference
                                    if reference else None}
  return {"matmul_peak_flops_per_s": peak, "steps": steps_out, **peak_memory()}


def peak_memory() -> dict:
  """Peak resident memory of this process and of its (finished) children, in GiB."""
  scale = 2**20 if sys.platform != "darwin" else 2**30  # ru_maxrss: KiB on Linux, bytes on macOS
  return {"peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale,
          "peak_children_memory_gib":
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale}


# ----- report ---------------------------------------------------------------------------------------

def _fmt(value, spec=".0f") -> str:
  return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else \
      format(value, spec)


def format_table(results: dict) -> str:
  """The run's headline figures as Markdown tables."""
  lines = []
  env = results["environment"]
  lines.append(f"Machine: {env['cpu']}, {env['cores']} cores, {_fmt(env['memory_gib'], '.0f')} GiB; "
               f"JAX {env['versions']['jax']} ({env['backend']}, {env['devices']} host devices), "
               f"PyTorch {env['versions']['torch'] or 'not installed'}; load average "
               f"{env['load_average_start'][0]:.1f} at start, "
               f"{results.get('load_average_end', [float('nan')])[0]:.1f} at end.")
  steps = results.get("step") or {}
  if steps:
    lines += ["", "**Train step, images/s (median; ratio = kdt / PyTorch throughput, paired)**", ""]
    modes = [m for m in ("eager", "channels_last", "compile")
             if any(f"torch_{m}/dense_ce" in r["contenders"] for r in steps.values())]
    header = "| model | variant | kdt | " + " | ".join(f"torch {m}" for m in modes) + " | " + \
        " | ".join(f"kdt/torch {m}" for m in modes) + " |"
    lines += [header, "|" + "---|" * (3 + 2 * len(modes))]
    for name, r in steps.items():
      for variant in VARIANTS:
        kdt = r["contenders"].get(f"kdt/{variant}")
        if kdt is None:
          continue
        cells = [_fmt(r["contenders"].get(f"torch_{m}/{variant}", {}).get("images_per_s"))
                 for m in modes]
        ratios = [_fmt(r["ratios"].get(f"kdt_vs_torch_{m}/{variant}"), ".2f") + "×"
                  for m in modes]
        lines.append(f"| {name} ({r['kdt_devices']} dev) | {variant} | "
                     f"{_fmt(kdt['images_per_s'])} | " + " | ".join(cells) + " | " +
                     " | ".join(ratios) + " |")
    lines += ["", "**Overheads and levers (kdt, paired ratios)**", "",
              "| model | mask+KD overhead (cached) | mask overhead | " +
              "levers (speed-up of the lever vs kdt's default masked KD step) | compile s (kdt "
              "masked_kd / torch.compile masked_kd) |", "|---|---|---|---|---|"]
    for name, r in steps.items():
      levers = ", ".join(f"{k[6:-11]}: {v:.2f}×" for k, v in r["ratios"].items()
                         if k.startswith("lever/"))
      one_thread = r["ratios"].get("kdt_vs_torch_eager_1thread/masked_kd")
      if one_thread is not None:
        levers += f"; kdt / torch eager 1 thread (masked_kd): {one_thread:.2f}×"
      compile_s = r["compile_s"]
      lines.append(
          f"| {name} | {_fmt(100 * r['ratios'].get('overhead/masked_kd_cached', float('nan')), '+.1f')} % "
          f"| {_fmt(100 * r['ratios'].get('overhead/masked_ce', float('nan')), '+.1f')} % | {levers} | "
          f"{_fmt(compile_s.get('kdt/masked_kd'), '.1f')} / "
          f"{_fmt(compile_s.get('torch_compile/masked_kd'), '.1f')} |")
  loops = results.get("loop") or {}
  if loops:
    lines += ["", "**Whole training loop with input pipeline, images/s**", "",
              "| model | augmentation | kdt | PyTorch DataLoader | kdt / PyTorch |",
              "|---|---|---|---|---|"]
    for name, r in loops.items():
      for key, value in r["ratios"].items():
        other = key[len("kdt_vs_"):]
        lines.append(f"| {name} | {r['info']['kdt']['augment']} | "
                     f"{_fmt(r['contenders']['kdt']['images_per_s'])} | "
                     f"{_fmt(r['contenders'][other]['images_per_s'])} ({other}, "
                     f"{r['info'][other]['workers']} workers) | {value:.2f}× |")
  tickets = results.get("tickets") or {}
  for name, groups in (tickets.get("models") or {}).items():
    strategies = list(dict.fromkeys(s for g in groups.values() for s in g["contenders"]))
    lines += ["", f"**K tickets at once: {name}, batch {tickets['batch_size_per_ticket']} per ticket"
              "** — ticket-images/s relative to K = 1 of the same strategy; [× sequential at that "
              "K]; ticket-images/s; XLA's memory plan of the program", "",
              "| K | " + " | ".join(strategies) + " | auto |",
              "|---|" + "---|" * len(strategies) + "---|"]
    for k, g in groups.items():
      cells = []
      for s in strategies:
        if s not in g["contenders"]:
          cells.append("—")
          continue
        vs_k1, vs_seq = g["throughput_vs_k1"].get(s), g["ratios_vs_sequential"].get(s)
        cells.append(("—" if vs_k1 is None else f"{vs_k1:.2f}×")
                     + (f" [{vs_seq:.2f}×]" if vs_seq else "")
                     + f", {g['contenders'][s]['images_per_s']:.0f} img/s"
                     + f", {g['memory_bytes'].get(s, 0) / 2**20:.0f} MiB")
      lines.append(f"| {k[2:]} | " + " | ".join(cells) + f" | {g['auto_choice']} |")
  if tickets.get("skipped"):
    lines += ["", f"Not measured (the section's time budget ran out): {', '.join(tickets['skipped'])}."]
  quick = tickets.get("quickstart")
  if quick:
    lines += ["", f"**Quickstart with replicates={quick['replicates']}**: "
              f"{quick['together_wall_s']:.0f} s wall ({quick['together_cpu_s']:.0f} CPU-s) in one "
              f"command vs {quick['apart_wall_s']:.0f} s ({quick['apart_cpu_s']:.0f} CPU-s) for "
              f"{quick['replicates']} single-replicate commands: {quick['wall_ratio']:.2f}× the wall "
              f"time (load average {quick['load_average'][0]:.1f})."]
  pipe = results.get("pipeline")
  if pipe:
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(pipe["seconds"].items(),
                                                          key=lambda kv: -kv[1]))
    lines += ["", f"**Quickstart IMP**: {pipe['wall_s']:.1f} s wall = {parts}; outside train "
              f"steps and compiles: {100 * pipe['fraction_outside_steps']:.0f} %; step "
              f"compiles: {pipe['train_step_compiles']}."]
  flops = results.get("flops")
  if flops:
    peak = flops["matmul_peak_flops_per_s"]
    best = max(flops["steps"].items(), key=lambda kv: kv[1]["achieved_flops_per_s"],
               default=None)
    lines += ["", f"**FLOP/s**: matmul peak f32 JAX {_fmt(peak.get('jax_float32', 0) / 1e9)} / "
              f"PyTorch {_fmt(peak.get('torch_float32', 0) / 1e9)} GFLOP/s, bf16 JAX "
              f"{_fmt(peak.get('jax_bfloat16', 0) / 1e9)} / PyTorch "
              f"{_fmt(peak.get('torch_bfloat16', 0) / 1e9)} GFLOP/s"
              + (f"; best kdt step {best[0]}: {best[1]['achieved_flops_per_s'] / 1e9:.0f} GFLOP/s "
                 f"({100 * best[1]['fraction_of_f32_matmul_peak']:.0f} % of the f32 peak)"
                 if best and best[1]["fraction_of_f32_matmul_peak"] else "")
              + f"; peak host memory {flops['peak_host_memory_gib']:.2f} GiB."]
  return "\n".join(lines)


# ----- entry point ----------------------------------------------------------------------------------

def run(settings: Settings, sections=SECTIONS, out_path: str | None = None,
        log: Callable[[str], None] | None = None) -> dict:
  """Runs the benchmark sections and returns (and optionally writes) the results.

  Args:
    settings: what to measure (:data:`FULL`, :data:`QUICK` or your own).
    sections: a subset of :data:`SECTIONS` (``flops`` reads the ``step`` section's figures).
    out_path: JSON file to write, or None.
    log: progress printer (default: stderr).

  Returns:
    The results: ``environment``, ``settings``, one entry per section, ``load_average_end``.
  """
  log = log or (lambda message: print(message, file=sys.stderr, flush=True))
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise ValueError(f"unknown sections {sorted(unknown)}; allowed: {SECTIONS}")
  results: dict[str, Any] = {"environment": environment(),
                             "settings": dataclasses.asdict(settings), "sections": list(sections)}
  started = time.perf_counter()
  results["section_wall_s"] = {}
  sections_run = {"step": lambda: section_step(settings, log),
                  "loop": lambda: section_loop(settings, log),
                  "tickets": lambda: section_tickets(settings, log),
                  "pipeline": lambda: section_pipeline(settings, log),
                  "flops": lambda: section_flops(settings, results.get("step", {}))}
  for name, section in sections_run.items():
    if name in sections:
      section_start = time.perf_counter()
      results[name] = section()
      results["section_wall_s"][name] = time.perf_counter() - section_start
  results["load_average_end"] = list(os.getloadavg())
  results["bench_wall_s"] = time.perf_counter() - started
  if out_path:
    _write_json(results, out_path)
  return results


def _write_json(results: dict, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1, sort_keys=True, default=str)
    f.write("\n")


def _pipeline_apart(quick: bool) -> tuple[dict, float]:
  """The ``pipeline`` section in a fresh process: this one has JAX split into the host devices
  the conv nets use, while the quickstart (LeNet) runs on the one device ``kdt.main`` gives it."""
  import subprocess
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "pipeline.json")
    subprocess.run([sys.executable, "-m", "kdt.bench", "--sections", "pipeline", "--out", out]
                   + (["--quick"] if quick else []), check=True, stdout=subprocess.DEVNULL)
    with open(out, encoding="utf-8") as f:
      return json.load(f)["pipeline"], time.perf_counter() - start


def main(argv=None) -> dict:
  """``python -m kdt.bench``: see the module docstring."""
  parser = argparse.ArgumentParser(prog="python -m kdt.bench", description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="smoke run (LeNet only), < 2 min")
  parser.add_argument("--out", default="kdt_bench.json", help="JSON results file")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--models", default="", help="override the step section's models")
  parser.add_argument("--steps", type=int, default=0, help="override the timed rounds (>= 20)")
  parser.add_argument("--no_torch", action="store_true", help="kdt only")
  parser.add_argument("--device", action="store_true",
                      help="the tickets section on this machine's accelerator (GPU/TPU); refuses "
                           "to run on CPU")
  parser.add_argument("--ticket_models", default="", help="override the tickets section's models")
  parser.add_argument("--ticket_counts", default="", help="override its K's, e.g. 1,2,4")
  parser.add_argument("--quickstart_replicates", type=int, default=-1,
                      help="R of the quickstart replicates timing (0 = skip; default: the settings')")
  parser.add_argument("--host_devices", type=int, default=0,
                      help="host devices to start JAX with (0 = the most kdt's policy uses for "
                           "the models measured)")
  args = parser.parse_args(argv)
  settings = DEVICE if args.device else QUICK if args.quick else FULL
  if args.ticket_models:
    settings = dataclasses.replace(settings, ticket_models=tuple(args.ticket_models.split(",")))
  if args.quickstart_replicates >= 0:
    settings = dataclasses.replace(settings, ticket_quickstart_replicates=args.quickstart_replicates)
  if args.ticket_counts:
    settings = dataclasses.replace(
        settings, ticket_counts=tuple(int(k) for k in args.ticket_counts.split(",")))
  if args.models:
    models = tuple(args.models.split(","))
    settings = dataclasses.replace(settings, models=models, lever_models=models)
  if args.steps:
    settings = dataclasses.replace(settings, steps=args.steps, loop_chunks=args.steps,
                                   ticket_steps=args.steps)
  if args.no_torch:
    settings = dataclasses.replace(settings, torch_modes=(), loop_torch_modes=())
  sections = tuple(s for s in args.sections.split(",") if s)
  if args.device:
    import jax  # pylint: disable=import-outside-toplevel
    if jax.default_backend() == "cpu":
      print("kdt: error: --device needs a GPU or TPU backend; this machine has only the CPU "
            "(drop --device for the CPU figures).", file=sys.stderr)
      sys.exit(2)
    results = run(settings, ("tickets",), args.out)
  elif sections == ("pipeline",):
    # The quickstart on the devices `python -m kdt.main` gives it (LeNet: one).
    count = args.host_devices or host_devices.count_for(
        quickstart_config(settings.quickstart_overrides))
    host_devices.configure(count)
    results = run(settings, sections, args.out)
  else:
    count = args.host_devices or max(
        host_devices.auto_count(m, input_shape(m), (settings.batch_size,))
        for m in {*settings.models, *settings.loop_models, *settings.ticket_models})
    # Several host devices also let the tickets section's shard_map and the 1-device lever run.
    host_devices.configure(max(count, 2))
    inline = tuple(s for s in sections if s != "pipeline")
    results = run(settings, inline, None)
    if "pipeline" in sections:
      results["pipeline"], results["section_wall_s"]["pipeline"] = _pipeline_apart(args.quick)
      results["sections"].append("pipeline")
      results["bench_wall_s"] += results["section_wall_s"]["pipeline"]
    _write_json(results, args.out)
  print(format_table(results))
  print(f"\n(JSON: {args.out}; {results['bench_wall_s']:.0f} s)")
  return results


if __name__ == "__main__":
  main()

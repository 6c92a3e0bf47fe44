"""kdt.bench and kdt.bench_torch: the benchmark's machinery and the PyTorch twins' correctness.

No test here times anything: speed is what ``python -m kdt.bench`` measures. These tests check that
a tiny run produces every section with sane, finite figures, that the interleaving and the ratios
are computed as documented, and that the PyTorch twins compute what kdt computes from the same
weights (forward pass and one masked KD SGD step). PyTorch is the ``bench`` extra: the twin tests
are skipped without it.
"""

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdt import bench

TINY = bench.Settings(
    models=("lenet_300_100",), torch_modes=(), batch_size=32, warmup=0, steps=2,
    lever_models=("lenet_300_100",), loop_models=("lenet_300_100",), loop_chunk=2, loop_chunks=2,
    loop_torch_modes=(), loop_examples=256, torch_workers=0, ticket_models=("lenet_300_100",),
    ticket_counts=(1, 2), ticket_batch_size=16, ticket_steps=2, ticket_quickstart_replicates=0,
    ticket_strategies=("vmap", "lax_map", "shard_map", "sequential"),
    quickstart_overrides=(("train.num_steps", 20), ("imp.num_rounds", 1),
                          ("imp.recipes", ("lth", "kd")), ("imp.rewind_step", 0),
                          ("schedule.milestones", ()), ("train.eval_every_steps", 10),
                          ("train.log_every_steps", 10), ("train.checkpoint_every_steps", 10)),
    matmul_size=64)


def test_interleaving_runs_contenders_in_turn():
  calls = []
  times = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            warmup=1, steps=3)
  assert calls == ["a", "b"] * 4
  assert [len(v) for v in times.values()] == [3, 3]


def test_ratios_and_summaries():
  assert bench.paired_ratio([1.0, 2.0, 4.0], [2.0, 2.0, 12.0]) == 2.0  # per-round ratios 2, 1, 3
  s = bench.summary([0.1, 0.2, 0.3], images=64)
  assert s["median_s"] == pytest.approx(0.2) and s["images_per_s"] == pytest.approx(320.0)


def test_timing_is_exclusive_and_adds_up():
  """kdt.timing charges a nested block to its own category only (the bench's pipeline split)."""
  from kdt import timing
  timing.reset()
  with timing.timed("train_steps"):
    with timing.timed("data"):
      time.sleep(0.05)
    time.sleep(0.02)
  got = timing.snapshot()
  assert got["calls"] == {"data": 1, "train_steps": 1}
  assert got["seconds"]["data"] >= 0.05
  assert 0.02 <= got["seconds"]["train_steps"] < 0.05   # the nested 0.05 s is not counted twice
  timing.reset()


def test_kdt_step_variants_train_and_compile_once():
  problem = bench.make_problem("lenet_300_100", batch_size=16)
  for variant in bench.VARIANTS:
    run, info = bench.kdt_step(problem, variant, devices=1)
    run()
    assert info["traces"]["count"] == 1
    assert info["flops"] is None or info["flops"] > 0
  # The bench's inputs are not consumed by the donated steps.
  assert np.isfinite(np.asarray(problem.variables["params"]["head"]["kernel"])).all()


def test_tiny_run_writes_every_section(tmp_path):
  out = tmp_path / "bench.json"
  results = bench.run(TINY, out_path=str(out), log=lambda message: None)
  stored = json.loads(out.read_text())
  assert set(bench.SECTIONS) <= set(stored)
  assert stored["environment"]["cores"] >= 1 and stored["environment"]["versions"]["jax"]

  step = stored["step"]["lenet_300_100"]
  for variant in bench.VARIANTS:
    figure = step["contenders"][f"kdt/{variant}"]
    assert figure["n"] == TINY.steps and figure["images_per_s"] > 0
  assert "kdt/masked_kd/bf16" in step["contenders"]
  assert step["one_compile_per_variant"]
  assert math.isfinite(step["ratios"]["overhead/masked_kd_cached"])

  loop = stored["loop"]["lenet_300_100"]
  assert loop["contenders"]["kdt"]["images_per_s"] > 0 and loop["one_compile"]

  group = stored["tickets"]["models"]["lenet_300_100"]["K=2"]
  assert {"vmap", "lax_map", "sequential"} <= set(group["contenders"])
  assert group["auto_choice"] in ("vmap", "sequential", "lax_map", "shard_map")
  assert group["one_compile_per_strategy"]
  assert stored["tickets"]["models"]["lenet_300_100"]["K=1"]["throughput_vs_k1"]["vmap"] == 1.0
  assert group["throughput_vs_k1"]["vmap"] > 0 and group["throughput_vs_k1"]["sequential"] > 0
  one = stored["tickets"]["models"]["lenet_300_100"]["K=1"]["memory_bytes"]
  assert 0 < one["vmap"] < group["memory_bytes"]["vmap"]  # two tickets' states need more

  pipeline = stored["pipeline"]
  assert pipeline["wall_s"] > 0 and 0.0 <= pipeline["fraction_outside_steps"] <= 1.0
  for category in ("setup", "data", "compile", "train_steps", "eval", "checkpoints", "pruning",
                   "results_and_plots"):
    assert pipeline["seconds"][category] > 0, category   # recorded by the loop and the drivers
  assert pipeline["train_step_compiles"] == 2  # dense CE (shared by lth) + KD: one per variant

  flops = stored["flops"]
  assert flops["matmul_peak_flops_per_s"]["jax_float32"] > 0
  assert flops["peak_host_memory_gib"] > 0
  table = bench.format_table(results)
  assert "| lenet_300_100 (1 dev) | masked_kd |" in table and "Quickstart IMP" in table
  assert "K tickets at once: lenet_300_100" in table


def test_tickets_section_stops_starting_groups_when_its_budget_is_spent(tmp_path):
  """``--device`` must finish in its slot: past ``ticket_budget_s`` no (model, K) group starts,
  and the JSON and table say which were left out."""
  budget = dataclasses.replace(TINY, ticket_budget_s=1e-9, ticket_counts=(1, 2))
  messages = []
  out = bench.section_tickets(budget, messages.append)
  assert out["skipped"] == ["lenet_300_100 K=1", "lenet_300_100 K=2"] and out["models"] == {}
  assert any("skipped, the section has run" in m for m in messages)
  assert bench.DEVICE.ticket_budget_s and bench.DEVICE.ticket_models[0] == "resnet20"
  results = {"environment": bench.environment(), "tickets": out, "load_average_end": [0.0]}
  assert "Not measured (the section's time budget ran out): lenet_300_100 K=1" in \
      bench.format_table(results)


@pytest.mark.skipif(not os.environ.get("KDT_SLOW_TESTS"),
                    reason="three kdt.main processes (~1 min on 2 cores); set KDT_SLOW_TESTS=1")
def test_quickstart_replicates_times_one_command_against_separate_ones():
  tiny = ("--config.train.num_steps=20", "--config.imp.num_rounds=1", "--config.imp.rewind_step=0",
          "--config.imp.recipes=('lth',)", "--config.schedule.milestones=()",
          "--config.train.eval_every_steps=10")
  got = bench.quickstart_replicates(2, lambda message: None, overrides=tiny)
  assert got["together_wall_s"] > 0 and got["apart_wall_s"] > 0 and got["apart_cpu_s"] > 0
  assert got["wall_ratio"] == pytest.approx(got["together_wall_s"] / got["apart_wall_s"])


# ----- the PyTorch twins -------------------------------------------------------------------------

def _torch():
  return pytest.importorskip("torch", reason="PyTorch is the bench extra: pip install -e .[bench]")


@pytest.mark.parametrize("name,shape", [("lenet_300_100", (6, 6, 2)), ("conv2", (8, 8, 3)),
                                        ("resnet20", (8, 8, 3))])
def test_twin_computes_the_kdt_forward_pass(name, shape):
  _torch()
  from kdt import bench_torch as bt
  from kdt import models
  model = models.create_model(name, num_classes=10, input_shape=shape)
  variables = dict(model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
  variables = bench._with_perturbed_stats(variables)
  images = np.random.default_rng(0).normal(size=(8, *shape)).astype(np.float32)
  result = bt.agreement(name, model, variables, images, input_shape=shape, num_classes=10)
  bt.check_agreement(result, name)
  assert result["logit_scale"] > 0.0
  broken = dict(variables, params=jax.tree.map(lambda x: x * 1.5, variables["params"]))
  kdt_logits = np.asarray(model.apply(broken, images, train=False))
  twin = bt.create(name, shape, 10)
  bt.copy_from_kdt(twin, variables["params"], variables.get("batch_stats"))
  twin.eval()
  import torch
  with torch.no_grad():
    assert np.abs(twin(bt.nchw(images)).numpy() - kdt_logits).max() > 1e-3  # the check can fail


def test_twin_step_is_the_kdt_step():
  """One masked KD SGD step (momentum, weight decay) gives the same weights in both frameworks."""
  torch = _torch()
  from kdt import bench_torch as bt
  from kdt import models
  from kdt.train import losses, optim, steps
  from kdt.train.state import create_train_state
  shape, name = (8, 8, 3), "resnet20"
  model = models.create_model(name, num_classes=10, input_shape=shape)
  variables = dict(model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
  mask = bench.random_mask(variables["params"], jax.random.key(1), density=0.5)
  variables["params"] = steps.apply_mask(variables["params"], mask)  # pruned, as IMP leaves them
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, *shape)).astype(np.float32)
  labels = rng.integers(0, 10, 8).astype(np.int32)
  teacher = rng.normal(size=(8, 10)).astype(np.float32)
  direction = optim.make_direction("sgd", momentum=0.9, weight_decay=1e-4)
  schedule = optim.make_schedule("constant", learning_rate=0.1, num_steps=10)
  loss = losses.LossConfig(kd_alpha=0.9, kd_temperature=4.0)
  state = create_train_state(variables, direction)
  train_step = jax.jit(functools.partial(steps.train_step, model=model, direction=direction,
                                         schedule=schedule, loss=loss))
  for _ in range(2):  # two steps: the second one uses the momentum buffers
    state, metrics = train_step(state, mask, {"image": images, "label": labels}, teacher)

  twin = bt.create(name, shape, 10)
  bt.copy_from_kdt(twin, variables["params"], variables["batch_stats"])
  step = bt.make_step(twin, variant="masked_kd_cached", masks=bt.torch_masks(twin, mask),
                      kd_alpha=0.9, kd_temperature=4.0)
  for _ in range(2):
    torch_loss = step(bt.nchw(images), torch.from_numpy(labels.astype(np.int64)),
                      torch.from_numpy(teacher))
  assert torch_loss.item() == pytest.approx(float(metrics["loss"]), rel=1e-4)
  expected = bt.create(name, shape, 10)
  bt.copy_from_kdt(expected, state.params, state.batch_stats)
  got, want = twin.state_dict(), expected.state_dict()
  for key, value in want.items():
    if key.endswith(("weight", "bias")):
      np.testing.assert_allclose(got[key].numpy(), value.numpy(), atol=2e-5, err_msg=key)
  pruned = bt.torch_masks(twin, mask)
  assert pruned and all(float(torch.abs(got[k][m == 0]).max()) == 0.0 for k, m in pruned.items())


def test_torch_augmentation_matches_kdt_preprocessing():
  torch = _torch()
  from kdt import bench_torch as bt
  from kdt import data as data_lib
  from kdt.data import registry
  info = registry.dataset_info("cifar10")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  labels = np.arange(4, dtype=np.int32)
  plain = np.asarray(data_lib.preprocess(images, None, info=info, train=False, augment="none"))
  none = bt.AugmentedImages(images, labels, info.mean, info.std, "none")
  for i in range(4):
    np.testing.assert_allclose(none[i][0].numpy(), plain[i].transpose(2, 0, 1), atol=1e-5)
  # crop_flip: every output is one of the 9 x 9 x 2 crops / flips of the zero-padded image.
  augmented = bt.AugmentedImages(images, labels, info.mean, info.std, "crop_flip")
  zero = (0.0 - np.asarray(info.mean)) / np.asarray(info.std)
  padded = np.broadcast_to(zero, (4, 40, 40, 3)).copy()
  padded[:, 4:36, 4:36] = plain
  for i in range(4):
    x = augmented[i][0].numpy().transpose(1, 2, 0)
    candidates = [c for top in range(9) for left in range(9)
                  for c in (padded[i, top:top + 32, left:left + 32],
                            padded[i, top:top + 32, left:left + 32][:, ::-1])]
    assert min(np.abs(c - x).max() for c in candidates) < 1e-5
  assert torch.is_tensor(augmented[0][1])


def test_tiny_run_with_pytorch(tmp_path):
  _torch()
  settings = bench.Settings(
      models=("lenet_300_100",), torch_modes=("eager", "channels_last"), batch_size=16, warmup=0,
      steps=2, lever_models=(), loop_models=("lenet_300_100",), loop_chunk=2, loop_chunks=2,
      loop_torch_modes=("eager",), loop_examples=128, torch_workers=0)
  results = bench.run(settings, sections=("step", "loop"), log=lambda message: None)
  step = results["step"]["lenet_300_100"]
  assert step["agreement"]["train_max_abs"] < 1e-3
  for mode in ("eager", "channels_last"):
    for variant in bench.VARIANTS:
      assert step["contenders"][f"torch_{mode}/{variant}"]["images_per_s"] > 0
      assert step["ratios"][f"kdt_vs_torch_{mode}/{variant}"] > 0
  assert results["loop"]["lenet_300_100"]["ratios"]["kdt_vs_torch_eager"] > 0

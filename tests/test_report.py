"""TensorBoard files written by tensorboardX (no TensorFlow) are read by TensorBoard itself."""

import glob
import os
import sys

import pytest

from kdt import report

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _accumulator(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return acc


def test_event_file_is_read_by_tensorboard(tmp_path):
  writer = report.create_writer(str(tmp_path))
  writer.write_scalars(1, {"train/loss": 2.5, "eval/accuracy": 0.25})
  writer.write_scalars(7, {"train/loss": 1.25})
  writer.close()
  acc = _accumulator(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (7, 1.25)]
  assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(1, 0.25)]
  assert "tensorflow" not in sys.modules


def test_resume_with_purge_step_leaves_each_step_once(tmp_path):
  first = report.create_writer(str(tmp_path), purge_step=1)
  for step in range(1, 11):                      # killed at step 10, last checkpoint at step 5
    first.write_scalars(step, {"train/loss": float(step)})
  first.close()
  second = report.create_writer(str(tmp_path), purge_step=6)   # resumed from step 5
  for step in range(6, 13):
    second.write_scalars(step, {"train/loss": 100.0 + step})
  second.close()
  assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2   # never the same file
  points = [(e.step, e.value) for e in _accumulator(tmp_path).Scalars("train/loss")]
  assert [s for s, _ in points] == list(range(1, 13))
  assert dict(points)[5] == 5.0 and dict(points)[6] == 106.0


def test_config_is_logged_as_hyperparameters(tmp_path):
  from tensorboard.plugins.hparams import plugin_data_pb2
  config = {"optimizer": {"learning_rate": 0.05}, "imp": {"recipes": ["lth", "rewind"]},
            "experiment": "imp"}
  writer = report.create_writer(str(tmp_path), hparams=config)
  writer.write_scalars(1, {"eval/test_accuracy": 0.5})
  writer.close()
  acc = _accumulator(tmp_path)
  content = acc.PluginTagToContent("hparams")
  data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
  hparams = {k: v for k, v in data.session_start_info.hparams.items()}
  assert hparams["optimizer.learning_rate"].number_value == 0.05
  assert hparams["imp.recipes"].string_value == "('lth', 'rewind')"
  assert hparams["experiment"].string_value == "imp"


def test_imp_summary_is_one_file_rebuilt_each_time(tmp_path):
  rows = [{"round": 0, "recipe": "dense", "density": 1.0, "test_accuracy": 0.9},
          {"round": 1, "recipe": "lth", "density": 0.8, "test_accuracy": 0.85}]
  report.write_imp_tensorboard(str(tmp_path), rows[:1])
  report.write_imp_tensorboard(str(tmp_path), rows)
  logdir = tmp_path / "tensorboard" / "imp_summary"
  assert os.listdir(logdir) == ["events.out.tfevents.imp_summary"]
  acc = _accumulator(logdir)
  assert [(e.step, round(e.value, 4)) for e in acc.Scalars("lth/test_accuracy")] == [(1, 0.85)]
  assert [e.step for e in acc.Scalars("dense/test_accuracy")] == [0]


def test_no_hand_written_tfrecord_code_is_left():
  source = open(report.__file__, encoding="utf-8").read()
  assert "crc32c" not in source.lower() and "_varint" not in source


def test_resumed_training_run_shows_each_step_once(tmp_path, monkeypatch):
  """A run killed after its step-20 checkpoint wrote points up to step 25; the resumed run
  rewrites 21.. and TensorBoard shows every step once (the loop passes purge_step)."""
  from kdt.experiments import setup as setup_lib
  real_create, writers = report.create_writer, []

  def kept_writer(*args, **kwargs):
    writers.append(real_create(*args, **kwargs))
    return writers[-1]

  def close_writers():  # every written point on disk, as a long run's periodic flushes ensure
    while writers:
      writers.pop().close()

  monkeypatch.setattr(report, "create_writer", kept_writer)
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
  import quickstart  # pylint: disable=import-outside-toplevel
  config = quickstart.get_config()
  config.train.num_steps, config.train.batch_size = 30, 32
  config.train.checkpoint_every_steps, config.train.log_every_steps = 10, 5
  config.train.eval_every_steps, config.schedule.milestones = 15, (20,)
  workdir = str(tmp_path)
  dataset = setup_lib.load_data(config)

  class Killed(Exception):
    pass

  class KillAt28:
    def __getattr__(self, name):
      return getattr(dataset, name)

    def train_batch(self, step, *args, **kwargs):
      if step == 28:
        raise Killed()
      return dataset.train_batch(step, *args, **kwargs)

  def train(data):
    setup = setup_lib.Setup.build(config, workdir, dataset=data)
    return setup.trainer.train(setup.dense)

  with pytest.raises(Killed):
    train(KillAt28())
  close_writers()
  before = [e.step for e in _accumulator(tmp_path / "tensorboard" / "dense").Scalars("train/loss")]
  assert before == [5, 10, 15, 20, 25]
  train(dataset)
  close_writers()
  acc = _accumulator(tmp_path / "tensorboard" / "dense")
  assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]
  assert [e.step for e in acc.Scalars("eval/test_accuracy")] == [15, 30]


def _captured(monkeypatch):
  figures = []
  monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
  return figures


def test_layer_density_legend_shows_every_round_outside_the_panels(monkeypatch, tmp_path):
  figures = _captured(monkeypatch)
  densities = {name: {r: {"fc1/kernel": 0.8 ** r, "fc2/kernel": 0.7 ** r, "head/kernel": 1.0}
                      for r in range(1, 11)} for name in ("lth", "rewind")}
  report.plot_layer_density(densities, str(tmp_path / "d.png"), title="a long title " * 4)
  (fig,) = figures
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  (legend,) = fig.legends
  assert [t.get_text() for t in legend.get_texts()] == [f"round {r}" for r in range(1, 11)]
  box = legend.get_window_extent(renderer)
  for ax in fig.axes:
    assert not box.overlaps(ax.get_window_extent(renderer))
    assert not fig._suptitle.get_window_extent(renderer).overlaps(  # pylint: disable=protected-access
        ax.title.get_window_extent(renderer))
  colours = {tuple(line.get_color()) for line in fig.axes[0].get_lines()}
  assert len(colours) == 10


def test_accuracy_plot_error_bars_are_explained_and_controls_dashed(monkeypatch, tmp_path):
  figures = _captured(monkeypatch)
  rows = [{"round": r, "recipe": recipe, "density": 0.8 ** r, "test_accuracy": 0.9 - 0.01 * i,
           "replicate": i}
          for i in range(3) for r in (1, 2) for recipe in ("lth", "random_reinit")]
  rows += [{"round": 0, "recipe": "dense", "density": 1.0, "test_accuracy": 0.95, "replicate": i}
           for i in range(3)]
  report.plot_accuracy_vs_weights(rows, str(tmp_path / "a.png"))
  (fig,) = figures
  caption = " ".join(t.get_text() for t in fig.texts)
  assert "mean over 3 replicates" in caption and "standard deviation" in caption
  lines = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}
  assert lines["random_reinit"].get_linestyle() == "--" and lines["lth"].get_linestyle() == "-"
  assert report.recipe_style("random_reinit") == report.recipe_style("random_reinit")
  assert report.recipe_style("random_prune")["linestyle"] == "--"
  assert report.recipe_style("lth")["color"] != report.recipe_style("rewind")["color"]


def _imp_rows(ignored: int, prunable: int = 1000, metric: str = "final"):
  """IMP rows whose ``density_all_weights`` counts ``ignored`` never-pruned weights."""
  rows = []
  for r in range(4):
    kept = round(prunable * 0.8 ** r)
    rows.append({"round": r, "recipe": "dense" if r == 0 else "lth", "density": kept / prunable,
                 "density_all_weights": (kept + ignored) / (prunable + ignored),
                 "weights_prunable": prunable, "test_accuracy": 0.5,
                 "reported_test_accuracy": 0.9 - 0.01 * r, "report_metric": metric})
  return rows


def test_accuracy_plot_labels_both_densities_and_the_reported_protocol(monkeypatch, tmp_path):
  figures = _captured(monkeypatch)
  rows = _imp_rows(ignored=250, metric="best_val")
  report.plot_accuracy_vs_weights(rows, str(tmp_path / "a.png"))
  (fig,) = figures
  ax = fig.axes[0]
  assert "prunable" in ax.get_xlabel()
  (top,) = ax.child_axes
  assert "all weight matrices" in top.get_xlabel()
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  FigureCanvasAgg(fig).draw()
  bottom = [float(t.get_text()) for t in ax.get_xticklabels()]
  labels = [float(t.get_text()) for t in top.get_xticklabels()]
  by_density = {round(100 * r["density"], 1): 100 * r["density_all_weights"] for r in rows}
  assert len(labels) == len(bottom) == 4
  for b, t in zip(bottom, labels):
    assert t == pytest.approx(by_density[b], rel=2e-3)
  # The y values are the protocol's accuracy, and the y label names the protocol.
  lth = next(c for c in ax.containers if c.get_label() == "lth")
  assert list(lth.lines[0].get_ydata()) == pytest.approx([90.0, 89.0, 88.0, 87.0])
  assert "best validation" in ax.get_ylabel()


def test_accuracy_plot_without_unpruned_layers_has_one_density_axis(monkeypatch, tmp_path):
  figures = _captured(monkeypatch)
  report.plot_accuracy_vs_weights(_imp_rows(ignored=0), str(tmp_path / "a.png"))
  (fig,) = figures
  assert not fig.axes[0].child_axes
  assert "= percent of all weight matrices" in fig.axes[0].get_xlabel()

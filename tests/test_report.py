"""TensorBoard event files written without TensorFlow are readable by TensorBoard."""

import glob

import pytest

from kdt import report


def test_crc32c_known_vector():
  # RFC 3720 test vector: 32 bytes of zeros.
  assert report.crc32c(bytes(32)) == 0x8A9136AA
  assert report.crc32c(b"123456789") == 0xE3069283


def test_event_file_is_read_by_tensorboard(tmp_path):
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  writer = report.EventFileWriter(str(tmp_path))
  writer.write_scalars(1, {"train/loss": 2.5, "eval/accuracy": 0.25})
  writer.write_scalars(7, {"train/loss": 1.25})
  writer.close()
  acc = event_accumulator.EventAccumulator(glob.glob(str(tmp_path / "events.out.tfevents.*"))[0])
  acc.Reload()
  loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
  assert loss == [(1, 2.5), (7, 1.25)]
  assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(1, 0.25)]

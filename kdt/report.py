"""Reporting at the edges: metric writers (log + TensorBoard without TensorFlow).

TensorBoard reads TFRecord files of serialized ``Event`` protocol buffers. Scalars need only three
tiny messages, so :class:`EventFileWriter` encodes them by hand (no TensorFlow, no protobuf
dependency); the files open in a stock ``tensorboard --logdir``. (clu's ``metric_writers`` package
imports TensorFlow when imported, so kdt's writers follow clu's ``MetricWriter`` method names —
``write_scalars``, ``flush``, ``close`` — without importing it.)
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any, Mapping

import logging
import sys

from absl import logging as absl_logging

# ---------------------------------------------------------------------------------------------
# TFRecord framing and the Event proto, by hand.


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """Frames one record: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float) -> bytes:
  """Serializes ``Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value)...]))``."""
  values = b"".join(
      _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
      for tag, v in scalars.items())
  return (_field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step))) +
          _length_delimited(5, values))


def version_event(wall_time: float) -> bytes:
  return _field(1, 1, struct.pack("<d", wall_time)) + _length_delimited(3, b"brain.Event:2")


class EventFileWriter:
  """Writes scalar TensorBoard event files without TensorFlow (clu ``MetricWriter`` method names).

  Args:
    logdir: directory for the ``events.out.tfevents.*`` file (created if missing).
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(version_event(time.time())))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    self._file.write(tfrecord(scalar_event(step, scalars, time.time())))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


class LoggingWriter:
  """Logs scalars through absl (what clu's ``LoggingWriter`` does)."""

  def __init__(self, prefix: str = ""):
    self.prefix = prefix

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(scalars.items()))
    logging.getLogger("kdt").info("%s[%d] %s", self.prefix, step, values)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter:
  """Fans scalars out to several writers."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def create_writer(logdir: str | None, *, just_logging: bool = False) -> MultiWriter:
  """A TensorBoard event writer (on process 0, when ``logdir`` is set).

  The progress line of the training loop already logs every metric, so the writer adds a
  :class:`LoggingWriter` only where no event file is written (other processes).
  """
  if logdir and not just_logging:
    return MultiWriter([EventFileWriter(logdir)])
  return MultiWriter([LoggingWriter()])


def setup_logging() -> None:
  """kdt's own messages (progress, evaluations) go to stdout; library chatter (Orbax) is silenced.

  Idempotent, so a notebook can call :func:`kdt.experiment.run` repeatedly.
  """
  logger = logging.getLogger("kdt")
  logger.setLevel(logging.INFO)
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
  absl_logging.set_verbosity(absl_logging.WARNING)

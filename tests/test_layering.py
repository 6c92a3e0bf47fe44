"""The layering contract (``.importlinter``) holds: imports point down the four floors, no circles."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_linter_contracts_are_kept():
  """``lint-imports`` with the repo's contract; it fails on the pre-``kdt.experiments`` layout
  (``kdt.analysis.experiments`` importing the edges, ``kdt.experiment`` <-> ``kdt.tickets``)."""
  exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
  if not os.path.exists(exe):
    pytest.fail("lint-imports is not installed: pip install -e '.[test]' (import-linter)")
  out = subprocess.run([exe, os.path.join(REPO, ".importlinter"), "--no-cache", "--no-logo"],
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
  assert "2 kept, 0 broken" in out.stdout

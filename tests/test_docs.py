"""The methods notes the configs cite ship with kdt, and every citation points at a real section."""

import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sources():
  for path in glob.glob(os.path.join(REPO, "configs", "*.py")) + glob.glob(
      os.path.join(REPO, "kdt", "**", "*.py"), recursive=True):
    with open(path, encoding="utf-8") as f:
      yield os.path.relpath(path, REPO), f.read()


def test_configs_cite_the_shipped_methods_notes():
  for path, text in _sources():
    if path.startswith("configs"):
      assert not re.search(r"(?<![/\w])METHODS(\.md| §)", text), path


def test_every_methods_citation_names_an_existing_section():
  with open(os.path.join(REPO, "docs", "methods.md"), encoding="utf-8") as f:
    headings = " ".join(l for l in f.read().splitlines() if l.startswith("#"))
  sections = set(re.findall(r"§(\d+(?:\.\d+)?)", headings))
  cited = 0
  for path, text in _sources():
    for match in re.finditer(r"docs/methods\.md`*((?:[ ,/]*§[0-9.a-z]+(?:-[0-9.]+)?)+)", text):
      for ref in re.findall(r"§([0-9.]+\d)", match.group(1)):
        cited += 1
        assert ref in sections, (path, ref)
  assert cited >= 30


def test_every_file_the_readme_links_ships_with_kdt():
  """The README's images and linked files (``docs/...``, ``configs/...``) exist in the repo."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  targets = set(re.findall(r"\]\(((?:docs|configs|launch|kdt|tests)/[^)#\s]+)\)", text))
  targets |= set(re.findall(r"`((?:docs|configs)/[\w./-]+\.(?:png|json|py|md))`", text))
  assert len(targets) >= 5
  missing = sorted(t for t in targets if not os.path.exists(os.path.join(REPO, t)))
  assert not missing, missing

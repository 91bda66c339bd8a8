"""Shared pytest fixtures.

Qt runs offscreen unless the caller chose a platform: phy's GUI tests need no display.
"""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The project's top-level modules, importable without installing the project.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import phy_bc_reason_demo  # noqa: E402

# phy 2.0's tables are QtWebEngine pages, and QtWebEngine must be imported before the
# QApplication exists (pytest-qt creates it before the first GUI test imports phy).  phy 2.1
# environments have no QtWebEngine: nothing to do there.
try:
    import PyQt5.QtWebEngineWidgets  # noqa: E402,F401
except ImportError:
    pass


# -- demo datasets with real bombcell results ----------------------------------------------------
# Built once per session (a few seconds each, ~260 MB of raw data each).  The folder name holds a
# space and a non-ASCII letter so that every path handling in the project gets exercised.
# Tests must not modify these folders: copy them first (e.g. shutil.copytree with
# copy_function=os.link for the big raw file).

def _demo(tmp_path_factory, name, split):
    path = tmp_path_factory.mktemp(name) / "demo dataß"
    phy_bc_reason_demo.make_dataset(path)
    phy_bc_reason_demo.run_bombcell(path, split_non_somatic=split)
    return path


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """Demo Kilosort 4 dataset + bombcell results (labels GOOD, MUA, NOISE, NON-SOMA, "")."""
    return _demo(tmp_path_factory, "demo", split=False)


@pytest.fixture(scope="session")
def demo_dataset_split(tmp_path_factory):
    """The same dataset, bombcell run with splitGoodAndMua_NonSomatic (NON-SOMA GOOD / MUA)."""
    return _demo(tmp_path_factory, "demo_split", split=True)

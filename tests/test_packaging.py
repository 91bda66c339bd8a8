"""The installed distribution: metadata, pins and the ``phy-bc-reason`` console script.

These run against what ``pip install -e .[test]`` (``make test``) put in the environment, so a
broken setup.cfg, a renamed ``main`` or a lost pin fails here rather than on a user's machine.
"""
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

DIST = "phy-bc-reason"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist():
    try:
        return metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{DIST} is not installed here; run `make test` (pip install -e '.[test]')")


def requirement_names(dist, extra=None):
    """{lower-case name: specifier text} of the requirements, of the base or of one extra."""
    out = {}
    for req in dist.requires or []:
        spec, _, marker = req.partition(";")
        in_extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if (in_extra.group(1) if in_extra else None) != extra:
            continue
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*(.*)", spec)
        out[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "").strip("()")
    return out


def test_console_script_entry_point(dist):
    eps = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert {ep.name: ep.value for ep in eps} == {"phy-bc-reason": "phy_bc_reason_plugin:main"}
    main = eps[0].load()
    assert callable(main)
    import phy_bc_reason_plugin
    assert main is phy_bc_reason_plugin.main


def test_version_is_the_module_version(dist):
    import phy_bc_reason_plugin
    assert dist.version == phy_bc_reason_plugin.__version__


def test_requirements_and_pins(dist):
    base = requirement_names(dist)
    assert {"numpy", "pandas", "pyarrow", "bombcell", "phy", "pyqt5"} <= set(base)
    assert base["phy"] == "==2.1.*"
    assert base["pyqt5"] == "==5.15.*"
    assert base["bombcell"] == ">=0.94"
    # only phy and PyQt5 are pinned
    assert {n for n, s in base.items() if "==" in s} == {"phy", "pyqt5"}
    assert set(requirement_names(dist, "test")) >= {"pytest", "pytest-qt", "hypothesis"}
    assert dist.metadata["Requires-Python"] == ">=3.10"


def test_installed_versions_satisfy_pins():
    assert metadata.version("phy").startswith("2.1.")
    assert metadata.version("PyQt5").startswith("5.15.")


def test_console_script_runs():
    """The script pip generated in this environment's bin/ runs the CLI."""
    script = Path(sysconfig.get_path("scripts")) / "phy-bc-reason"
    assert script.is_file() and os.access(script, os.X_OK), script
    env = dict(os.environ, PATH=f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(["phy-bc-reason", "--help"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: phy-bc-reason")
    for command in ("export", "explain", "rules", "install", "demo"):
        assert command in out.stdout
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().endswith(metadata.version(DIST))


def test_python_m_runs_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "phy_bc_reason_plugin", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: phy-bc-reason")

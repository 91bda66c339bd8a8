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
    """No pin and no upper bound: installing must never replace a lab's phy or numpy."""
    base = requirement_names(dist)
    assert base == {"numpy": "", "pyarrow": "", "phy": ">=2.0b5"}
    assert requirement_names(dist, "demo") == {"bombcell": ">=0.94"}
    assert set(requirement_names(dist, "pandas")) == {"pandas"}
    assert set(requirement_names(dist, "test")) >= {"bombcell", "pandas", "pytest", "pytest-qt",
                                                    "hypothesis", "vermin"}
    assert dist.metadata["Requires-Python"] == ">=3.8"


def test_license_and_classifiers(dist):
    assert dist.metadata["License"] == "BSD-3-Clause"
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
    classifiers = dist.metadata.get_all("Classifier")
    # the Python versions the tests run the project on: this one
    tested = "Programming Language :: Python :: %d.%d" % sys.version_info[:2]
    assert tested in classifiers, f"the tests run on this Python: add {tested!r} to setup.cfg"
    assert [c for c in classifiers if c.count("::") == 2 and "Python :: 3." in c] == [tested]


def _expected_environment():
    """{distribution: version pattern} that `make test` installed here: the phy 2.0b5 environment
    of tests/envs/phy-2.0b5.txt when PHY_BC_REASON_ENV names it, else phy 2.1."""
    env = os.environ.get("PHY_BC_REASON_ENV", "")
    if not env:
        return {"phy": "2.1.*"}
    pins = {}
    for line in (ROOT / "tests" / "envs" / f"{env}.txt").read_text().splitlines():
        m = re.match(r"\s*([A-Za-z0-9._-]+)==(\S+)", line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def test_installed_versions_are_the_tested_environment():
    """What the compatibility table in the README says the tests ran with."""
    for name, pattern in _expected_environment().items():
        version = metadata.version(name)
        assert re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), version), (name, version)


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
def test_pip_install_replaces_nothing_installed(tmp_path):
    """``pip install --dry-run .`` here (make test runs it in its phy 2.1 and phy 2.0b5
    environments) would install no other version of anything installed: phy and numpy above all
    (this once replaced phy 2.0b5 by 2.1 and numpy 1.23 by 2.x)."""
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--progress-bar", "off",
         "--report", str(report), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    import json
    would = {_canonical(item["metadata"]["name"]): item["metadata"]["version"]
             for item in json.loads(report.read_text())["install"]}
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    replaced = {name: f"{installed[name]} -> {version}" for name, version in would.items()
                if name in installed and name != DIST and installed[name] != version}
    assert replaced == {}
    assert installed["phy"] not in ("", None) and "phy" not in would and "numpy" not in would


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

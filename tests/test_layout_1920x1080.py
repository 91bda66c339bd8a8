"""Issue 9's measure: phy's default layout at 1920x1080 under Xvfb, layout untouched, on a
dataset with a few dozen clusters, in the running phy: 2.1 (Qt tables) or 2.0 (HTML tables,
measured from their pages' DOM).  Items 1 (cluster view columns), 3 (reason view: no sideways
scroll, no jump, window within the screen) and 4 (no shortcut clashes).

The GUI runs in a subprocess under ``xvfb-run`` (tests/layout_probe.py), so that the rest of the
suite stays on the offscreen platform, which has no screen to lay windows out on.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import phy_bc_reason_demo
import phy_bc_reason_plugin as pr

pytestmark = [pytest.mark.gui,
              pytest.mark.skipif(shutil.which("xvfb-run") is None,
                                 reason="needs Xvfb (xvfb-run): `make screenshot-deps` installs it")]

PROBE = Path(__file__).with_name("layout_probe.py")
SCREEN = (1920, 1080)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    dataset = tmp_path_factory.mktemp("layout") / "demo40"
    phy_bc_reason_demo.make_dataset(dataset, n_units=40)
    phy_bc_reason_demo.run_bombcell(dataset)
    result = pr.classify_dataset(dataset)
    ids = [int(c) for c, label in zip(result.cluster_ids, result.label) if label]
    failing = sorted(ids, key=lambda c: -int(result.n_failing[result.row(c)]))
    selections = [[failing[0]], [failing[1]], failing[:2], failing[:3], failing[:4]]
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)  # a real (virtual) X screen
    env["PYTHONPATH"] = os.pathsep.join([str(Path(pr.__file__).parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", sys.executable,
         str(PROBE), str(dataset)] + [",".join(map(str, s)) for s in selections],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), len(result)


def visible(table, name):
    column = next(c for c in table["columns"] if c["name"] == name)
    return 0 <= column["x"] and column["x"] + column["width"] <= table["viewport_width"] + 1


def test_item1_cluster_view_shows_id_reason_fr_n_spikes(measured):
    out, n_units = measured
    assert out["screen"] == list(SCREEN) and n_units >= 30
    table = out["cluster_view"]
    for name in ("id", pr.COLUMN, "fr", "n_spikes"):
        assert visible(table, name), (name, table)
    reason = next(c for c in table["columns"] if c["name"] == pr.COLUMN)
    assert reason["width"] >= reason["needed"]  # the text is not cut short
    assert reason.get("wrapped_cells", 0) == 0  # phy 2.0's HTML table: nor wrapped
    after = out["cluster_view_after"]
    if "sideways_scroll" not in table:  # phy 2.1's Qt table: selecting changes nothing
        assert after == table
    else:  # phy 2.0 scrolls the selected row into view, which can move the page sideways by
        # its margin (12 px): no column changes width, and the four stay in view
        assert [(c["name"], c["width"]) for c in after["columns"]] == \
            [(c["name"], c["width"]) for c in table["columns"]]
        for name in ("id", pr.COLUMN, "fr", "n_spikes"):
            assert visible(after, name), (name, after)


def test_item3_reason_view_no_sideways_scroll_no_jump(measured):
    out, _ = measured
    width = out["view_width_before_selection"]
    assert width >= 230
    for selection in out["selections"]:
        assert selection["view_sideways_scroll"] == 0, selection
        assert selection["view_width"] == width, selection  # no layout jump
        assert selection["window_width"] <= SCREEN[0], selection


def test_item4_no_shortcut_clashes(measured):
    out, _ = measured
    owners = out["shortcuts"]
    assert "menu Bombcell" in owners["Alt+B"]
    assert owners["Ctrl+Alt+B"] == ["Show criteria of selected cluster"]
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}

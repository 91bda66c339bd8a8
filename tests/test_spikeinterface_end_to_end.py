"""End to end, the SpikeInterface route: a ground-truth recording, a sorting analyzer,
``export_to_phy``, bombcell's ``run_bombcell_qc`` into the phy folder's ``bombcell/``; then the
CLI and the plugin in phy's real Template GUI.  The labels must equal the saved CSV's."""
import json
import time

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
import spikeinterface_data as sid
from test_phy_plugin import Phy, column_values, copy_dataset, select, view_of


@pytest.fixture(scope="session")
def si_phy_dataset(tmp_path_factory):
    """The SI-made phy folder, built once per session (~8 s, ~1.5 MB; figures printed)."""
    sid.spikeinterface_or_skip()
    folder = tmp_path_factory.mktemp("si") / "phy folder ß"
    t = time.perf_counter()
    times = sid.make_si_phy_dataset(folder)
    print(f"SI end-to-end dataset: {time.perf_counter() - t:.1f} s "
          + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return folder


@pytest.fixture
def phy(qtbot, tmp_path):
    p = Phy(qtbot, tmp_path / "phy_config_dir")
    yield p
    p.close_all()


def saved_labels(folder):
    """{phy cluster id: label} from run_bombcell_qc's wide CSV, through export_to_phy's map."""
    import pandas as pd
    wide = pd.read_csv(folder / "bombcell" / pr.SI_WIDE_CSV, index_col=0)
    ids = pd.read_csv(folder / pr.SI_UNIT_ID_MAP, sep="\t")
    cluster_of = dict(zip(ids["si_unit_id"].astype(str), ids["cluster_id"]))
    return {int(cluster_of[str(u)]): pr.SI_LABEL_NAMES[label]
            for u, label in zip(wide.index, wide["label"])}


def test_labels_equal_the_saved_csv(si_phy_dataset):
    result = pr.classify_dataset(si_phy_dataset)
    assert result.route == "spikeinterface"
    saved = saved_labels(si_phy_dataset)
    assert dict(zip(result.cluster_ids.tolist(), result.label.tolist())) == saved
    assert len(set(saved.values())) >= 3  # the run gives several labels (GOOD, MUA, NON-SOMA)
    assert not result.label_differs.any()
    for label, reason in zip(result.label, result.reason):
        assert reason.startswith(f"{label}: ")
    assert not pr.foreign_results_problem(result, si_phy_dataset)


def test_cli_explain_export_on_the_si_run(si_phy_dataset, tmp_path, capsys):
    dataset = copy_dataset(si_phy_dataset, tmp_path)
    result = pr.classify_dataset(dataset)
    assert pr.main(["explain", str(dataset), "--json"]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {o["cluster_id"]: o["label"] for o in objects} == saved_labels(dataset)
    mua = next(o for o in objects if o["label"] == "MUA")
    for c in mua["criteria"]:  # SpikeInterface's names: the CSV's column, section.metric.side
        section, metric, side = c["param"].split(".")
        assert section in pr.SI_SECTIONS and metric == c["metric"] and side in ("greater", "less")
        assert c["op"] == {"greater": "<", "less": ">"}[side]
    assert any(c["decisive"] and c["stage"] == "mua" for c in mua["criteria"])
    assert pr.main(["explain", str(dataset), "--cluster", str(mua["cluster_id"])]) == 0
    text = capsys.readouterr().out
    assert mua["reason"] in text and "mua." in text

    assert pr.main(["export", str(dataset)]) == 0
    from phylib.io.model import load_model
    model = load_model(dataset / "params.py")
    try:
        column = model.metadata[pr.COLUMN]
    finally:
        model.close()
    assert column == result.reason_by_cluster()


@pytest.mark.gui
def test_phy_shows_the_si_reasons(phy, si_phy_dataset, tmp_path):
    dataset = copy_dataset(si_phy_dataset, tmp_path)
    result = pr.classify_dataset(dataset)
    controller, gui = phy.open(dataset)
    shown = column_values(controller.supervisor.cluster_view)
    assert shown == result.reason_by_cluster()
    failing = [c for c in result.cluster_ids.tolist() if result.decisive[:, result.row(c)].any()]
    cluster_id = failing[0]
    select(controller, [cluster_id])
    text = view_of(gui).toPlainText()
    info = result.explain(cluster_id)
    assert info["reason"] in text
    for c in info["criteria"]:
        if c["decisive"]:
            assert c["param"] in text.replace("\n", "").replace(" ", "") or c["short"] in text


@pytest.mark.gui
def test_phy_shows_an_si_folder_in_every_phy(phy, demo_dataset, tmp_path):
    """The SI route in the GUI of both phy 2.1 and phy 2.0b5 (SpikeInterface does not install
    in the latter: the folder is written with the csv module, see spikeinterface_data)."""
    import shutil
    dataset = copy_dataset(demo_dataset, tmp_path)
    shutil.rmtree(dataset / "bombcell")
    saved = sid.write_si_folder_without_spikeinterface(dataset)
    result = pr.classify_dataset(dataset)
    assert result.route == "spikeinterface" and not result.label_differs.any()
    assert {c: pr.SI_LABEL_NAMES[s] for c, s in saved.items()} == dict(
        zip(result.cluster_ids.tolist(), result.label.tolist()))
    controller, gui = phy.open(dataset)
    assert column_values(controller.supervisor.cluster_view) == result.reason_by_cluster()
    mua = [c for c in result.cluster_ids.tolist() if result.label[result.row(c)] == "MUA"]
    noise = [c for c in result.cluster_ids.tolist() if result.label[result.row(c)] == "NOISE"]
    select(controller, [mua[0]])
    text = view_of(gui).toPlainText()
    assert result.reason[result.row(mua[0])] in text and "mua." in text
    select(controller, [mua[0], noise[0]])  # side by side: rows from the SI rule table
    text = view_of(gui).toPlainText()
    assert all(result.reason[result.row(c)] in text for c in (mua[0], noise[0]))

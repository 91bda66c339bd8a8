"""The what-if, the summary, the metric view and the re-run in phy's real Template GUI
(offscreen), with real bombcell for the re-run."""
import json
import time

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from test_phy_plugin import (column_values, copy_dataset, phy, read_reason_tsv,  # noqa: F401
                             select, snapshot, view_of)

pytestmark = pytest.mark.gui


@pytest.fixture
def dataset(demo_dataset, tmp_path):
    return copy_dataset(demo_dataset, tmp_path)


def test_bcset_shows_the_what_if_and_bcreset_restores_exactly(phy, dataset):
    controller, gui = phy.open(dataset)
    s, plugin = controller.supervisor, controller.bombcell_reason
    before = column_values(s.cluster_view)
    real = pr.classify_dataset(dataset)
    select(controller, [int(real.cluster_ids[0])])
    view_before = view_of(gui).toHtml()

    gui.snippets.run(":bcset maxRPVviolations 0.5")
    gui.snippets.run(":bcset minNumSpikes 10")  # cumulative
    s.block()
    expected = real.what_if({"maxRPVviolations": 0.5, "minNumSpikes": 10})
    shown = column_values(s.cluster_view)
    for cluster_id, reason in expected.reason_by_cluster().items():
        if cluster_id in shown:
            assert shown[cluster_id] == pr.WHATIF_PREFIX + reason
    assert gui.status_message.startswith("WHAT-IF maxRPVviolations=0.5 (saved 0.1), "
                                         "minNumSpikes=10 (saved 300): ")
    assert "WHAT-IF" in view_of(gui).toPlainText()
    assert plugin.whatif_changes == {"maxRPVviolations": 0.5, "minNumSpikes": 10.0}

    # A bad value: one line, nothing changes.
    gui.snippets.run(":bcset maxRPVviolations lots")
    assert "bad value for threshold maxRPVviolations" in gui.status_message
    assert column_values(s.cluster_view) == shown

    gui.snippets.run(":bcreset")
    s.block()
    assert column_values(s.cluster_view) == before
    assert plugin.whatif_changes == {}
    select(controller, [int(real.cluster_ids[0])])
    assert view_of(gui).toHtml() == view_before


def test_saving_during_a_what_if_writes_the_real_reasons(phy, dataset):
    controller, gui = phy.open(dataset)
    s, plugin = controller.supervisor, controller.bombcell_reason
    gui.snippets.run(":bcset minNumSpikes 100000")  # every unit MUA at least
    select(controller, list(s.clustering.cluster_ids[:2]))
    s.actions.merge()
    s.block()
    s.save()
    written = read_reason_tsv(dataset / pr.TSV_NAME)
    real = plugin.real_book
    assert written == real.reasons(s.clustering.cluster_ids)
    assert not any(text.startswith(pr.WHATIF_PREFIX) for text in written.values())
    assert any(text.startswith(pr.WHATIF_PREFIX) for text in column_values(s.cluster_view).values())


def test_save_whatif_params(phy, dataset):
    controller, gui = phy.open(dataset)
    gui.snippets.run(":bcset minSpatialDecaySlope m0.02")  # phy reads "-" as a range: m for minus
    gui.snippets.run(":bcset computeDrift true")
    gui.snippets.run(":bcsave")
    path = dataset / pr.WHATIF_PARAMS_NAME
    assert json.loads(path.read_text()) == {"minSpatialDecaySlope": -0.02, "computeDrift": True}
    assert "what-if parameters written" in gui.status_message


def test_summary_action(phy, dataset):
    controller, gui = phy.open(dataset)
    plugin = controller.bombcell_reason
    gui.snippets.run(":bcsum")
    views = gui.list_views(pr.SUMMARY_VIEW_NAME)
    assert len(views) == 1
    text = views[0].toPlainText()
    summary = pr.classify_dataset(dataset).summary()
    assert pr.format_summary(summary).splitlines()[2].strip() in text
    assert gui.status_message.startswith("bombcell summary: ")
    gui.snippets.run(":bcset maxRPVviolations 0.5")
    assert "WHAT-IF" in views[0].toPlainText()
    assert plugin.summary_views == views


def test_metric_view_follows_the_selection_and_the_what_if(phy, dataset):
    controller, gui = phy.open(dataset)
    assert pr.METRIC_VIEW_NAME in controller.view_creator
    real = pr.classify_dataset(dataset)
    gui.snippets.run(":bcplot")
    views = gui.list_views(pr.METRIC_VIEW_NAME)
    assert len(views) == 1
    view = views[0]
    mua = [int(c) for c in real.cluster_ids[real.label == "MUA"]]
    select(controller, [mua[0]])
    unit = real.row(mua[0])
    deciding = int(np.flatnonzero(real.decisive[:, unit])[0])
    assert view.rule_index == deciding
    rule = pr.RULES[deciding]
    assert rule.metric in view.status and rule.param in view.status  # the dock's status line
    assert f"cluster {mua[0]}: {pr.format_number(real.values[deciding, unit])}" in view.status
    # what is drawn: every labelled unit with a finite value, failing ones apart
    i = deciding
    labelled = ~np.isnan(real.codes)
    finite = np.isfinite(real.values[i, labelled])
    assert view.data["hist_fail"].sum() == (real.fails[i, labelled] & finite).sum()
    assert view.data["hist_fail"].sum() + view.data["hist_pass"].sum() == finite.sum()
    assert view.data["threshold"] == real.thresholds[i]
    assert view.data["selected"][0][:2] == (mua[0], real.values[i, unit])
    # a criterion picked in the menu stays, whatever the selection
    other = [i for i, r in enumerate(pr.RULES) if r.param == "minPresenceRatio"][0]
    view.actions.get(f"show {pr.RULES[other].name}").trigger()
    select(controller, [int(real.cluster_ids[1])])
    assert view.rule_index == other and "minPresenceRatio" in view.status
    gui.snippets.run(":bcset minPresenceRatio 0.9")
    assert "minPresenceRatio = 0.9" in view.status and "WHAT-IF" in view.status
    view.actions.get("follow the selection").trigger()
    select(controller, [mua[0]])
    whatif = real.what_if({"minPresenceRatio": 0.9})
    assert view.rule_index == pr.default_rule_index(whatif, [mua[0]])


def test_rerun_refused_with_unsaved_changes(phy, dataset):
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    before = snapshot(dataset)
    select(controller, list(s.clustering.cluster_ids[:2]))
    s.actions.merge()
    s.block()
    gui.snippets.run(":bcrun")
    assert "refused: the clustering has unsaved changes" in gui.status_message
    assert controller.bombcell_reason.run is None
    assert {k: v for k, v in snapshot(dataset).items() if "phy" not in k and not k.startswith(".")} \
        == {k: v for k, v in before.items() if "phy" not in k and not k.startswith(".")}


def _run_and_measure(qtbot, plugin, start):
    """Start a re-run and record the longest gap between ticks of a 20 ms Qt timer until it ends."""
    from PyQt5.QtCore import QTimer
    ticks = [time.perf_counter()]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    try:
        run = start()
        assert run is not None
        qtbot.waitUntil(lambda: not run.running, timeout=300_000)
        qtbot.wait(200)  # the finished handler (reload) runs in the event loop too
    finally:
        timer.stop()
    return run, max(np.diff(ticks))


def test_rerun_in_a_separate_process_reloads_merged_clusters(phy, dataset, qtbot):
    controller, gui = phy.open(dataset)
    s, plugin = controller.supervisor, controller.bombcell_reason
    select(controller, list(s.clustering.cluster_ids[:2]))
    s.actions.merge()
    s.block()
    merged = max(s.clustering.cluster_ids)
    assert plugin.book.reason(merged).startswith(f"{pr.UNCLASSIFIED}: merged from")
    s.save()
    messages = []
    original_say = plugin.say
    plugin.say = lambda m, *a: (messages.append(m), original_say(m, *a))
    run, longest_gap = _run_and_measure(qtbot, plugin, plugin.start_rerun)
    print(f"longest event-loop gap during the re-run: {longest_gap * 1000:.0f} ms")
    assert longest_gap < 0.5
    assert gui.status_message.startswith("bombcell re-run done: "), gui.status_message
    assert any(m.startswith("bombcell re-run: ") for m in messages)  # progress lines
    assert not plugin.book.reason(merged).startswith(pr.UNCLASSIFIED)  # a real reason now
    assert column_values(s.cluster_view)[merged] == plugin.book.reason(merged)
    assert (dataset / pr.PREVIOUS_DIRNAME).is_dir()
    new_label = pr.read_cluster_tsv(dataset / pr.UNIT_TYPE_TSV)[merged]
    assert s.cluster_meta.get("bc_unitType", merged) == new_label  # phy's save keeps it


def test_cancelled_rerun_leaves_everything(phy, dataset, qtbot):
    controller, gui = phy.open(dataset)
    plugin = controller.bombcell_reason
    plugin.write_tsv()
    before = snapshot(dataset)
    run = plugin.start_rerun()
    qtbot.wait(300)
    plugin.cancel_rerun()
    qtbot.waitUntil(lambda: not run.running, timeout=60_000)
    qtbot.wait(100)
    assert "bombcell re-run failed (cancelled)" in gui.status_message
    after = snapshot(dataset)
    assert {k: v for k, v in after.items() if not k.startswith(".phy") and k != "phy.log"} == \
        {k: v for k, v in before.items() if not k.startswith(".phy") and k != "phy.log"}

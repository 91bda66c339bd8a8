"""*Bombcell vs my labels* in phy's real Template GUI (offscreen): the view follows the curator's
labelling, its links select clusters, Try makes a what-if, Save suggestions writes the file."""
import json

import pytest
from PyQt5.QtCore import QUrl

import phy_bc_reason_plugin as pr
from test_concordance import assert_same_rows
from test_phy_plugin import copy_dataset, phy  # noqa: F401

pytestmark = pytest.mark.gui


@pytest.fixture
def dataset(demo_dataset, tmp_path):
    return copy_dataset(demo_dataset, tmp_path)


def label(controller, group, cluster_ids):
    s = controller.supervisor
    s.select(list(cluster_ids))  # as the curator does (phy's undo restores the selection)
    s.block()
    s.label("group", group, cluster_ids=list(cluster_ids))
    s.block()


def wait_for(qtbot, plugin, labels):
    """The view shows the concordance of ``labels`` and its suggestions are in."""
    real = plugin.shown_classification()
    expected = pr.concordance(real, labels)
    qtbot.waitUntil(lambda: plugin.concordance_info == expected
                    and plugin.suggestions is not None, timeout=10000)
    return expected


def test_view_follows_the_labels(phy, dataset, qtbot):
    controller, gui = phy.open(dataset)
    plugin = controller.bombcell_reason
    gui.snippets.run(":bcvs")
    views = gui.list_views(pr.CONCORDANCE_VIEW_NAME)
    assert len(views) == 1 and plugin.concordance_views == views
    view = views[0]
    qtbot.waitUntil(lambda: "No cluster labelled" in view.toPlainText(), timeout=5000)

    real = pr.classify_dataset(dataset)
    ids = [int(c) for c in real.cluster_ids if real.label[real.row(c)]]
    good = [c for c in ids if real.label[real.row(c)] == "GOOD"]
    mua = [c for c in ids if real.label[real.row(c)] == "MUA"]
    noise = [c for c in ids if real.label[real.row(c)] == "NOISE"]
    label(controller, "good", good[:2] + mua[:1])  # one disagreement
    label(controller, "noise", noise[:1])
    labels = dict.fromkeys(good[:2] + mua[:1], "good")
    labels[noise[0]] = "noise"
    info = wait_for(qtbot, plugin, labels)
    text = view.toPlainText()
    assert f"{info['n_agree']} of {len(labels)} labelled units agree" in text
    assert info["disagreements"] == [{"cluster_id": mua[0], "curator": "good", "bombcell": "MUA"}]
    assert f"{mua[0]} good/MUA" in text
    assert "too few labels" in text  # a handful of labels: how many more, not a suggestion

    # the curator changes their mind: the view follows (undo too)
    label(controller, "mua", mua[:1])
    labels[mua[0]] = "mua"
    info = wait_for(qtbot, plugin, labels)
    assert info["disagreements"] == []
    controller.supervisor.actions.undo()
    controller.supervisor.block()
    labels[mua[0]] = "good"
    wait_for(qtbot, plugin, labels)

    # a disagreement link selects its cluster
    view.on_link(QUrl(f"cluster:{mua[0]}"))
    controller.supervisor.block()
    assert controller.supervisor.selected == [mua[0]]

    # closed (phy's close button): it stops following, labelling goes on without it
    before = plugin.concordance_info
    view.dock.close()
    qtbot.waitUntil(lambda: plugin.concordance_views == [], timeout=5000)
    label(controller, "noise", good[:1])
    qtbot.wait(2 * pr.CONCORDANCE_DEBOUNCE_MS)
    assert plugin.concordance_info is before  # not recomputed


def test_try_and_save_suggestions(phy, dataset, qtbot):
    controller, gui = phy.open(dataset)
    plugin = controller.bombcell_reason
    plugin.suggest_min_units = 2  # the demo dataset has a few units of each label
    gui.snippets.run(":bcvs")
    view = gui.list_views(pr.CONCORDANCE_VIEW_NAME)[0]
    real = pr.classify_dataset(dataset)
    # the curator keeps bombcell's noise units and rejects its non-somatic ones: the noise
    # thresholds should move
    groups = {"GOOD": "good", "MUA": "mua", "NOISE": "good", "NON-SOMA": "noise"}
    labels = {int(c): groups[b] for c, b in zip(real.cluster_ids, real.label) if b in groups}
    for group in ("good", "mua", "noise"):
        label(controller, group, [c for c, g in labels.items() if g == group])
    wait_for(qtbot, plugin, labels)
    rows = pr.suggest(real, labels, min_units_per_class=2)
    assert_same_rows(plugin.suggestions, rows)
    changes = pr.suggested_changes(rows)
    assert changes
    param, value = next(iter(changes.items()))
    assert "Try" in view.toPlainText() and "Save suggestions" in view.toPlainText()
    view.on_link(QUrl(f"try:{param}"))
    assert plugin.whatif_changes == {param: value}
    assert gui.status_message.startswith("WHAT-IF ")
    # the view now compares the labels with the what-if's, and suggests from there
    qtbot.waitUntil(lambda: "WHAT-IF" in view.toPlainText() and plugin.suggestions is not None,
                    timeout=10000)
    whatif = real.what_if({param: value})
    assert plugin.concordance_info == pr.concordance(whatif, labels)
    view.on_link(QUrl("save:"))
    saved = json.loads((dataset / pr.SUGGEST_PARAMS_NAME).read_text())
    # the what-if's change and what is still suggested on top of it
    assert saved == dict({param: value}, **pr.suggested_changes(
        pr.suggest(whatif, labels, min_units_per_class=2)))

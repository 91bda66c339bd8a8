"""The phy plugin in phy's real Template GUI (offscreen), created the way phy's own tests do
(phy/apps/template/tests/test_gui.py, phy/apps/tests/test_base.py)."""
import hashlib
from html import escape
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import phy_bc_reason_plugin as bcp  # noqa: E402
import phy_bc_reason_plugin as pr  # noqa: E402
import phy_tables  # noqa: E402  (what differs between phy 2.1's and phy 2.0's tables)

pytestmark = pytest.mark.gui


# -- helpers -------------------------------------------------------------------------------------

def _copy_or_link(src, dst):
    # The raw recording is big and nobody writes it: a hard link.  Everything else is copied
    # (copy2 keeps the mtimes that the staleness checks compare), as tests damage some files.
    if os.path.getsize(src) > 8 * 2**20 and not src.endswith((".npy", ".tsv", ".parquet")):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def copy_dataset(src, tmp_path, name="ks"):
    """A private copy of a session dataset (those must not be modified)."""
    dst = tmp_path / name
    shutil.copytree(src, dst, copy_function=_copy_or_link,
                    ignore=shutil.ignore_patterns(".phy", "phy.log", pr.TSV_NAME))
    return dst


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def read_reason_tsv(path):
    from phylib.utils._misc import _read_tsv_simple
    field, values = _read_tsv_simple(path)
    assert field == pr.COLUMN
    return values


class Phy:
    """Opens phy's Template GUI on a dataset with the plugin, and closes everything it opened."""

    def __init__(self, qtbot, config_dir):
        self.qtbot = qtbot
        self.config_dir = config_dir
        self.opened = []

    def open(self, dataset_dir, plugins=("BombcellReasonPlugin",), clear_cache=True,
             clear_state=True):
        from phy.apps.template import TemplateController
        from phy.gui.qt import Debouncer
        from phy.gui.widgets import Barrier
        from phylib.io.model import get_template_params
        from phylib.utils import connect

        assert bcp.BombcellReasonPlugin  # defines and registers the class with phy
        Debouncer.delay = 1
        controller = TemplateController(
            config_dir=self.config_dir, plugins=list(plugins), clear_cache=clear_cache,
            clear_state=clear_state, enable_threading=False,
            **get_template_params(Path(dataset_dir) / "params.py"))
        gui = controller.create_gui(do_prompt_save=False)
        self.opened.append((controller, gui))
        s = controller.supervisor
        b = Barrier()
        connect(b("cluster_view"), event="ready", sender=s.cluster_view)
        connect(b("similarity_view"), event="ready", sender=s.similarity_view)
        with self.qtbot.waitExposed(gui):
            gui.show()
        b.wait()
        return controller, gui

    def close(self, controller, gui):
        from phylib.utils import reset
        gui.close()
        gui.deleteLater()
        if hasattr(controller, "close"):  # phy 2.1 (phy 2.0's controller has no close)
            controller.close()
        self.qtbot.wait(50)
        self.opened.remove((controller, gui))
        # As phy's tests do: phy's own views leave callbacks behind (e.g. the amplitude view's
        # on_time_range_selected), which would act on deleted widgets of the closed GUI.
        reset()

    def close_all(self):
        for controller, gui in list(self.opened):
            self.close(controller, gui)


@pytest.fixture
def phy(qtbot, tmp_path):
    p = Phy(qtbot, tmp_path / "phy_config_dir")
    yield p
    p.close_all()


@pytest.fixture
def dataset(demo_dataset, tmp_path):
    return copy_dataset(demo_dataset, tmp_path)


def row(table, cluster_id):
    return phy_tables.row(table, cluster_id)


def column_values(table, name=pr.COLUMN):
    return {r["id"]: r.get(name) for r in phy_tables.rows(table)}


def select(controller, cluster_ids):
    controller.supervisor.select(list(cluster_ids))
    wait_selected(controller, cluster_ids)


def wait_selected(controller, cluster_ids):
    """Until phy has handled the selection (at once in phy 2.1; phy 2.0 selects through
    JavaScript, so its select event comes later)."""
    s = controller.supervisor
    phy_tables.wait_until(lambda: s.selected == list(cluster_ids), what=f"selection {cluster_ids}")
    s.block()


def view_of(gui):
    views = gui.list_views(bcp.VIEW_NAME)
    assert len(views) == 1
    return views[0]


# -- the column ----------------------------------------------------------------------------------

def test_column_once_first_and_equal_to_the_cli_text(phy, dataset):
    assert pr.main(["export", str(dataset)]) == 0  # a TSV left by the CLI: phylib loads it too
    cli = read_reason_tsv(dataset / pr.TSV_NAME)
    controller, gui = phy.open(dataset)
    s = controller.supervisor

    for table in (s.cluster_view, s.similarity_view):
        assert table.columns.count(pr.COLUMN) == 1
        assert table.columns[:6] == list(bcp.FIRST_COLUMNS)
    assert pr.COLUMN not in s.cluster_meta.fields  # not a label: phy never copies or saves it
    assert pr.COLUMN not in controller.model.metadata

    result = pr.classify_dataset(dataset)
    shown = column_values(s.cluster_view)
    n_failing = column_values(s.cluster_view, bcp.N_FAILING_COLUMN)
    assert set(shown) == set(s.clustering.cluster_ids)
    for cluster_id in result.cluster_ids.tolist():
        if cluster_id in shown:
            assert shown[cluster_id] == cli[cluster_id] == result.reason_by_cluster()[cluster_id]
            assert n_failing[cluster_id] == result.n_failing[result.row(cluster_id)]
            assert isinstance(n_failing[cluster_id], int)  # sorts and filters as a number
    assert max(len(t) for t in shown.values()) <= 45  # short enough for the default layout
    s.cluster_view.sort_by(bcp.N_FAILING_COLUMN, "desc")  # sorts as a number
    by_failing = [n_failing[c] for c in phy_tables.ids(s.cluster_view)]
    assert by_failing == sorted(by_failing, reverse=True) and by_failing[0] >= 2

    # The tooltip names the criteria in full.
    plugin = controller.bombcell_reason
    mua = next(c for c in shown if shown[c].startswith("MUA: "))
    assert plugin.book.full_reason(mua) == result.full_reason(mua)
    assert phy_tables.reason_tooltip(s.cluster_view, plugin, mua) == result.full_reason(mua)

    # The similarity view shows the same text.
    first = s.clustering.cluster_ids[0]
    select(controller, [first])
    similar = column_values(s.similarity_view)
    assert similar and all(similar[c] == shown[c] for c in similar)


def test_tsv_written_at_open_when_missing_or_stale(phy, dataset):
    tsv = dataset / pr.TSV_NAME
    assert not tsv.exists()
    controller, gui = phy.open(dataset)
    assert read_reason_tsv(tsv) == bcp.ReasonBook.load(dataset).reasons(
        controller.supervisor.clustering.cluster_ids)
    assert pr.TSV_NAME in gui.status_message
    phy.close(controller, gui)

    # Older than bombcell's results: rewritten.  Newer: left alone.
    source_mtime = pr.classify_dataset(dataset).source_mtime
    tsv.write_text("cluster_id\tbc_classificationReason\n")
    os.utime(tsv, (source_mtime - 100, source_mtime - 100))
    controller, gui = phy.open(dataset)
    assert len(read_reason_tsv(tsv)) == len(controller.supervisor.clustering.cluster_ids)
    phy.close(controller, gui)
    before = tsv.stat().st_mtime_ns
    controller, gui = phy.open(dataset)
    assert tsv.stat().st_mtime_ns == before


def test_split_non_somatic_labels(phy, demo_dataset_split, tmp_path):
    dataset = copy_dataset(demo_dataset_split, tmp_path)
    result = pr.classify_dataset(dataset)
    assert result.split
    controller, gui = phy.open(dataset)
    shown = column_values(controller.supervisor.cluster_view)
    non_somatic = [c for c, label in zip(result.cluster_ids.tolist(), result.label)
                   if str(label).startswith("NON-SOMA ")]
    assert non_somatic
    for cluster_id, reason in result.reason_by_cluster().items():
        assert shown.get(cluster_id, reason) == reason  # units without spikes are no phy cluster
    select(controller, [c for c in non_somatic if c in shown][:1])
    text = view_of(gui).toPlainText()
    assert result.label[result.row(non_somatic[0])] in text and "non-somatic" in text


# -- the dock view, the menu, the snippet --------------------------------------------------------

def test_view_follows_the_selection(phy, dataset):
    result = pr.classify_dataset(dataset)
    controller, gui = phy.open(dataset)
    view = view_of(gui)  # shown by default when results are found
    s = controller.supervisor
    failing = [c for c in result.cluster_ids.tolist()
               if any(k["status"] == "fail" for k in result.explain(c)["criteria"])]
    cluster_id = failing[0]
    select(controller, [cluster_id])
    text = view.toPlainText()
    info = result.explain(cluster_id)
    assert f"cluster {cluster_id}" in text
    assert info["reason"] in text
    assert "bombcell's saved label" in text
    for criterion in info["criteria"]:  # every criterion by its short name
        assert criterion["short"] in text
    for criterion in info["criteria"]:  # failing ones with their full names, value, threshold
        if criterion["status"] == "fail":
            assert f"{criterion['metric']} {criterion['op']} {criterion['param']}" in text
            value, threshold = pr.comparison_numbers(criterion["value"], criterion["threshold"])
            assert f"{value} {criterion['op']} {threshold}" in text
    for note in info["notes"]:
        assert note.split(":")[0] in text
    assert view.dock.status == f"{cluster_id}: {result.label[result.row(cluster_id)]}"

    # Two clusters (cluster view + similarity view selection): side by side, each reason.
    other = [c for c in s.clustering.cluster_ids if c != cluster_id][0]
    select(controller, [cluster_id, other])
    text = view.toPlainText()
    assert info["reason"] in text and plugin_reason(controller, other) in text


def plugin_reason(controller, cluster_id):
    return controller.bombcell_reason.book.reason(cluster_id)


def _row_order(html, info):
    """Positions of the criteria's rows in the view's HTML, by criterion name."""
    return {c["name"]: html.find(f"{escape(pr._full_name(c), quote=False)} &middot;")
            for c in info["criteria"]}


@pytest.mark.parametrize("kind", ["NON-SOMA", "GOOD", "MUA"])
def test_view_orders_deciding_first_and_only_they_are_red(kind, dataset):
    result = pr.classify_dataset(dataset)
    book = bcp.ReasonBook(result)
    units = [u for u in range(len(result)) if result.label[u] == kind
             and result.fails[:, u].sum() > result.decisive[:, u].sum()]
    if not units:
        pytest.skip(f"no {kind} unit with failing criteria that do not decide in the demo")
    for unit in units:
        cluster_id = int(result.cluster_ids[unit])
        info = result.explain(cluster_id)
        html = book.html([cluster_id])
        pos = _row_order(html, info)
        decisive = [pos[c["name"]] for c in info["decisive"]]
        other_fails = [pos[c["name"]] for c in info["criteria"]
                       if c["status"] == "fail" and c not in info["decisive"]]
        assert all(p > 0 for p in decisive + other_fails)
        assert max(decisive, default=0) < min(other_fails)
        assert html.count(bcp._DECISIVE_STYLE) == 2 * len(info["decisive"])  # two lines each
        if kind == "GOOD":
            assert bcp._DECISIVE_STYLE not in html


def test_view_fits_its_width_without_scrolling_sideways(qtbot, dataset):
    """Every single cluster and runs of 2-4 clusters, from 230 px up: never a sideways scroll
    bar (the layout at 1920x1080 gives the view ~260-330 px)."""
    from PyQt5.QtWidgets import QTextBrowser
    result = pr.classify_dataset(dataset)
    book = bcp.ReasonBook(result)
    ids = result.cluster_ids.tolist()
    selections = [[c] for c in ids] + [ids[i:i + k] for k in (2, 3, 4) for i in range(0, len(ids) - k, 3)]
    browser = QTextBrowser()
    qtbot.addWidget(browser)
    browser.show()
    for width in (230, 260, 290, 330):
        browser.resize(width, 800)
        for selection in selections:
            browser.setHtml(book.html(selection))
            qtbot.wait(1)
            assert browser.horizontalScrollBar().maximum() == 0, (width, selection)


def test_view_text_is_fast(phy, dataset):
    controller, gui = phy.open(dataset)
    plugin = controller.bombcell_reason
    ids = list(controller.supervisor.clustering.cluster_ids)
    cold = []
    for c in ids:
        t = time.perf_counter()
        plugin.selection_html([c])
        cold.append(time.perf_counter() - t)
    t = time.perf_counter()
    for c in ids:
        plugin.selection_html([c])
    warm = (time.perf_counter() - t) / len(ids)
    assert warm < 0.005
    assert np.median(cold) < 0.005


def test_show_criteria_action_and_bc_snippet(phy, dataset):
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason
    view = view_of(gui)
    view.dock.close()  # the user closed it: the action brings it back
    gui.snippets.run(":bc 5")
    wait_selected(controller, [5])
    view = view_of(gui)
    assert "cluster 5" in view.toPlainText()
    assert gui.status_message == f"cluster 5: {plugin.book.reason(5)}"

    select(controller, [7])
    plugin.actions.show_criteria_of_selected_cluster()
    assert "cluster 7" in view_of(gui).toPlainText()
    assert gui.status_message.startswith("cluster 7: ")
    assert plugin.actions.get("show_criteria_of_selected_cluster").shortcut().toString() == \
        "Ctrl+Alt+B"

    gui.snippets.run(":bc 99999")
    s.block()
    assert "no cluster 99999" in gui.status_message
    assert s.selected == [7]
    menu = gui.get_menu("&Bombcell")
    names = [a.text() for a in menu.actions() if a.text()]
    assert names == ["Show criteria of selected cluster", "Select cluster and show criteria",
                     "Export reasons TSV now", "Reload bombcell results",
                     "Raw bombcell metric columns",
                     # issue 10: what-if, summary, metric view, re-run (tests/test_whatif_phy.py)
                     "What-if: set a parameter", "What-if: back to the saved parameters",
                     "What-if: save the changed parameters", "Bombcell summary",
                     "Bombcell metric view", "Re-run bombcell", "Cancel the bombcell re-run",
                     # issue 12: your labels against bombcell's (tests/test_concordance_phy.py)
                     "Bombcell vs my labels", "Try a suggested threshold",
                     "Save the suggested thresholds"]


def _shortcut_owners(gui):
    """Every key sequence of the GUI's actions and menu mnemonics, with what it triggers."""
    import re
    from PyQt5.QtWidgets import QAction
    owners = {}
    for action in gui.findChildren(QAction):
        for key in action.shortcuts():
            if key.toString() and not action.text().startswith("_snippet"):
                owners.setdefault(key.toString(), []).append(action.text().replace("&", ""))
    for action in gui.menuBar().actions():
        mnemonic = re.search(r"&(\w)", action.text())
        if mnemonic:
            owners.setdefault("Alt+" + mnemonic.group(1).upper(), []).append("menu " + action.text())
    return owners


def test_no_shortcut_clashes(phy, dataset):
    controller, gui = phy.open(dataset)
    owners = _shortcut_owners(gui)
    assert "menu &Bombcell" in owners["Alt+B"]
    assert owners[bcp.SHOW_CRITERIA_SHORTCUT.title().replace("Ctrl", "Ctrl")] == \
        ["Show criteria of selected cluster"]
    clashes = {k: v for k, v in owners.items() if len(v) > 1}
    assert not clashes


def test_raw_metric_columns_one_by_one(phy, dataset):
    metrics = set(pr.classify_dataset(dataset).metric_columns)
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason
    # The labels phylib loaded from the cluster_<metric>.tsv files bombcell wrote for phy (an
    # all-NaN metric has no values, so phylib makes no label of it).
    tsv_metrics = set(s.cluster_meta.fields) & metrics
    assert len(tsv_metrics) > 10

    def shown(table):
        return set(table.columns) & tsv_metrics

    assert shown(s.cluster_view) == shown(s.similarity_view) == set()  # hidden by default
    a = s.clustering.cluster_ids[0]
    select(controller, [a])
    similar = phy_tables.ids(s.similarity_view)[:1]
    s.similarity_view.select(similar)
    s.block()
    s.cluster_view.sort_by("n_spikes", "asc")
    phy_tables.wait_until(lambda: phy_tables.sort(s.cluster_view) == ["n_spikes", "asc"])

    def selection_shown():  # in both views, as the user sees it (phy 2.0 rebuilds them later)
        return (phy_tables.selected(s.cluster_view), phy_tables.selected(s.similarity_view))

    def rebuilt(expected):  # phy 2.0 rebuilds its HTML tables asynchronously
        phy_tables.wait_until(lambda: shown(s.similarity_view) == expected
                              and selection_shown() == ([a], similar), what="tables rebuilt")

    # One metric from the submenu.
    action = plugin.actions.get("raw_metric_column_nPeaks")
    assert action.isCheckable() and action.text() == "nPeaks"
    action.trigger()
    rebuilt({"nPeaks"})
    assert shown(s.cluster_view) == shown(s.similarity_view) == {"nPeaks"}
    assert s.cluster_view.columns[:6] == list(bcp.FIRST_COLUMNS)
    assert phy_tables.sort(s.cluster_view) == ["n_spikes", "asc"]  # sort kept
    assert s.selected == [a] + similar  # selection kept
    # float(): phy 2.0's HTML table holds numbers as the text it shows ("1.00")
    assert float(row(s.cluster_view, a)["nPeaks"]) == s.cluster_meta.get("nPeaks", a)
    assert float(row(s.similarity_view, similar[0])["nPeaks"]) == \
        s.cluster_meta.get("nPeaks", similar[0])
    plugin.actions.get("raw_metric_column_presenceRatio").trigger()
    rebuilt({"nPeaks", "presenceRatio"})
    assert shown(s.cluster_view) == {"nPeaks", "presenceRatio"}
    assert "2 of" in gui.status_message
    plugin.actions.get("raw_metric_column_nPeaks").trigger()
    rebuilt({"presenceRatio"})
    assert shown(s.cluster_view) == {"presenceRatio"}

    plugin.actions.show_all_raw_metric_columns()
    rebuilt(tsv_metrics)
    assert shown(s.cluster_view) == tsv_metrics
    assert plugin.actions.get("raw_metric_column_nPeaks").isChecked()
    plugin.actions.hide_all_raw_metric_columns()
    rebuilt(set())
    assert shown(s.cluster_view) == set()
    assert not plugin.actions.get("raw_metric_column_nPeaks").isChecked()
    # phy rebuilding its table for a new label column keeps them hidden.
    s.actions.label("my_label", "x")
    s.block()
    assert "my_label" in s.cluster_view.columns and shown(s.cluster_view) == set()

    # The choice is kept in phy's GUI state, metric by metric.
    plugin.actions.get("raw_metric_column_presenceRatio").trigger()
    rebuilt({"presenceRatio"})
    phy.close(controller, gui)
    controller, gui = phy.open(dataset, clear_state=False)
    assert shown(controller.supervisor.cluster_view) == {"presenceRatio"}
    actions = controller.bombcell_reason.actions
    assert actions.get("raw_metric_column_presenceRatio").isChecked()
    assert not actions.get("raw_metric_column_nPeaks").isChecked()


# -- merge, split, undo, redo --------------------------------------------------------------------

def test_merge_split_unclassified_and_undo_redo(phy, dataset):
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    book = controller.bombcell_reason.book
    a, b = s.clustering.cluster_ids[:2]
    reason_a, reason_b = book.reason(a), book.reason(b)

    select(controller, [a, b])
    s.actions.merge()
    s.block()
    new = s.clustering.cluster_ids[-1]
    assert a not in s.clustering.cluster_ids and new not in (a, b)
    merged = (f"UNCLASSIFIED: merged from {a} ({book.label_of(a)}), {b} ({book.label_of(b)}); "
              f"re-run bombcell")
    assert book.label_of(a) == reason_a.split(":")[0]
    assert row(s.cluster_view, new)[pr.COLUMN] == merged
    assert merged in view_of(gui).toPlainText()

    s.actions.undo()
    s.block()
    assert row(s.cluster_view, new) is None
    assert row(s.cluster_view, a)[pr.COLUMN] == reason_a
    assert row(s.cluster_view, b)[pr.COLUMN] == reason_b

    s.actions.redo()
    s.block()
    assert row(s.cluster_view, new)[pr.COLUMN] == merged

    # Split: both parts are new clusters with no bombcell row.
    c = s.clustering.cluster_ids[0]
    spikes = s.clustering.spikes_per_cluster[c]
    s.actions.split(spikes[: len(spikes) // 2])
    s.block()
    parts = [x for x in s.clustering.cluster_ids if x > new]
    assert len(parts) == 2
    for part in parts:
        assert row(s.cluster_view, part)[pr.COLUMN] == \
            f"UNCLASSIFIED: split from {c} ({book.label_of(c)}); re-run bombcell"
        assert row(s.cluster_view, part)[bcp.N_FAILING_COLUMN] is None
    s.actions.undo()
    s.block()
    assert row(s.cluster_view, c)[pr.COLUMN] == book.reason(c) != book.reason(parts[0])
    # No parent's reason anywhere on a new cluster.
    assert all(v.startswith("UNCLASSIFIED") for k, v in column_values(s.cluster_view).items()
               if k not in book._base)


def test_save_then_reopen(phy, dataset):
    bombcell_before = snapshot(dataset / "bombcell")
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    a, b = s.clustering.cluster_ids[2:4]
    select(controller, [a, b])
    s.actions.merge()
    s.block()
    new = s.clustering.cluster_ids[-1]
    gui.file_actions.save()  # File > Save: phy's request_save -> supervisor.save()
    s.block()
    saved = read_reason_tsv(dataset / pr.TSV_NAME)
    assert set(saved) == set(s.clustering.cluster_ids)
    assert saved[new].startswith("UNCLASSIFIED: merged from")
    assert "after phy saved" in gui.status_message
    phy.close(controller, gui)

    controller, gui = phy.open(dataset, clear_cache=False)
    s = controller.supervisor
    assert new in s.clustering.cluster_ids
    for table in (s.cluster_view, s.similarity_view):
        assert table.columns.count(pr.COLUMN) == 1
    shown = column_values(s.cluster_view)
    assert shown == saved  # including the merged cluster's origin, kept across sessions
    assert snapshot(dataset / "bombcell") == bombcell_before  # bombcell's results untouched


# -- missing or broken results -------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing_folder", "broken_parquet"])
def test_missing_or_broken_results_open_cleanly(phy, dataset, damage):
    if damage == "missing_folder":
        shutil.rmtree(dataset / "bombcell")
        expected, column = "no bombcell results folder", bcp.NO_RESULTS_REASON
    else:
        (dataset / "bombcell" / pr.METRICS_FILE).write_bytes(b"PAR1 this is not parquet")
        expected, column = pr.METRICS_FILE, bcp.UNUSABLE_RESULTS_REASON
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    shown = column_values(s.cluster_view)
    assert len(shown) == len(s.clustering.cluster_ids)
    assert set(shown.values()) == {column}  # short: the details are said once, below
    assert len(column) < 60
    assert set(column_values(s.cluster_view, bcp.N_FAILING_COLUMN).values()) == {None}
    text = column
    assert expected in gui.status_message
    log = (dataset / "phy.log").read_text()
    assert expected in log and log.count(expected) == 1  # one message, not one per row
    assert not gui.list_views(bcp.VIEW_NAME)  # not forced on the user without results
    assert not (dataset / pr.TSV_NAME).exists()  # nothing written from an error

    # phy works as usual: select, merge, undo, save.
    a, b = s.clustering.cluster_ids[:2]
    select(controller, [a, b])
    s.actions.merge()
    s.block()
    assert row(s.cluster_view, s.clustering.cluster_ids[-1])[pr.COLUMN] == text
    s.actions.undo()
    s.block()
    s.save()
    assert (dataset / "spike_clusters.npy").exists()
    # The view can still be opened; it says what is wrong and how to run bombcell.
    controller.bombcell_reason.actions.show_criteria_of_selected_cluster()
    assert expected in view_of(gui).toPlainText()
    assert "bc.run_bombcell(" in view_of(gui).toPlainText()


def test_reload_after_bombcell_ran(phy, dataset, tmp_path):
    shutil.move(dataset / "bombcell", tmp_path / "bombcell_later")
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason
    assert set(column_values(s.cluster_view).values()) == {bcp.NO_RESULTS_REASON}
    a, b = s.clustering.cluster_ids[:2]
    select(controller, [a, b])
    s.actions.merge()
    s.block()
    new = s.clustering.cluster_ids[-1]

    shutil.move(tmp_path / "bombcell_later", dataset / "bombcell")  # "bombcell ran"
    plugin.actions.reload_bombcell_results()
    result = pr.classify_dataset(dataset)
    shown = column_values(s.cluster_view)
    for cluster_id, reason in result.reason_by_cluster().items():
        if cluster_id in shown:
            assert shown[cluster_id] == reason
    assert shown[new].startswith(f"UNCLASSIFIED: merged from {a} (UNCLASSIFIED), {b}")
    n = len([c for c in shown if c in result.reason_by_cluster()])
    assert gui.status_message.startswith(f"reloaded: {n} units changed label: ")
    n_failing = column_values(s.cluster_view, bcp.N_FAILING_COLUMN)
    assert all(n_failing[c] == result.n_failing[result.row(c)] for c in shown if result.row(c) is not None)
    assert read_reason_tsv(dataset / pr.TSV_NAME) == shown
    select(controller, [s.clustering.cluster_ids[0]])
    plugin.actions.show_criteria_of_selected_cluster()
    assert result.explain(s.clustering.cluster_ids[0])["reason"] in view_of(gui).toPlainText()
    assert plugin.actions.export_reasons_tsv_now() is None
    assert "wrote" in gui.status_message


def test_an_error_in_the_plugin_never_stops_phy(phy, dataset):
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    plugin.book.record = boom
    plugin.book.html = boom
    a, b = s.clustering.cluster_ids[:2]
    select(controller, [a, b])  # the view's handler fails
    assert "simulated bug" in gui.status_message
    s.actions.merge()  # the cluster handler fails; phy's merge and its handlers still run
    s.block()
    assert a not in s.clustering.cluster_ids
    assert s.selected == [s.clustering.cluster_ids[-1]]
    assert "simulated bug" in (dataset / "phy.log").read_text()
    plugin.book.reason = boom
    assert row(s.cluster_view, s.clustering.cluster_ids[-1]) is not None
    s.actions.undo()  # rows are rebuilt with a failing column function
    s.block()
    assert row(s.cluster_view, a)[pr.COLUMN].startswith("UNCLASSIFIED: plugin error")


# -- enabling ------------------------------------------------------------------------------------

def test_install_plugin_idempotent_with_backup(tmp_path):
    from phy.utils.config import load_master_config

    config_dir = tmp_path / "dotphy"
    message = bcp.install_plugin(config_dir)
    path = config_dir / "phy_config.py"
    assert str(path) in message and not (config_dir / "phy_config.py.bak").exists()
    config = load_master_config(config_dir)
    assert config.TemplateGUI.plugins == ["BombcellReasonPlugin"]
    assert config.Plugins.dirs == [str(config_dir / "plugins")]
    first = path.read_text()
    assert "already enabled" in bcp.install_plugin(config_dir)
    assert path.read_text() == first

    # An existing config with other plugins: kept, backed up, ours appended once.
    user = "c = get_config()\nc.TemplateGUI.plugins = ['ExampleClusterMetricsPlugin']\n"
    path.write_text(user)
    message = bcp.install_plugin(str(config_dir))
    assert "backup" in message
    assert (config_dir / "phy_config.py.bak").read_text() == user
    assert path.read_text().startswith(user)
    bcp.install_plugin(config_dir)
    assert path.read_text().count(bcp._CONFIG_BEGIN) == 1
    assert (config_dir / "phy_config.py.bak").read_text() == user
    config = load_master_config(config_dir)
    assert config.TemplateGUI.plugins == ["ExampleClusterMetricsPlugin", "BombcellReasonPlugin"]


def test_installed_config_attaches_the_plugin(phy, dataset):
    bcp.install_plugin(phy.config_dir)
    controller, gui = phy.open(dataset, plugins=())  # only what phy_config.py asks for
    assert controller.attached_plugins == ["BombcellReasonPlugin"]
    assert controller.supervisor.cluster_view.columns.count(pr.COLUMN) == 1


def test_module_does_not_import_phy():
    import subprocess
    import sys
    code = ("import sys, phy_bc_reason_plugin as m; assert 'phy' not in sys.modules; "
            "assert 'PyQt5' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(bcp.__file__).parent)
    assert out.stdout.strip() == "ok", out.stderr


# -- the column's text without phy ---------------------------------------------------------------

def test_reason_book_origins():
    book = bcp.ReasonBook(error=None, previous={
        100: "UNCLASSIFIED: merged from 1, 2 after bombcell ran; re-run bombcell",
        3: "MUA: whatever an old TSV said"})
    assert book.reason(100).startswith("UNCLASSIFIED: merged from 1, 2")
    assert book.reason(3) == bcp.NO_ROW_REASON  # an old reason is never reused
    book.record({"description": "merge", "history": None, "added": [101],
                 "descendants": [(100, 101), (4, 101)]})
    assert book.reason(101) == bcp.merged_reason([4, 100], book.label_of)
    assert book.reason(101) == \
        "UNCLASSIFIED: merged from 4 (UNCLASSIFIED), 100 (UNCLASSIFIED); re-run bombcell"
    book.record({"description": "assign", "history": "undo", "added": [100, 4],
                 "descendants": [(101, 100), (101, 4)]})
    assert book.reason(4) == bcp.NO_ROW_REASON
    book.check_clusters([101, 4], prune=True)
    assert book.reason(100) == bcp.NO_ROW_REASON


def test_reload_says_which_units_changed_label(dataset):
    result = pr.classify_dataset(dataset)
    good = [int(c) for c, label in zip(result.cluster_ids, result.label) if label == "GOOD"]
    mua = [int(c) for c, label in zip(result.cluster_ids, result.label) if label == "MUA"]
    stricter = dict(result.params, minPresenceRatio=1.5)  # every unit fails presence ratio
    after = pr.Classification(stricter, result.metrics, result.cluster_ids, result.bombcell_label)
    old, new = bcp.ReasonBook(result), bcp.ReasonBook(after)
    text = bcp.changes_text(old, new, result.cluster_ids, limit=3)
    assert text.startswith(f"{len(good)} units changed label: {good[0]} GOOD->MUA, ")
    assert f"(+{len(good) - 3})" in text and "other reasons changed" in text
    assert str(mua[0]) not in text.split(";")[0].split(", ...")[0].split(": ", 1)[1].split(" ")[0]
    assert bcp.changes_text(old, old, result.cluster_ids) == "no unit changed label"


def _accepts(expression, row):
    try:  # as phy's filter: a row whose value cannot be compared stays visible
        return bool(eval(expression, {"__builtins__": {}}, dict(row)))
    except Exception:
        return True


def test_readme_filters_work_in_phys_filter(phy, dataset):
    """Every filter the README shows, through phy's own filter box of the cluster view."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- phy filters -->")[1].split("```")[1]
    lines = [line.split("  #") for line in block.splitlines()[1:] if line.strip()]
    filters = [parts[0].strip() for parts in lines]
    newer_only = {parts[0].strip() for parts in lines if "phy 2.1 only" in parts[-1]}
    assert "bc_unitType == 'MUA' && bc_nFailing == 1" in filters
    # phy 2.1's filter accepts comparisons only; phy 2.0's is JavaScript (`&&`, which phy 2.1
    # also reads as `and`; a Python `and` is a JavaScript error there, and shows every row).
    assert "startswith" not in readme and " and " not in "".join(filters)
    controller, gui = phy.open(dataset)
    table = controller.supervisor.cluster_view
    rows = {r["id"]: r for r in phy_tables.rows(table)}
    for expression in filters:
        table.filter(expression)
        shown = set(phy_tables.ids(table))
        expected = {c for c, r in rows.items() if _accepts(expression.replace("&&", " and "), r)}
        if expression in newer_only and phy_tables._html_table(table):
            # phy 2.0 (as the README says) rewrites the space between two words, even in a text.
            assert shown != expected, f"{expression}: works in phy 2.0 too, update the README"
            continue
        # An expression phy rejects shows every row: so this also proves phy accepted it.
        assert shown == expected and 0 < len(shown) < len(rows), expression
    table.filter("")
    phy_tables.wait_until(lambda: len(phy_tables.ids(table)) == len(rows), what="filter cleared")


def test_any_new_status_renders_without_code_changes(dataset):
    """A status the view has no style for (e.g. 'kept': a failure bombcell keeps under
    keepUncertainRPVUnits) is listed with its name, in a neutral colour, never red."""
    result = pr.classify_dataset(dataset)
    cluster_id = int(result.cluster_ids[result.label == "GOOD"][0])
    info = result.explain(cluster_id)
    rpv = next(c for c in info["criteria"] if c["param"] == "maxRPVviolations")
    rpv.update(status="kept", value=0.5)
    html = bcp._explanation_html(info)
    at = html.index("fraction RPVs")
    row = html[html.rfind("<tr", 0, at):html.find("</tr>", at)]
    assert "0.5 &gt; 0.1 kept" in html and bcp._DECISIVE_STYLE not in row
    assert bcp._OTHER_STATUS_STYLE in row
    assert "kept" in pr.format_explanation(info)
    other = result.explain(int(result.cluster_ids[0]))
    assert "0.5" in bcp._comparison_html([cluster_id, int(result.cluster_ids[0])], [info, other],
                                         ["a", "b"], 0)

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
        assert table.columns[:3] == ["id", pr.COLUMN, "bc_unitType"]
    assert pr.COLUMN not in s.cluster_meta.fields  # not a label: phy never copies or saves it
    assert pr.COLUMN not in controller.model.metadata

    result = pr.classify_dataset(dataset)
    shown = column_values(s.cluster_view)
    assert set(shown) == set(s.clustering.cluster_ids)
    for cluster_id in result.cluster_ids.tolist():
        if cluster_id in shown:
            assert shown[cluster_id] == cli[cluster_id] == result.reason_by_cluster()[cluster_id]

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
    assert "bombcell's own label" in text
    for criterion in info["criteria"]:
        assert criterion["metric"] in text
    # Failing criteria come first, and are highlighted.
    html = controller.bombcell_reason.selection_html([cluster_id])

    def where(k):  # rows show the metric, then its threshold parameter (unique per criterion)
        return html.find(f">{escape(k['param'] or '', quote=False)}</span>") if k["param"] \
            else html.find(f"{k['metric']} is NaN")

    first_fail = min(where(k) for k in info["criteria"] if k["status"] == "fail")
    passes = [where(k) for k in info["criteria"] if k["status"] == "pass"]
    assert 0 < first_fail < min(p for p in passes if p >= 0)
    assert "background-color:#5a1d1d" in html
    for note in info["notes"]:
        assert note.split(":")[0] in text
    assert info["reason"][:20] in view.dock.status

    # Two clusters (cluster view + similarity view selection): both shown.
    other = [c for c in s.clustering.cluster_ids if c != cluster_id][0]
    select(controller, [cluster_id, other])
    text = view.toPlainText()
    assert f"cluster {cluster_id}" in text and f"cluster {other}" in text


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
    assert plugin.actions.get("show_criteria_of_selected_cluster").shortcut().toString() == "Alt+B"

    gui.snippets.run(":bc 99999")
    s.block()
    assert "no cluster 99999" in gui.status_message
    assert s.selected == [7]
    menu = gui.get_menu("&Bombcell")
    names = [a.text() for a in menu.actions() if a.text()]
    assert names == ["Show criteria of selected cluster", "Select cluster and show criteria",
                     "Export reasons TSV now", "Reload bombcell results",
                     "Show raw bombcell metric columns"]


def test_raw_metric_columns_toggle(phy, dataset):
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

    plugin.actions.show_raw_bombcell_metric_columns(True)
    phy_tables.wait_until(lambda: shown(s.similarity_view) == tsv_metrics
                          and selection_shown() == ([a], similar), what="tables rebuilt")
    assert shown(s.cluster_view) == shown(s.similarity_view) == tsv_metrics
    assert s.cluster_view.columns[:3] == ["id", pr.COLUMN, "bc_unitType"]
    assert f"{len(tsv_metrics)} raw bombcell metric columns shown" in gui.status_message
    assert phy_tables.sort(s.cluster_view) == ["n_spikes", "asc"]  # sort kept
    assert s.selected == [a] + similar  # selection kept
    # float(): phy 2.0's HTML table holds numbers as the text it shows ("1.00")
    assert float(row(s.cluster_view, a)["nPeaks"]) == s.cluster_meta.get("nPeaks", a)
    assert float(row(s.similarity_view, similar[0])["nPeaks"]) == \
        s.cluster_meta.get("nPeaks", similar[0])

    plugin.actions.show_raw_bombcell_metric_columns(False)
    phy_tables.wait_until(lambda: shown(s.similarity_view) == set()
                          and selection_shown() == ([a], similar), what="tables rebuilt")
    assert shown(s.cluster_view) == shown(s.similarity_view) == set()
    assert "hidden" in gui.status_message
    # phy rebuilding its table for a new label column keeps them hidden.
    s.actions.label("my_label", "x")
    s.block()
    assert "my_label" in s.cluster_view.columns and shown(s.cluster_view) == set()

    # The choice is kept in phy's GUI state.
    plugin.actions.show_raw_bombcell_metric_columns(True)
    phy_tables.wait_until(lambda: shown(s.similarity_view) == tsv_metrics, what="tables rebuilt")
    phy.close(controller, gui)
    controller, gui = phy.open(dataset, clear_state=False)
    assert shown(controller.supervisor.cluster_view) == tsv_metrics
    assert controller.bombcell_reason.actions.get("show_raw_bombcell_metric_columns").isChecked()


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
    merged = f"UNCLASSIFIED: merged from {a}, {b} after bombcell ran; re-run bombcell"
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
            f"UNCLASSIFIED: split from {c} after bombcell ran; re-run bombcell"
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
        expected = "no bombcell results folder"
    else:
        (dataset / "bombcell" / pr.METRICS_FILE).write_bytes(b"PAR1 this is not parquet")
        expected = pr.METRICS_FILE
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    shown = column_values(s.cluster_view)
    assert len(shown) == len(s.clustering.cluster_ids)
    assert len(set(shown.values())) == 1
    text = next(iter(shown.values()))
    assert text.startswith("UNCLASSIFIED: ") and expected in text
    assert expected in gui.status_message
    assert expected in (dataset / "phy.log").read_text()
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
    # The view can still be opened and says what is wrong.
    controller.bombcell_reason.actions.show_criteria_of_selected_cluster()
    assert expected in view_of(gui).toPlainText()


def test_reload_after_bombcell_ran(phy, dataset, tmp_path):
    shutil.move(dataset / "bombcell", tmp_path / "bombcell_later")
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason
    assert all(v.startswith("UNCLASSIFIED") for v in column_values(s.cluster_view).values())
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
    assert shown[new].startswith(f"UNCLASSIFIED: merged from {a}, {b}")
    assert gui.status_message.startswith("reloaded: ")
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
    assert book.reason(101) == bcp.merged_reason([4, 100])
    book.record({"description": "assign", "history": "undo", "added": [100, 4],
                 "descendants": [(101, 100), (101, 4)]})
    assert book.reason(4) == bcp.NO_ROW_REASON
    book.check_clusters([101, 4], prune=True)
    assert book.reason(100) == bcp.NO_ROW_REASON

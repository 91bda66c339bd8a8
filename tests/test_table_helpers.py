"""The plugin's table helpers (_table_sort, _rebuild_table, _reselect) in phy's real GUI, in the
environment this runs in: phy 2.1's Qt tables (synchronous) or phy 2.0's HTML tables, whose
rebuilds finish later -- so a second toggle can arrive while the first rebuild is under way."""
import pytest

import phy_bc_reason_plugin as pr
import phy_tables
from test_phy_plugin import dataset, phy, select  # noqa: F401  (fixtures)

pytestmark = pytest.mark.gui


def test_table_kind_matches_the_running_phy(phy, dataset):  # noqa: F811
    from phy.gui.widgets import Table
    controller, gui = phy.open(dataset)
    web_engine = any(c.__name__ == "QWebEngineView" for c in Table.__mro__)
    assert pr._html_table(controller.supervisor.cluster_view) is web_engine


def test_toggling_twice_quickly_ends_in_the_last_choice(phy, dataset):  # noqa: F811
    controller, gui = phy.open(dataset)
    s = controller.supervisor
    plugin = controller.bombcell_reason
    a = s.clustering.cluster_ids[1]
    select(controller, [a])
    s.cluster_view.sort_by("fr", "asc")
    phy_tables.wait_until(lambda: phy_tables.sort(s.cluster_view) == ["fr", "asc"])

    phy_tables.mark_pages(s.cluster_view, s.similarity_view)
    plugin.actions.show_all_raw_metric_columns()
    plugin.actions.hide_all_raw_metric_columns()  # before the first rebuild is done
    # Both rebuilds done: new pages (phy 2.0; the old ones had the selection and the sort, so
    # without this the wait could end before the rebuild began), the last choice's columns, the
    # cluster view's selection back, the similarity view's rows.
    columns = list(s.cluster_view.columns)
    phy_tables.wait_until(lambda: all(phy_tables.rebuilt(v) for v in (s.cluster_view,
                                                                      s.similarity_view))
                          and phy_tables.header(s.cluster_view) == columns
                          and phy_tables.selected(s.cluster_view) == [a]
                          and phy_tables.ids(s.similarity_view), what="tables rebuilt")
    s.block()
    assert "nPeaks" not in s.cluster_view.columns and "nPeaks" not in s.similarity_view.columns
    assert s.cluster_view.columns[:len(pr.FIRST_COLUMNS)] == list(pr.FIRST_COLUMNS)
    assert phy_tables.sort(s.cluster_view) == ["fr", "asc"]
    assert s.selected[:1] == [a]
    assert not plugin.shown_raw_metrics

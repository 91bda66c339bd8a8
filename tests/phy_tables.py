"""What a test reads from phy's cluster and similarity views, in phy 2.1 and in phy 2.0.

phy 2.1's views are Qt tables that answer at once.  phy 2.0's (2.0b5) are HTML pages in
QtWebEngine: every question is JavaScript whose answer arrives later through a callback, so here
we wait for it in Qt's event loop.  The tests call only these functions for what differs; the
rest of phy's API they use is the same in both.
"""
import time

from phy_bc_reason_plugin import _html_table

TIMEOUT = 20  # seconds; QtWebEngine under Xvfb with software OpenGL can be slow on 2 cores


def wait_until(condition, timeout=TIMEOUT, what="condition"):
    """Run Qt's event loop until ``condition()`` is true."""
    from PyQt5.QtWidgets import QApplication
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.005)


def _ask(view, method, js_method):
    """``view.<method>()`` in phy 2.1; in phy 2.0 the answer of ``table.<js_method>()``, or None
    while the page loads (until its script runs, ``table`` is the page's <div id="table">)."""
    if not _html_table(view):
        return getattr(view, method)()
    return _js(view, f'(typeof table.{js_method} === "function") ? table.{js_method}() : null')


def _js(view, expression):
    box = []
    view.eval_js(expression, callback=box.append)
    wait_until(lambda: box, what=f"{type(view).__name__}: {expression}")
    return box[0]


def ids(view):
    """Row ids in display order."""
    return list(_ask(view, "get_ids", "_getIds") or [])


def selected(view):
    return list(_ask(view, "get_selected", "selected") or [])


def sort(view):
    """[name, direction] or None."""
    value = _ask(view, "get_current_sort", "_currentSort")
    return list(value) if value and value[0] else None


def row(view, cluster_id):
    """The row of one cluster as {column: value}, or None when the view has no such row."""
    if not _html_table(view):
        return view.get(cluster_id)
    # phy 2.0's get() raises in JavaScript (an undefined answer) for a missing id.
    return _js(view, f'(table.get("id", {int(cluster_id)})[0] || {{}})["_values"]')


def rows(view):
    """Every row of the view as {column: value}, in display order."""
    if not _html_table(view):
        return list(view._model._rows)
    return list(_js(view, "table.items.map(function (item) { return item._values; })") or [])


def reason_tooltip(view, plugin, cluster_id):
    """The tooltip of the reason cell of ``cluster_id``: phy 2.1 asks the plugin for the cell
    under the mouse; phy 2.0's HTML page sets the cell's ``title`` when the mouse comes over it."""
    import phy_bc_reason_plugin as pr
    if not _html_table(view):
        table_view = view.table_view
        view.filter(f"id == {int(cluster_id)}")
        rect = table_view.visualRect(table_view.model().index(0, view.columns.index(pr.COLUMN)))
        try:
            return plugin.tooltip(view, rect.center())
        finally:
            view.filter("")
    return _js(view, f"""(function () {{
        var cell = table._getRow({int(cluster_id)}).querySelector("td.{pr.COLUMN}");
        cell.dispatchEvent(new MouseEvent("mouseover", {{bubbles: true}}));
        return cell.title;
    }})()""")


def mark_pages(*views):
    """phy 2.0: mark the views' current HTML pages, so that ``rebuilt`` can tell a new page."""
    for view in views:
        if _html_table(view):
            _js(view, "window.bcOldPage = true")


def rebuilt(view):
    """True once a view marked by ``mark_pages`` shows a new page that takes commands (at once
    in phy 2.1, whose tables are rebuilt synchronously)."""
    if not _html_table(view):
        return True
    return bool(_js(view, 'typeof window.bcOldPage === "undefined" && '
                          'typeof table._currentSort === "function"'))


def header(view):
    """The column names the view shows."""
    if not _html_table(view):
        return list(view.columns)
    return list(_js(view, 'Array.prototype.map.call(document.querySelectorAll("#table thead th"),'
                          ' function (th) { return th.dataset.sort; })') or [])

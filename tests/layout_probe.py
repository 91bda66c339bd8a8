"""Open phy's Template GUI with the plugin as a curator does -- phy's default views, the window
at the screen's size (1920x1080 under ``xvfb-run -s "-screen 0 1920x1080x24"``), nothing resized
-- select clusters, and print what is visible as one JSON object on the last line of stdout.

Run by tests/test_layout_1920x1080.py in a subprocess under Xvfb (layout needs a real X screen;
the offscreen platform has none).  Usage: python layout_probe.py DATASET SELECTION [SELECTION...]
where a selection is comma-separated cluster ids; LAYOUT_PROBE_SCREENSHOT=file.png also saves
the window after the last selection.  Writes nothing into DATASET except what phy
and the plugin write themselves; phy's state goes to a temporary folder.
"""
import json
import os
import re
import sys
import tempfile
from pathlib import Path


def wait(app, ms):
    from phy.gui.qt import QTimer
    timer = QTimer()
    timer.setSingleShot(True)
    timer.start(ms)
    while timer.isActive():
        app.processEvents()


# phy 2.0's table is an HTML page: the same measures from its DOM.  Header cells' boxes relative
# to the page's visible area (clientWidth: without the vertical scroll bar); "needed" is the
# width of a cell's text on one line (canvas measureText in the cell's font) plus its padding.
_HTML_COLUMNS_JS = """(function () {
  var page = document.documentElement, ctx = document.createElement("canvas").getContext("2d");
  var columns = [];
  document.querySelectorAll("#table thead th").forEach(function (th) {
    var box = th.getBoundingClientRect(), needed = 0, wrapped = 0;
    document.querySelectorAll("#table tbody td." + CSS.escape(th.dataset.sort)).forEach(
      function (td) {
        var style = getComputedStyle(td);
        ctx.font = style.font;
        needed = Math.max(needed, ctx.measureText(td.textContent).width +
                          parseFloat(style.paddingLeft) + parseFloat(style.paddingRight));
        var range = document.createRange();
        range.selectNodeContents(td);
        if (range.getClientRects().length > 1) wrapped++;
      });
    columns.push({name: th.dataset.sort, x: Math.round(box.left), width: Math.round(box.width),
                  needed: Math.ceil(needed), wrapped_cells: wrapped});
  });
  return {viewport_width: page.clientWidth, sideways_scroll: page.scrollWidth - page.clientWidth,
          columns: columns};
})()"""


def _wait_js(table, expression):
    from phy.gui.qt import QApplication
    box = []
    table.page().runJavaScript(expression, box.append)
    while not box:
        QApplication.processEvents()
    return box[0]


def columns(table):
    """Each column's name, x and width, from the table's header (viewport coordinates)."""
    if not hasattr(table, "table_view"):  # phy 2.0: an HTML page in QtWebEngine
        return _wait_js(table, _HTML_COLUMNS_JS)
    view = table.table_view
    header = view.horizontalHeader()
    return {"viewport_width": view.viewport().width(),
            "columns": [{"name": table.columns[i], "x": header.sectionViewportPosition(i),
                         "width": header.sectionSize(i),
                         # the width its widest cell needs (Qt's resize-to-contents measure)
                         "needed": view.sizeHintForColumn(i)}
                        for i in range(len(table.columns))]}


def shortcut_owners(gui):
    from PyQt5.QtWidgets import QAction
    owners = {}
    for action in gui.findChildren(QAction):
        for key in action.shortcuts():
            if key.toString() and not action.text().startswith("_snippet"):
                owners.setdefault(key.toString(), []).append(action.text().replace("&", ""))
    for action in gui.menuBar().actions():
        mnemonic = re.search(r"&(\w)", action.text())
        if mnemonic:
            owners.setdefault("Alt+" + mnemonic.group(1).upper(), []).append(
                "menu " + action.text().replace("&", ""))
    return owners


def main(dataset, selections):
    import phy_bc_reason_plugin as plugin
    from phy.apps.template import TemplateController
    from phy.gui.qt import QApplication, Debouncer
    from phylib.io.model import get_template_params

    assert plugin.BombcellReasonPlugin  # registers the plugin class with phy
    app = QApplication.instance() or QApplication(sys.argv)
    Debouncer.delay = 1
    controller = TemplateController(
        config_dir=Path(tempfile.mkdtemp()), plugins=[plugin.PLUGIN_NAME], clear_cache=True,
        clear_state=True, enable_threading=False, **get_template_params(Path(dataset) / "params.py"))
    gui = controller.create_gui(do_prompt_save=False)
    gui.show()
    wait(app, 1500)
    while not controller.supervisor.cluster_view.is_ready():  # phy 2.0: its HTML page loads
        wait(app, 100)
    screen = app.primaryScreen().geometry()
    gui.setGeometry(0, 0, screen.width(), screen.height())  # maximised, as a curator opens it
    wait(app, 1000)
    supervisor = controller.supervisor
    view = gui.list_views(plugin.VIEW_NAME)[0]
    out = {"screen": [screen.width(), screen.height()],
           "cluster_view": columns(supervisor.cluster_view),
           "similarity_view": columns(supervisor.similarity_view),
           "shortcuts": shortcut_owners(gui),
           "view_width_before_selection": view.width(), "selections": []}
    for selection in selections:
        ids = [int(c) for c in selection.split(",")]
        supervisor.select(ids)
        supervisor.block()
        wait(app, 600)
        out["selections"].append({
            "ids": ids, "view_width": view.width(),
            "view_sideways_scroll": view.horizontalScrollBar().maximum(),
            "window_width": gui.frameGeometry().width()})
    out["cluster_view_after"] = columns(supervisor.cluster_view)
    if os.environ.get("LAYOUT_PROBE_SCREENSHOT"):  # to look at it by hand
        gui.grab().save(os.environ["LAYOUT_PROBE_SCREENSHOT"])
    gui.close()
    if hasattr(controller, "close"):  # phy 2.1 (phy 2.0's controller has no close)
        controller.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""Make docs/screenshot.png: phy's real Template GUI with the bombcell reason plugin.

How the picture was made (needs a display; Xvfb is enough, *not* the offscreen platform):

    bash scripts/install-system-deps.sh --screenshot        # xvfb + xauth
    python -c "import phy_bc_reason_demo as d; p = d.make_dataset('/tmp/shot/demo'); d.run_bombcell(p)"
    xvfb-run -s "-screen 0 1600x1000x24" python docs/make_screenshot.py /tmp/shot/demo

It opens phy 2.1's TemplateGUI on the demo dataset (with a temporary phy config_dir, so that
~/.phy is untouched), keeps a few views (cluster view, similarity view, waveform view, the
Bombcell reason view), selects a MUA cluster that fails several criteria, and grabs the window.
"""
import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", help="demo dataset folder (with params.py and bombcell results)")
    ap.add_argument("-o", "--output", default=str(HERE / "screenshot.png"))
    ap.add_argument("--cluster", type=int, default=None, help="cluster to select")
    ap.add_argument("--size", default="1600x1000")
    args = ap.parse_args(argv)

    import phy  # noqa: F401  (first, so that the plugin module registers its phy classes)
    from phy.apps.template import TemplateController
    from phy.gui.qt import QApplication, QTimer, Qt, Debouncer
    from phylib.io.model import get_template_params
    import phy_bc_reason_plugin as bcp

    assert bcp.BombcellReasonPlugin  # defines and registers the plugin class with phy
    dataset = Path(args.dataset)
    result = bcp.classify_dataset(dataset)

    cluster_id = args.cluster
    if cluster_id is None:  # a MUA/NON-SOMA cluster failing the most criteria
        def n_fail(c):
            return sum(k["status"] == "fail" for k in result.explain(c)["criteria"])
        candidates = [c for c in result.cluster_ids.tolist()
                      if str(result.label[c]).startswith(("MUA", "NON-SOMA"))]
        cluster_id = max(candidates, key=lambda c: (n_fail(c), str(result.label[c]) == "MUA"))
    print(f"selecting cluster {cluster_id}: {result.explain(cluster_id)['reason']}")

    app = QApplication.instance() or QApplication(sys.argv)
    Debouncer.delay = 1
    config_dir = Path(tempfile.mkdtemp(prefix="phy_config_"))
    controller = TemplateController(
        config_dir=config_dir, plugins=["BombcellReasonPlugin"], clear_cache=True,
        clear_state=True, enable_threading=False, **get_template_params(dataset / "params.py"))
    gui = controller.create_gui(
        default_views=("WaveformView",), view_count={"WaveformView": 1}, do_prompt_save=False)

    # Keep the picture legible: cluster view, similarity view, waveform view, reason view.
    keep = {"ClusterView", "SimilarityView", "WaveformView", bcp.VIEW_NAME}
    for view in list(gui.views):
        if type(view).__name__ not in keep:
            view.dock.close()

    w, h = (int(x) for x in args.size.split("x"))
    gui.show()

    def wait(ms):
        t = QTimer()
        t.setSingleShot(True)
        t.start(ms)
        while t.isActive():
            app.processEvents()

    wait(1000)
    gui.setGeometry(0, 0, w, h)  # after show: phy restores its saved geometry when shown
    wait(500)
    # Give the reason view room for its whole criteria table.
    docks = {type(v).__name__: v.dock for v in gui.views}
    order = ["ClusterView", "WaveformView", bcp.VIEW_NAME]
    widths = [int(w * f) for f in (0.34, 0.24, 0.42)]
    gui.resizeDocks([docks[n] for n in order if n in docks],
                    [x for n, x in zip(order, widths) if n in docks], Qt.Horizontal)
    wait(1000)
    controller.supervisor.select([cluster_id])
    controller.supervisor.block()
    wait(2500)
    # Grab the X screen rather than gui.grab(): phy's views are OpenGL windows.
    gui.raise_()
    wait(300)
    geo = gui.frameGeometry()
    app.primaryScreen().grabWindow(0, geo.x(), geo.y(), geo.width(), geo.height()).save(
        args.output)
    out = Path(args.output)
    if out.stat().st_size > 400_000:  # keep the repository light
        from PIL import Image
        Image.open(out).convert("RGB").quantize(colors=128, dither=Image.NONE).save(
            out, optimize=True)
    print(f"saved {out} ({out.stat().st_size // 1024} KB)")
    gui.close()
    controller.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

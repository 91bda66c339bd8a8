"""Make docs/screenshot.png: phy's real Template GUI with the bombcell reason plugin.

How the picture was made (needs a display; Xvfb is enough, *not* the offscreen platform):

    bash scripts/install-system-deps.sh --screenshot        # xvfb + xauth
    python -m phy_bc_reason_demo --no-gui --units 40 /tmp/shot/demo
    xvfb-run -a -s "-screen 0 1920x1080x24" python docs/make_screenshot.py /tmp/shot/demo

It opens phy 2.1's TemplateGUI on the demo dataset as a new user sees it: phy's default views
and layout, the window at the screen's size (1920x1080), nothing resized or closed (a temporary
phy config_dir, so ~/.phy is untouched).  It selects a MUA cluster that fails more than one
criterion and grabs the screen, so the README shows what users get.
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
    ap.add_argument("--size", default="1920x1080")
    args = ap.parse_args(argv)

    import phy  # noqa: F401  (first, so that the plugin module registers its phy classes)
    from phy.apps.template import TemplateController
    from phy.gui.qt import QApplication, QTimer, Debouncer
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
                      if str(result.label[result.row(c)]) == "MUA"]
        cluster_id = max(candidates, key=lambda c: (n_fail(c), -c))
    print(f"selecting cluster {cluster_id}: {result.explain(cluster_id)['reason']}")

    app = QApplication.instance() or QApplication(sys.argv)
    Debouncer.delay = 1
    config_dir = Path(tempfile.mkdtemp(prefix="phy_config_"))
    controller = TemplateController(
        config_dir=config_dir, plugins=["BombcellReasonPlugin"], clear_cache=True,
        clear_state=True, enable_threading=False, **get_template_params(dataset / "params.py"))
    gui = controller.create_gui(do_prompt_save=False)  # phy's default views and layout

    w, h = (int(x) for x in args.size.split("x"))
    gui.show()

    def wait(ms):
        t = QTimer()
        t.setSingleShot(True)
        t.start(ms)
        while t.isActive():
            app.processEvents()

    wait(1000)
    gui.setGeometry(0, 0, w, h)  # maximised; after show: phy restores its saved geometry then
    wait(1500)
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

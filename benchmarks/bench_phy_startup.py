"""phy's start with and without BombcellReasonPlugin, and the time to produce the dock view's
text for a selection.

Start = ``TemplateController(...)`` (model, plugins, supervisor) + ``create_gui()`` + shown with
the cluster and similarity views ready, offscreen, on a generated dataset of N clusters with real
bombcell results.  Every start runs in a fresh Python process (phy, Qt and the plugin module are
imported before the clock starts, as phy does before it builds the controller); the two variants
alternate, after one warm-up each (phy's .phy cache and our TSV are written once, as on a user's
first start).  Goal: at most 10% slower with the plugin; the view text in < 5 ms.

    python benchmarks/bench_phy_startup.py [--units 3000] [--repeat 5] [--dataset DIR]

Without ``--dataset`` the dataset is made with phy_bc_reason_demo (make_dataset + run_bombcell)
in ``--workdir`` (default: a folder in the system's temp dir, reused by later runs).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from pathlib import Path
dataset, config_dir, variant = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with_plugin = variant != "without"
from phy.apps.template import TemplateController
from phy.gui.qt import create_app
from phy.gui.widgets import Barrier
from phylib.io.model import get_template_params
from phylib.utils import connect
plugins, own, depth = [], {}, [0]
if with_plugin:
    import functools
    import {module} as mod
    plugin_cls, view_cls = mod._define_phy_classes()  # registered, as phy_config.py does
    plugins = ["BombcellReasonPlugin"]

    def timed(owner, name):  # the plugin's own time, outermost calls only
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    own[name] = own.get(name, 0.0) + time.perf_counter() - t
        setattr(owner, name, wrapper)

    for name in ("attach_to_controller", "_on_controller_ready", "_on_gui_ready", "reason"):
        timed(mod._PluginLogic, name)
    timed(view_cls, "attach")
    if variant == "shown":  # the user chose to show the raw metric columns (kept in GUI state)
        mod._PluginLogic._saved_state = lambda self: {"show_raw_metrics": True}
app = create_app()
params = get_template_params(dataset / "params.py")

t0 = time.perf_counter()
controller = TemplateController(config_dir=config_dir, plugins=plugins, clear_state=True,
                                enable_threading=False, **params)
t1 = time.perf_counter()
gui = controller.create_gui(do_prompt_save=False)
s = controller.supervisor
b = Barrier()
connect(b("cv"), event="ready", sender=s.cluster_view)
connect(b("sv"), event="ready", sender=s.similarity_view)
gui.show()
b.wait()
app.processEvents()
t2 = time.perf_counter()
assert ("bc_classificationReason" in controller.cluster_metrics) == with_plugin
n = len(s.clustering.cluster_ids)
gui.close()
controller.close()
print(json.dumps(dict(controller=t1 - t0, gui=t2 - t1, total=t2 - t0, n_clusters=n, own=own)))
"""


def make_dataset(workdir, n_units):
    """A dataset of ``n_units`` clusters with real bombcell results, made once and reused."""
    import phy_bc_reason_demo as demo
    path = Path(workdir) / f"phy_bc_bench_{n_units}"
    done = path / ".bench_ready"
    if not done.exists():
        print(f"making a {n_units}-cluster dataset with bombcell results in {path} "
              f"(once; bombcell takes a few minutes)...", flush=True)
        t = time.perf_counter()
        dataset = demo.make_dataset(path, n_units=n_units)
        demo.run_bombcell(dataset)
        Path(dataset).joinpath(".bench_ready").write_text(str(dataset))
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return Path(done.read_text())


VARIANTS = {
    "without": "without plugin",
    "hidden": "with plugin (raw metric columns hidden: the default)",
    "shown": "with plugin, raw metric columns shown",
}


def start_once(dataset, config_dir, variant, module):
    code = CHILD.replace("{module}", module)
    out = subprocess.run([sys.executable, "-c", code, str(dataset), str(config_dir), variant],
                         capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    if out.returncode != 0:
        sys.exit(f"a phy start failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_startup(dataset, repeat, module):
    config_dir = Path(tempfile.mkdtemp(prefix="phy_bc_bench_config_"))
    runs = {v: [] for v in VARIANTS}
    for variant in VARIANTS:  # warm-up: phy's cache, our TSV
        start_once(dataset, config_dir / variant, variant, module)
    for i in range(repeat):
        order = list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]
        for variant in order:
            runs[variant].append(start_once(dataset, config_dir / variant, variant, module))
    return runs


def bench_view_text(dataset, module, n_selections=300):
    """Time to produce the view's HTML for a selection (cold: first time a cluster is shown;
    warm: shown before), and Qt's QTextBrowser.setHtml of it, in this process."""
    import importlib
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    mod = importlib.import_module(module)
    t = time.perf_counter()
    book = mod.ReasonBook.load(dataset)
    t_load = time.perf_counter() - t
    if not book.ok:
        sys.exit(f"bombcell results unreadable: {book.error}")
    import numpy as np
    ids = book.classification.cluster_ids
    rng = np.random.default_rng(0)
    chosen = rng.choice(ids, size=min(n_selections, len(ids)), replace=False).tolist()
    cold, warm, pairs = [], [], []
    for c in chosen:
        t = time.perf_counter()
        book.html([c])
        cold.append(time.perf_counter() - t)
    for c in chosen:
        t = time.perf_counter()
        book.html([c])
        warm.append(time.perf_counter() - t)
    for a, b in zip(chosen[::2], chosen[1::2]):  # a cluster + a similar cluster, both cold
        book._html.clear()
        t = time.perf_counter()
        book.html([a, b])
        pairs.append(time.perf_counter() - t)
    from phy.gui.qt import create_app
    from PyQt5.QtWidgets import QTextBrowser
    create_app()
    browser = QTextBrowser()
    set_html = []
    for c in chosen[:100]:
        html = book.html([c])
        t = time.perf_counter()
        browser.setHtml(html)
        set_html.append(time.perf_counter() - t)
    lookups = time.perf_counter()
    for c in ids.tolist():
        book.reason(c)
    lookups = (time.perf_counter() - lookups) / len(ids)
    return dict(load=t_load, cold=cold, warm=warm, pairs=pairs, set_html=set_html,
                lookup=lookups, n=len(ids))


def ms(x):
    return f"{1000 * x:7.1f} ms"


def us(x):
    return f"{1e6 * x:7.1f} us"


def describe(xs, unit=ms):
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
    return f"median {unit(statistics.median(xs))}  p95 {unit(p95)}  max {unit(xs[-1])}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=3000, help="clusters in the generated dataset")
    parser.add_argument("--repeat", type=int, default=5, help="starts per variant")
    parser.add_argument("--dataset", help="use this dataset (with bombcell results) instead")
    parser.add_argument("--workdir", default=tempfile.gettempdir(),
                        help="where the generated dataset is kept between runs")
    parser.add_argument("--module", default="phy_bc_reason_plugin",
                        help="module holding BombcellReasonPlugin")
    args = parser.parse_args(argv)
    dataset = Path(args.dataset) if args.dataset else make_dataset(args.workdir, args.units)

    runs = bench_startup(dataset, args.repeat, args.module)
    n = runs["without"][0]["n_clusters"]
    print(f"\nphy start on {dataset} ({n} clusters), {args.repeat} starts each, fresh processes "
          f"(controller + GUI shown with both tables ready; median):")
    med = {}
    for variant, name in VARIANTS.items():
        r = runs[variant]
        med[variant] = m = {k: statistics.median(x[k] for x in r)
                            for k in ("controller", "gui", "total")}
        print(f"  {name}:\n      total {ms(m['total'])} (controller {ms(m['controller'])}, "
              f"GUI {ms(m['gui'])})   runs: " + " ".join(f"{x['total']:.2f}" for x in r))
        if variant != "without":
            own = {k: statistics.median(x["own"].get(k, 0.0) for x in r) for k in r[0]["own"]}
            print(f"      plugin's own code {ms(sum(own.values()))}: "
                  + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in own.items()))
            overhead = m["total"] / med["without"]["total"] - 1
            print(f"      vs without: {100 * overhead:+.1f}% "
                  f"({ms(m['total'] - med['without']['total'])}) -> goal <= +10%: "
                  f"{'met' if overhead <= 0.10 else 'NOT met'}")

    v = bench_view_text(dataset, args.module)
    print(f"\nview text for a selection ({v['n']} clusters; classification read in {ms(v['load'])}):")
    print(f"  one cluster, first time shown : {describe(v['cold'])}")
    print(f"  one cluster, shown before     : {describe(v['warm'])}")
    print(f"  two clusters, first time      : {describe(v['pairs'])}")
    print(f"  QTextBrowser.setHtml (Qt)     : {describe(v['set_html'])}")
    print(f"  column value (per cluster)    : {us(v['lookup'])}")
    worst = max(statistics.median(v["cold"]), statistics.median(v["pairs"]))
    print(f"  -> goal < 5 ms: {'met' if worst < 0.005 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long `suggest` (bombcell's suggest_parameter_adjustments, reproduced with numpy) and
`concordance` take for 2,000 labelled units; bombcell's own function on the same input for
comparison.  Run: .venv/bin/python benchmarks/bench_concordance.py"""
import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import phy_bc_reason_plugin as pr  # noqa: E402
from bombcell_tables import DEFAULTS, write_results  # noqa: E402
from test_concordance import assert_same_rows, bombcell_suggest  # noqa: E402

N_UNITS = 2000


def best_of(f, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            write_results(tmp, DEFAULTS, n_units=N_UNITS, seed=0)
        result = pr.classify_dataset(tmp)
    rng = np.random.default_rng(0)
    # labels that mostly follow bombcell's, so that every criterion has 20+ units per class
    labels = {int(c): ("noise" if b == "NOISE" else "mua" if "MUA" in b else "good")
              for c, b in zip(result.cluster_ids, result.label) if b}
    for c in rng.choice(sorted(labels), len(labels) // 10, replace=False):
        labels[int(c)] = str(rng.choice(pr.CURATOR_GROUPS))
    seconds, rows = best_of(lambda: pr.suggest(result, labels))
    statuses = {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    print(f"suggest:     {len(labels)} labelled units, {len(rows)} parameters "
          f"({statuses}): {seconds:.3f} s")
    seconds, _ = best_of(lambda: pr.concordance(result, labels))
    print(f"concordance: {len(labels)} labelled units: {1000 * seconds:.1f} ms")
    # In phy: the view's HTML and Qt's layout of it in the GUI thread, and how long the GUI
    # thread waits for the interpreter while the suggestions are computed in the worker thread.
    import os
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PyQt5.QtWidgets import QApplication, QTextBrowser
    app = QApplication.instance() or QApplication([])
    info = pr.concordance(result, labels)
    browser = QTextBrowser()
    browser.resize(253, 900)  # the view's size in phy's default layout at 1920x1080
    seconds, _ = best_of(lambda: (browser.setHtml(pr.concordance_html(info, rows)),
                                  browser.document().size()))
    print(f"view HTML + layout: {len(info['disagreements'])} disagreements, "
          f"{1000 * seconds:.1f} ms")
    import threading
    worker = threading.Thread(target=pr.suggest, args=(result, labels))
    gaps, t0 = [], time.perf_counter()
    worker.start()
    while worker.is_alive():
        t = time.perf_counter()
        time.sleep(0.001)
        gaps.append(time.perf_counter() - t - 0.001)
    print(f"GUI thread while suggest runs in the worker ({time.perf_counter() - t0:.2f} s): "
          f"longest wait {1000 * max(gaps):.1f} ms, median {1000 * np.median(gaps):.1f} ms")
    app.processEvents()
    t = time.perf_counter()
    theirs = bombcell_suggest(result, labels)
    seconds = time.perf_counter() - t
    assert_same_rows(rows, theirs)
    print(f"bombcell's suggest_parameter_adjustments, same input: {seconds:.1f} s (same rows)")


if __name__ == "__main__":
    main()

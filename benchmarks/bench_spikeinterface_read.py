"""Reading and classifying a SpikeInterface-route folder (run_bombcell_qc's CSV/JSON) of N units:
``classify_dataset`` and ``export``, in-process, best of several runs.  The folder is written
without SpikeInterface (tests/spikeinterface_data.py writes it as pandas would), on a generated
phy folder of N clusters.

    python benchmarks/bench_spikeinterface_read.py [--units 10000] [--repeat 5]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import phy_bc_reason_plugin as pr  # noqa: E402
import spikeinterface_data as sid  # noqa: E402


def best_of(repeat, f):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "phy"
        dataset.mkdir()
        spikes = np.repeat(np.arange(args.units), 50).astype(np.int32)
        np.save(dataset / "spike_clusters.npy", spikes)
        sid.write_si_folder_without_spikeinterface(dataset)
        n_rules = len(pr.classify_dataset(dataset).rules)
        classify = best_of(args.repeat, lambda: pr.classify_dataset(dataset))
        export = best_of(args.repeat, lambda: pr.export(dataset))
    print(f"SpikeInterface route, {args.units} units x {n_rules} criteria: "
          f"classify_dataset {classify * 1000:.0f} ms, export (+ TSV) {export * 1000:.0f} ms "
          f"(best of {args.repeat})")


if __name__ == "__main__":
    main()

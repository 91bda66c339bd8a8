"""What-if and summary speed: ``classify_dataset(DIR).what_if({...})`` on N units.

Generated bombcell results (bombcell's own savers, tests/bombcell_tables.py) of N units are read
once; then each repeat times one what-if with a different threshold (so no cached text is
reused for the changed criterion), the summary (sole blockers of every criterion) and what the
metric view computes for a selection.  Goal:
median what-if <= 50 ms for 10,000 units.

    python benchmarks/bench_whatif.py [--units 10000] [--repeat 21]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()

    import phy_bc_reason_plugin as pr
    from bombcell_tables import write_results

    with tempfile.TemporaryDirectory() as tmp:
        write_results(tmp, n_units=args.units, seed=1)
        t = time.perf_counter()
        result = pr.classify_dataset(tmp)
        load = time.perf_counter() - t
    whatif, summary = [], []
    for i in range(args.repeat):
        changes = {"maxRPVviolations": 0.2 + 0.01 * i, "minNumSpikes": 100 + i,
                   "minPresenceRatio": 0.5}
        t = time.perf_counter()
        new = result.what_if(changes)
        whatif.append(time.perf_counter() - t)
        t = time.perf_counter()
        new.summary()
        summary.append(time.perf_counter() - t)
    print(f"{len(result)} units; classify_dataset (reads the files): {load * 1000:.0f} ms")
    print(f"what_if (3 thresholds changed): median {statistics.median(whatif) * 1000:.1f} ms, "
          f"max {max(whatif) * 1000:.1f} ms over {args.repeat} runs (goal: median <= 50 ms "
          f"for 10,000 units)")
    print(f"summary (sole blockers of all {len(pr.RULES)} criteria + quantiles): median "
          f"{statistics.median(summary) * 1000:.1f} ms")
    plots = []
    for i in range(args.repeat):
        cluster_id = int(result.cluster_ids[i * 37 % len(result)])
        t = time.perf_counter()
        pr.metric_plot(result, pr.default_rule_index(result, [cluster_id], 0), [cluster_id])
        plots.append(time.perf_counter() - t)
    print(f"metric view data for a selection (criterion, histogram, marks): median "
          f"{statistics.median(plots) * 1000:.1f} ms")
    print("labels:", pr.label_counts(result.label), "-> what-if:", pr.label_counts(new.label))


if __name__ == "__main__":
    main()

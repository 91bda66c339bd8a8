"""Whole-process time and peak memory: `phy-bc-reason export` against the notebook approach.

The notebook approach is what this project replaces: import bombcell, `load_bc_results`,
`get_quality_unit_type`, then a Python loop over units that checks every threshold and builds a
reason, then a TSV written with pandas.  Both run on the same generated bombcell results
(written with bombcell's own savers) of N units, each in a fresh Python process, several times.

    python benchmarks/bench_export.py [--units 10000] [--repeat 3]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# Run `code` in a fresh interpreter, then report its own peak resident memory (kB) on stderr.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec.
WRAPPER = """
import sys
{code}
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print("MAXRSS", peak.split()[1], file=sys.stderr)
"""

BARE_IMPORT = """
import numpy, pyarrow.parquet
"""

EXPORT = """
import phy_bc_reason_plugin
rc = phy_bc_reason_plugin.main(["export", sys.argv[1]])
"""

NOTEBOOK = """
import numpy as np, pandas as pd
import bombcell as bc
from pathlib import Path
dataset = Path(sys.argv[1])
param, qm, _ = bc.load_bc_results(str(dataset / "bombcell"))
unit_type, unit_type_string = bc.get_quality_unit_type(param, qm)
checks = [  # (metric, op, param) as the notebook spelled them out
    ("nPeaks", ">", "maxNPeaks"), ("nTroughs", ">", "maxNTroughs"),
    ("waveformDuration_peakTrough", "<", "minWvDuration"),
    ("waveformDuration_peakTrough", ">", "maxWvDuration"),
    ("waveformBaselineFlatness", ">", "maxWvBaselineFraction"),
    ("scndPeakToTroughRatio", ">", "maxScndPeakToTroughRatio_noise"),
    ("spatialDecaySlope", "<", "minSpatialDecaySlopeExp"),
    ("spatialDecaySlope", ">", "maxSpatialDecaySlopeExp"),
    ("percentageSpikesMissing_gaussian", ">", "maxPercSpikesMissing"),
    ("nSpikes", "<", "minNumSpikes"), ("fractionRPVs_estimatedTauR", ">", "maxRPVviolations"),
    ("presenceRatio", "<", "minPresenceRatio"), ("rawAmplitude", "<", "minAmplitude"),
    ("signalToNoiseRatio", "<", "minSNR"),
    ("troughToPeak2Ratio", "<", "minTroughToPeak2Ratio_nonSomatic"),
    ("mainPeak_before_width", "<", "minWidthFirstPeak_nonSomatic"),
    ("mainTrough_width", "<", "minWidthMainTrough_nonSomatic"),
    ("peak1ToPeak2Ratio", ">", "maxPeak1ToPeak2Ratio_nonSomatic"),
    ("mainPeakToTroughRatio", ">", "maxMainPeakToTroughRatio_nonSomatic"),
]
rows = []
for i in range(len(qm)):
    unit = qm.iloc[i]
    failed = []
    for metric, op, name in checks:
        value, threshold = unit[metric], param[name]
        if (op == ">" and value > threshold) or (op == "<" and value < threshold):
            failed.append(f"{metric}{op}{name} ({value:.3g} {op} {threshold})")
    label = unit_type_string[i]
    rows.append({"cluster_id": int(unit["phy_clusterID"]),
                 "bc_classificationReason": f"{label}: " + (failed[0] if failed else "passed")})
pd.DataFrame(rows).to_csv(dataset / "cluster_bc_classificationReason.tsv", sep="\\t", index=False)
"""


def measure(code, dataset, repeat):
    seconds, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", WRAPPER.format(code=code), str(dataset)],
                              capture_output=True, text=True, cwd=ROOT)
        seconds.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"benchmark run failed:\n{proc.stderr}")
        peaks.append(int(proc.stderr.split("MAXRSS")[-1].split()[0]) / 1024)
    return statistics.median(seconds), max(peaks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from bombcell_tables import DEFAULTS, write_results

    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "dataset"
        write_results(dataset, params=DEFAULTS, n_units=args.units, seed=0)
        bare = measure(BARE_IMPORT, dataset, args.repeat)
        ours = measure(EXPORT, dataset, args.repeat)
        notebook = measure(NOTEBOOK, dataset, args.repeat)
    print(f"{args.units} units, median of {args.repeat} runs, each a fresh Python process")
    print(f"{'':28}{'seconds':>10}{'peak MB':>10}")
    print(f"{'import numpy, pyarrow.parquet':28}{bare[0]:10.2f}{bare[1]:10.0f}")
    print(f"{'phy-bc-reason export':28}{ours[0]:10.2f}{ours[1]:10.0f}"
          f"   ({ours[0] / bare[0]:.2f}x the bare import; goal <= 1.5x)")
    print(f"{'notebook (bombcell + loop)':28}{notebook[0]:10.2f}{notebook[1]:10.0f}")
    print(f"speed-up {notebook[0] / ours[0]:.1f}x, memory {notebook[1] / ours[1]:.1f}x less")


if __name__ == "__main__":
    main()

"""Re-running bombcell (``phy-bc-reason rerun``, what phy's *Re-run bombcell* starts in a child
process) with real bombcell on the demo dataset: saved clustering, saved parameters, swap on
success, nothing touched on failure."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from test_engine import snapshot

PLUGIN = Path(pr.__file__).resolve()


def copy_dataset(source, target):
    """A copy that may be changed (the raw file hard-linked: it is only read)."""
    shutil.copytree(source, target, copy_function=os.link)
    for path in Path(target).rglob("*"):  # break the links of everything but the raw data
        if path.is_file() and path.suffix != ".bin":
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
    return Path(target)


def rerun(dataset, *args):
    """The child process phy starts: this file run as a script."""
    return subprocess.run([sys.executable, "-u", str(PLUGIN), "rerun", str(dataset), *args],
                          capture_output=True, text=True, encoding="utf-8", timeout=600)


def test_rerun_uses_the_saved_clustering_and_swaps_on_success(demo_dataset, tmp_path):
    dataset = copy_dataset(demo_dataset, tmp_path / "ds")
    before = pr.classify_dataset(dataset)
    # A merge saved by phy: two clusters' spikes under a new id, as phy writes spike_clusters.npy.
    spike_clusters = np.load(dataset / "spike_clusters.npy")
    a, b = [int(c) for c in before.cluster_ids[before.label == "GOOD"][:2]]
    new_id = int(spike_clusters.max()) + 1
    spike_clusters[np.isin(spike_clusters, [a, b])] = new_id
    np.save(dataset / "spike_clusters.npy", spike_clusters)
    old_results = snapshot(dataset / "bombcell")

    proc = rerun(dataset, "--set", "maxRPVviolations=0.3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == pr.RERUN_DONE
    assert "maxRPVviolations=0.3" in proc.stdout
    after = pr.classify_dataset(dataset)
    assert after.params["maxRPVviolations"] == 0.3
    assert new_id in after.cluster_ids.tolist()  # the merged cluster has a real bombcell row
    assert after.explain(new_id)["label"] in ("GOOD", "MUA", "NOISE", "NON-SOMA")
    assert snapshot(dataset / pr.PREVIOUS_DIRNAME) == old_results  # the old results kept
    assert not list(dataset.glob(pr.RERUN_PREFIX + "*"))
    unit_types = pr.read_cluster_tsv(dataset / pr.UNIT_TYPE_TSV)  # bombcell's TSV for phy, new
    assert unit_types[new_id] == after.label[after.row(new_id)]
    assert pr.foreign_results_problem(after, dataset) is None


def test_failed_rerun_changes_nothing(demo_dataset, tmp_path):
    dataset = copy_dataset(demo_dataset, tmp_path / "ds")
    assert pr.main(["export", str(dataset)]) == 0
    (dataset / "templates.npy").write_bytes(b"not a numpy file")  # bombcell fails to load it
    before = snapshot(dataset)
    proc = rerun(dataset)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("phy-bc-reason: error: bombcell failed")
    assert "previous results are untouched" in proc.stderr
    assert snapshot(dataset) == before  # results, bombcell's TSVs and our TSV untouched
    assert not list(dataset.glob(pr.RERUN_PREFIX + "*"))


def test_rerun_without_the_raw_file_says_which_tests_are_off(demo_dataset, tmp_path):
    dataset = copy_dataset(demo_dataset, tmp_path / "ds")
    params = pr._read_params(dataset / "bombcell" / pr.PARAMS_FILE)
    from bombcell.save_utils import save_params_as_parquet_and_csv
    save_params_as_parquet_and_csv(dict(params, raw_data_file=str(tmp_path / "gone.bin")),
                                   dataset / "bombcell")
    plan, notes = pr.rerun_plan(dataset)
    assert plan["extractRaw"] is False and plan["raw_data_file"] is None
    assert "rawAmplitude<minAmplitude" in notes[0] and "signalToNoiseRatio<minSNR" in notes[0]
    proc = rerun(dataset)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "raw-data tests are off" in proc.stdout
    after = pr.classify_dataset(dataset)
    assert after.params["extractRaw"] is False
    assert all(s == pr.STATUSES.index("disabled") for s in after.status[
        [i for i, r in enumerate(pr.RULES) if r.name == "rawAmplitude<minAmplitude"][0]])


def test_rerun_with_a_bad_setting_starts_nothing(demo_dataset, tmp_path):
    dataset = copy_dataset(demo_dataset, tmp_path / "ds")
    before = snapshot(dataset)
    proc = rerun(dataset, "--set", "maxRPVviolations=much")
    assert proc.returncode == 1 and "bad value for threshold maxRPVviolations" in proc.stderr
    assert snapshot(dataset) == before

"""Results of another sorting (copied next to this dataset, or stale after Kilosort ran again)
are detected from bombcell's nSpikes, on the CLI and inside phy's real Template GUI; a curated
dataset (merges and splits in phy) is not taken for a foreign one.  Real data: the demo dataset
with real bombcell results."""
import os
import shutil

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import phy_bc_reason_demo  # noqa: E402
import phy_bc_reason_plugin as pr  # noqa: E402
from test_phy_plugin import Phy, column_values, copy_dataset, snapshot  # noqa: E402


@pytest.fixture
def dataset(demo_dataset, tmp_path):
    return copy_dataset(demo_dataset, tmp_path)


def test_bombcell_nspikes_equals_the_spike_file_on_a_real_run(demo_dataset):
    result = pr.classify_dataset(demo_dataset)
    counts, name = pr.spike_counts(demo_dataset)
    assert name in pr.SPIKE_FILES
    now = np.array([counts[c] if c < len(counts) else 0 for c in result.cluster_ids])
    assert (result.metrics["nSpikes"] == now).all()
    assert pr.foreign_results_problem(result, demo_dataset) is None


def test_another_sortings_results_refused(dataset, tmp_path, capsys):
    """Kilosort ran again in the folder (another seed: other spikes, mostly the same ids)."""
    other = tmp_path / "other"
    phy_bc_reason_demo.make_dataset(other, seed=1)
    for name in pr.SPIKE_FILES:
        if (other / name).exists():
            shutil.copy2(other / name, dataset / name)
    before = snapshot(dataset)
    assert pr.main(["export", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "nSpikes disagrees" in err and "another sorting" in err and "Traceback" not in err
    assert snapshot(dataset) == before  # nothing written
    assert pr.main(["explain", str(dataset)]) == 1


def test_spikes_reassigned_among_the_same_ids_refused(dataset):
    spikes = np.load(dataset / "spike_templates.npy").ravel()
    rng = np.random.default_rng(0)
    moved = rng.random(len(spikes)) < 0.2
    spikes = spikes.copy()
    spikes[moved] = rng.choice(np.unique(spikes), moved.sum())  # same ids, other spikes
    np.save(dataset / "spike_templates.npy", spikes)
    (dataset / "spike_clusters.npy").unlink(missing_ok=True)
    with pytest.raises(pr.BombcellReasonError, match="nSpikes disagrees"):
        pr.dataset_reasons(dataset)


def _curate(dataset):
    """Merges and a split as phy does them: new ids above every old one, parents gone."""
    path = dataset / ("spike_clusters.npy" if (dataset / "spike_clusters.npy").exists()
                      else "spike_templates.npy")
    spikes = np.load(path).ravel().astype(np.int64)
    ids = np.unique(spikes)
    a, b, c, d = ids[:4]
    new = ids.max() + 1
    spikes[np.isin(spikes, [a, b])] = new  # merge a + b
    spikes[spikes == c] = np.where(np.arange((spikes == c).sum()) % 2, new + 1, new + 2)  # split c
    spikes[np.isin(spikes, [d, new + 1])] = new + 3  # merge d into a split part
    np.save(dataset / "spike_clusters.npy", spikes)
    return [a, b, c, d], [new, new + 2, new + 3]


def test_curated_dataset_is_not_foreign(dataset):
    parents, children = _curate(dataset)
    result, reasons, notes = pr.dataset_reasons(dataset)
    assert pr.foreign_results_problem(result, dataset) is None
    for child in children:
        assert reasons[child].startswith(pr.UNCLASSIFIED)
    assert any("no bombcell row" in n for n in notes)


def test_duplicate_spikes_removed_by_bombcell_are_allowed_for(dataset):
    """removeDuplicateSpikes: bombcell counted fewer spikes than the file holds."""
    params = dataset / "bombcell" / pr.PARAMS_FILE
    import pandas as pd
    table = pd.read_parquet(params)
    metrics = pd.read_parquet(dataset / "bombcell" / pr.METRICS_FILE)
    n = metrics["nSpikes"].to_numpy()
    metrics["nSpikes"] = np.where(n > 10, n - 3, n)  # 3 duplicates removed per unit
    metrics.to_parquet(dataset / "bombcell" / pr.METRICS_FILE)
    assert pr.foreign_results_problem(pr.classify_dataset(dataset), dataset) is not None
    table["removeDuplicateSpikes"] = True
    table.to_parquet(params)
    assert pr.foreign_results_problem(pr.classify_dataset(dataset), dataset) is None
    # More spikes than the file holds is never a duplicate removal.
    metrics["nSpikes"] = np.where(n > 10, n + 3, n)
    metrics.to_parquet(dataset / "bombcell" / pr.METRICS_FILE)
    assert pr.foreign_results_problem(pr.classify_dataset(dataset), dataset) is not None


def test_spike_count_check_is_fast_enough_to_print(tmp_path, capsys):
    """Not a timed test: prints the figure (tens of millions of spikes)."""
    import time
    n = 30_000_000
    np.save(tmp_path / "spike_clusters.npy",
            np.random.default_rng(0).integers(0, 1000, n, dtype=np.int32))
    start = time.perf_counter()
    counts, _ = pr.spike_counts(tmp_path)
    elapsed = time.perf_counter() - start
    assert counts.sum() == n
    with capsys.disabled():
        print(f"\nspike counts of {n:,} spikes (np.load + np.bincount): {elapsed * 1000:.0f} ms")


@pytest.mark.gui
def test_foreign_results_said_inside_phy(qtbot, tmp_path, dataset):
    """Another sorting's results next to the data: phy opens, the column and the status bar say
    so, and nothing is written."""
    other = tmp_path / "other"
    phy_bc_reason_demo.make_dataset(other, seed=1)  # same cluster ids, other spikes
    shutil.copytree(dataset / "bombcell", other / "bombcell")
    dataset = other
    phy = Phy(qtbot, tmp_path / "config")
    try:
        controller, gui = phy.open(dataset)
        shown = set(column_values(controller.supervisor.cluster_view).values())
        assert len(shown) == 1
        text = shown.pop()
        # The column says it in short (it must fit phy's cluster view), the status bar in full.
        assert text == pr.FOREIGN_RESULTS_REASON
        assert "nSpikes disagrees" in gui.status_message
        assert not (dataset / pr.TSV_NAME).exists()
    finally:
        phy.close_all()

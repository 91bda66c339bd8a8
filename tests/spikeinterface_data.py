"""Test data for the SpikeInterface route (bombcell's ``run_bombcell_qc`` + SpikeInterface's
``bombcell_label_units``): random metric tables and threshold dictionaries, the reference labels
from the real ``bombcell_label_units``, result folders written as ``run_bombcell_qc`` writes them,
and a small end-to-end phy dataset (ground-truth recording -> analyzer -> ``export_to_phy`` ->
``run_bombcell_qc`` into ``<phy folder>/bombcell``).

SpikeInterface is a test-only dependency (setup.cfg extra ``test-spikeinterface``, the version
below): it needs numpy >= 2, so the phy 2.0b5 environment (numpy 1.23.5) does not have it, and
the tests that need it skip there, saying so.  In the phy 2.1 environment a missing
SpikeInterface is an error, never a skip: those tests must run in CI.
"""
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

SI_VERSION = "0.105.3"  # the version whose bombcell_label_units the plugin's SI rules follow
PHY20_ENV = "phy-2.0b5"


def spikeinterface_or_skip():
    """The ``spikeinterface`` module (the pinned version), or a skip in the phy 2.0b5 env."""
    try:
        import spikeinterface
        import spikeinterface.curation  # noqa: F401
    except ImportError:
        if os.environ.get("PHY_BC_REASON_ENV") == PHY20_ENV:
            pytest.skip(f"SpikeInterface {SI_VERSION} needs numpy >= 2; the phy 2.0b5 environment "
                        f"has numpy 1.23.5 (these tests run in the phy 2.1 environment)",
                        allow_module_level=True)
        raise
    assert spikeinterface.__version__ == SI_VERSION, (
        f"the SI rules follow SpikeInterface {SI_VERSION}, found {spikeinterface.__version__}: "
        f"make test installs the pinned version (setup.cfg, extra test-spikeinterface)")
    return spikeinterface


# -- random metric tables and threshold dictionaries ---------------------------------------------

NOISE_METRICS = ["num_positive_peaks", "num_negative_peaks", "peak_to_trough_duration",
                 "waveform_baseline_flatness", "peak_after_to_trough_ratio", "exp_decay"]
MUA_METRICS = ["amplitude_median", "snr", "amplitude_cutoff", "num_spikes", "sliding_rp_violation",
               "presence_ratio", "drift_ptp", "isolation_distance", "l_ratio", "rp_contamination"]
NON_SOMATIC_METRICS = ["peak_before_to_trough_ratio", "peak_before_width", "trough_width",
                       "peak_before_to_peak_after_ratio", "main_peak_to_trough_ratio"]
# Extra non-somatic metrics (not in SI's built-in groups), and a metric never computed.
EXTRA_METRICS = ["spread", "velocity_above", "recovery_slope"]
NEVER_COMPUTED = "never_computed_metric"
SECTIONS = {"noise": NOISE_METRICS + EXTRA_METRICS,
            "mua": MUA_METRICS + EXTRA_METRICS,
            "non-somatic": NON_SOMATIC_METRICS + EXTRA_METRICS}
TABLE_METRICS = sorted(set(NOISE_METRICS + MUA_METRICS + NON_SOMATIC_METRICS + EXTRA_METRICS))


def random_thresholds(rng):
    """A threshold dictionary as a user might pass to run_bombcell_qc: every section a random
    subset of metrics (sometimes empty or absent), each side a number, None or NaN (disabled),
    sometimes ``abs``, sometimes a metric that is not a column of the table."""
    thresholds = {}
    for section, names in SECTIONS.items():
        if rng.random() < 0.08:
            continue  # section absent
        chosen = [m for m in names if rng.random() < (0.25 if m in EXTRA_METRICS else 0.75)]
        if rng.random() < 0.15:
            chosen.append(NEVER_COMPUTED)
        entry = {}
        for metric in chosen:
            sides = {}
            for side in ("greater", "less"):
                r = rng.random()
                if r < 0.3:
                    sides[side] = None
                elif r < 0.36:
                    sides[side] = float("nan")
                elif r < 0.4:
                    continue  # the key absent: SI's .get gives None
                else:
                    sides[side] = float(np.round(rng.normal(0.5, 1.0), int(rng.integers(0, 4))))
            g, l = sides.get("greater"), sides.get("less")
            if g is not None and l is not None and g > l and rng.random() < 0.9:
                sides["greater"], sides["less"] = l, g  # mostly a range some values pass
            if rng.random() < 0.25:
                sides["abs"] = bool(rng.random() < 0.7)
            entry[metric] = sides
        thresholds[section] = entry
    return thresholds


def _passing_values(rng, n, sides):
    """n values that pass a metric's sides (where they can: greater > less passes nothing)."""
    g, l = sides.get("greater"), sides.get("less")
    g = None if g is None or g != g else g
    l = None if l is None or l != l else l
    spread = np.abs(rng.normal(0, 1.0, n))
    if g is not None and l is not None:
        values = g + (l - g) * rng.random(n) if g <= l else np.full(n, g)
    elif g is not None:
        values = g + spread
    elif l is not None:
        values = l - spread
    else:
        values = rng.normal(0, 2.0, n)
    if sides.get("abs"):
        values = np.abs(values) * rng.choice([-1.0, 1.0], n)  # |value| passes
    return values


def _metric_values(rng, n, sides, p_pass):
    """Mostly passing values; the rest exactly at a bound (inclusive: passes), just around the
    bounds, far off on either sign, NaN or +-inf."""
    values = _passing_values(rng, n, sides)
    bounds = [b for b in (sides.get("greater"), sides.get("less")) if b is not None and b == b]
    bound = rng.choice(bounds, n) if bounds else rng.normal(0, 1.0, n)
    kind = rng.random(n)
    odd = kind >= p_pass
    u = rng.random(n)
    near = bound + rng.normal(0, 0.05, n) * (np.abs(bound) + 0.01)
    values = np.where(odd & (u < 0.15), bound, values)
    values = np.where(odd & (u >= 0.15) & (u < 0.55), near, values)
    values = np.where(odd & (u >= 0.55) & (u < 0.7), -near, values)
    values = np.where(odd & (u >= 0.7) & (u < 0.9), np.nan, values)
    values = np.where(odd & (u >= 0.9) & (u < 0.95), np.inf, values)
    values = np.where(odd & (u >= 0.95), -np.inf, values)
    return values


def random_metrics(rng, thresholds, n_units, string_ids=False):
    """A metrics table (pandas, index = SI unit ids in 'analyzer order'): every TABLE_METRICS
    column, its values mostly passing the metric's first thresholds, the rest at, around and far
    from them, NaN and +-inf, of both signs (``abs``)."""
    import pandas as pd
    first_sides = {}
    for section in thresholds.values():
        for metric, sides in section.items():
            first_sides.setdefault(metric, sides)
    p_pass = rng.choice([0.9, 0.96, 0.985])
    data = {m: _metric_values(rng, n_units, first_sides.get(m, {}), p_pass) for m in TABLE_METRICS}
    ids = rng.permutation(n_units * 3)[:n_units]
    index = [f"u{i}" for i in ids] if string_ids else ids
    return pd.DataFrame(data, index=pd.Index(index))


def si_labels(metrics, thresholds, split):
    """The real SpikeInterface labels (``bombcell_label_units``), as an array of strings."""
    from spikeinterface.curation import bombcell_label_units
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "These metrics have not been computed ..."
        labels = bombcell_label_units(external_metrics=metrics, thresholds=thresholds,
                                      split_non_somatic=split)
    return labels["bombcell_label"].to_numpy().astype(str)


def write_si_results(folder, metrics, labels, thresholds, split, compute_valid_periods=False):
    """The files run_bombcell_qc writes, written as it writes them: SpikeInterface's
    save_bombcell_results (wide CSV; the narrow one is skipped: slow on thousands of units and
    not read by the plugin), thresholds.json and bombcell_config.json with json.dump."""
    from spikeinterface.curation import save_bombcell_results
    folder = Path(folder)
    save_bombcell_results(metrics=metrics, unit_label=np.asarray(labels), thresholds=thresholds,
                          folder=folder, save_narrow=False)
    with open(folder / "thresholds.json", "w") as f:
        json.dump(thresholds, f, indent=2)
    with open(folder / "bombcell_config.json", "w") as f:
        json.dump({"split_non_somatic": split, "compute_valid_periods": compute_valid_periods},
                  f, indent=2)
    return folder


def write_unit_id_map(dataset_dir, si_unit_ids):
    """cluster_si_unit_ids.tsv as export_to_phy writes it: phy ids 0..N-1 in analyzer order."""
    lines = ["cluster_id\tsi_unit_id"] + [f"{i}\t{u}" for i, u in enumerate(si_unit_ids)]
    (Path(dataset_dir) / "cluster_si_unit_ids.tsv").write_text("\n".join(lines) + "\n")


# -- the end-to-end dataset ----------------------------------------------------------------------

# Thresholds for the end-to-end run: SpikeInterface's defaults, with what a 20 s synthetic
# recording cannot give changed so that the labels vary: exp_decay (NaN here, so every unit
# would be NOISE) disabled on both sides, presence_ratio computed on 5 s bins.
def e2e_thresholds():
    from spikeinterface.curation import bombcell_get_default_thresholds
    thresholds = bombcell_get_default_thresholds()
    thresholds["noise"]["exp_decay"] = {"greater": None, "less": None}
    thresholds["mua"]["num_spikes"]["greater"] = 250
    thresholds["non-somatic"]["main_peak_to_trough_ratio"]["less"] = 0.3
    return thresholds


def _template_similarity_without_numba(analyzer):
    """export_to_phy needs template_similarity, whose numba kernel takes ~20 s to compile (no
    numba cache) for 10 templates; SpikeInterface's own numpy implementation (what it uses
    without numba) gives the same matrix at once."""
    from spikeinterface.postprocessing import template_similarity as ts
    numba_kernel = ts._compute_similarity_matrix
    ts._compute_similarity_matrix = ts._compute_similarity_matrix_numpy
    try:
        analyzer.compute("template_similarity")
    finally:
        ts._compute_similarity_matrix = numba_kernel


def make_si_phy_dataset(folder, split=False, seed=7, duration_s=20.0, n_units=10):
    """A phy folder made by SpikeInterface from a ground-truth recording, with run_bombcell_qc's
    results in folder/bombcell.  SI unit ids are strings ("n3", ...) in a shuffled order, so the
    cluster_si_unit_ids.tsv mapping is exercised.  Returns {step: seconds}."""
    spikeinterface_or_skip()
    from spikeinterface.core import create_sorting_analyzer, generate_ground_truth_recording
    from spikeinterface.exporters import export_to_phy
    from bombcell.spikeinterface_pipeline import get_default_qc_params, run_bombcell_qc
    folder = Path(folder)
    times = {}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recording, sorting = generate_ground_truth_recording(
            durations=[duration_s], num_channels=16, num_units=n_units, seed=seed,
            generate_sorting_kwargs=dict(firing_rates=(3.0, 30.0), refractory_period_ms=4.0))
        order = np.random.default_rng(seed).permutation(len(sorting.unit_ids))
        old_ids = list(np.asarray(sorting.unit_ids)[order])
        sorting = sorting.select_units(old_ids, renamed_unit_ids=[f"n{u}" for u in old_ids])
        # in memory and on one job: the machine's cores are shared, and the data is small
        recording = recording.save(format="memory", n_jobs=1, progress_bar=False)
        analyzer = create_sorting_analyzer(sorting, recording, sparse=True, format="memory")
        analyzer.compute(["random_spikes", "noise_levels", "waveforms", "templates"], n_jobs=1,
                         progress_bar=False)
        analyzer.compute("template_metrics", include_multi_channel_metrics=True)
        _template_similarity_without_numba(analyzer)
        times["analyzer"] = time.perf_counter() - t
        t = time.perf_counter()
        export_to_phy(analyzer, folder, compute_pc_features=False, copy_binary=True, verbose=False,
                      n_jobs=1, progress_bar=False)
        times["export_to_phy"] = time.perf_counter() - t
        t = time.perf_counter()
        params = get_default_qc_params()
        params.update(plot_histograms=False, plot_waveforms=False, plot_upset=False,
                      split_non_somatic=split, presence_ratio_bin_duration_s=5)
        run_bombcell_qc(analyzer, output_folder=folder / "bombcell", params=params,
                        thresholds=e2e_thresholds(), n_jobs=1, progress_bar=False)
        times["run_bombcell_qc"] = time.perf_counter() - t
    return times


# -- a SpikeInterface-route folder without SpikeInterface (for the phy 2.0b5 environment) -------

def write_si_folder_without_spikeinterface(dataset_dir, seed=0, split=False):
    """run_bombcell_qc's files for an existing phy folder, written with the csv module as pandas
    writes them (unnamed id column, label, metrics; NaN as an empty cell), with text SI unit
    ids mapped by cluster_si_unit_ids.tsv, SpikeInterface's default thresholds, num_spikes as
    phy counts them, and the labels the plugin's SI rules give (whose equality with
    SpikeInterface's is proven where SpikeInterface installs).  For the GUI in phy 2.0b5, where
    SpikeInterface does not install."""
    import csv
    import phy_bc_reason_plugin as pr
    dataset_dir = Path(dataset_dir)
    counts = np.bincount(np.load(dataset_dir / "spike_clusters.npy").ravel())
    cluster_ids = np.flatnonzero(counts)
    rng = np.random.default_rng(seed)
    thresholds = pr.SI_DEFAULT_THRESHOLDS
    first_sides = {m: sides for section in thresholds.values() for m, sides in section.items()}
    names = [m for m in TABLE_METRICS if m in first_sides] + ["firing_rate"]
    metrics = {m: _metric_values(rng, len(cluster_ids), first_sides.get(m, {}), 0.9) for m in names}
    metrics["num_spikes"] = counts[cluster_ids].astype(float)
    rules, _ = pr.spikeinterface_rules(thresholds, metrics)
    codes = pr.evaluate_spikeinterface(rules, metrics, split).codes
    by_name = {v: k for k, v in pr.SI_LABEL_NAMES.items()}
    labels = [by_name[name] for name in pr.label_names(codes, split)]
    unit_ids = [f"unit{c}" for c in cluster_ids]
    folder = dataset_dir / "bombcell"
    folder.mkdir(exist_ok=True)
    with open(folder / "labeling_results_wide.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([""] + ["label"] + names)
        for i, unit in enumerate(unit_ids):
            out.writerow([unit, labels[i]] + ["" if metrics[m][i] != metrics[m][i]
                                              else repr(float(metrics[m][i])) for m in names])
    (folder / "thresholds.json").write_text(json.dumps(thresholds, indent=2))
    (folder / "bombcell_config.json").write_text(json.dumps(
        {"split_non_somatic": split, "compute_valid_periods": False}, indent=2))
    # phy's ids are the dataset's; the map says which SI unit each one is
    lines = ["cluster_id\tsi_unit_id"] + [f"{c}\t{u}" for c, u in zip(cluster_ids, unit_ids)]
    (dataset_dir / "cluster_si_unit_ids.tsv").write_text("\n".join(lines) + "\n")
    return dict(zip(cluster_ids.tolist(), labels))

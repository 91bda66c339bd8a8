"""Generated bombcell results: parameter sets and metric tables around the thresholds, written
with bombcell's own save functions so the files are exactly what bombcell writes."""
import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

import phy_bc_reason_plugin as pr

with contextlib.redirect_stdout(io.StringIO()):  # bombcell prints on import
    from bombcell.default_parameters import get_default_parameters
    from bombcell.save_utils import save_dict_as_parquet_and_csv, save_params_as_parquet_and_csv

DEFAULTS = {k: v for k, v in get_default_parameters("/nonexistent", kilosort_version=2).items()
            if k in pr.CLASSIFICATION_PARAMS or k == "keepUncertainRPVUnits"}
FLAGS = ("extractRaw", "computeSpatialDecay", "spDecayLinFit", "computeDrift",
         "computeDistanceMetrics", "splitGoodAndMua_NonSomatic", "keepUncertainRPVUnits")
THRESHOLDS = tuple(k for k in DEFAULTS if k not in FLAGS)
METRICS = tuple(dict.fromkeys(r.metric for r in pr.RULES))


def metric_table(params, seed, n_units):
    """Metric columns spread around the thresholds, with NaN, inf, exact ties and empty units."""
    rng = np.random.default_rng(seed)
    complete, _ = pr.complete_params(params)
    metrics = {}
    for metric in METRICS:
        thresholds = [float(complete[r.param]) for r in pr.RULES if r.metric == metric and r.param]
        centres = np.array([t for t in thresholds if np.isfinite(t)] or [1.0])
        centre = rng.choice(centres, n_units)
        scale = np.where(centre == 0, 1.0, np.abs(centre))
        values = centre + scale * rng.normal(0, 0.6, n_units)
        kind = rng.random(n_units)
        values[kind < 0.05] = np.nan
        values[(kind >= 0.05) & (kind < 0.07)] = np.inf
        values[(kind >= 0.07) & (kind < 0.09)] = -np.inf
        tie = (kind >= 0.09) & (kind < 0.17)  # exactly at a threshold: passes
        values[tie] = centre[tie]
        metrics[metric] = values
    metrics["nPeaks"] = np.where(rng.random(n_units) < 0.1, np.nan, rng.integers(0, 5, n_units))
    metrics["nTroughs"] = np.where(rng.random(n_units) < 0.05, np.nan, rng.integers(0, 4, n_units))
    metrics["nSpikes"] = np.where(rng.random(n_units) < 0.08, 0, rng.integers(1, 2000, n_units))
    metrics["RPV_status"] = rng.choice([-1.0, 0.0, 1.0, np.nan], n_units)
    return metrics


def write_results(dataset_dir, params=None, metrics=None, n_units=40, seed=0, labels=True,
                  cluster_ids=None):
    """Write bombcell's two parquet files into ``dataset_dir/bombcell`` with bombcell's own
    savers (the label column ``bc_unitType`` from bombcell's classifier unless ``labels`` is
    False); returns (params, metrics)."""
    import bombcell
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    params = dict(DEFAULTS if params is None else params)
    metrics = metric_table(params, seed, n_units) if metrics is None else metrics
    n = len(metrics["nSpikes"])
    metrics = dict(metrics)
    metrics["phy_clusterID"] = np.arange(n) if cluster_ids is None else np.asarray(cluster_ids)
    saved = dict(metrics)
    with contextlib.redirect_stdout(io.StringIO()):
        if labels:
            _, saved["bc_unitType"] = bombcell.get_quality_unit_type(
                dict(params), {k: np.asarray(v, dtype=float).copy() for k, v in metrics.items()})
        save_dict_as_parquet_and_csv(saved, dataset_dir / "bombcell")
        save_params_as_parquet_and_csv(params, dataset_dir / "bombcell")
    return params, metrics


def bombcell_labels(params, metrics):
    """bombcell's own string labels, quietly (it prints and warns about filled parameters)."""
    import bombcell
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, labels = bombcell.get_quality_unit_type(
            dict(params), {k: np.asarray(v, dtype=float).copy() for k, v in metrics.items()
                           if np.asarray(v).dtype != object})
    return np.asarray(labels, dtype=object)

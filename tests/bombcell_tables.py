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


# What a generated unit is built to be.  "free": every metric spread around its thresholds (most
# such units fail some noise test); the others pass everything but the named tests, so every
# label gets a fair share (see test_generated_tables_give_every_label_a_fair_share).
DESIGNS = ("free", "good", "mua", "noise", "route A", "route B", "mua route B")


def _numeric_thresholds(params):
    """{param: float} of a drawn parameter set: completed as bombcell would, anything that is
    not a number (text, lists, a failing spikeWidth) taken from the defaults."""
    try:
        complete, _ = pr.complete_params(params)
    except pr.BombcellReasonError:
        complete = dict(DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS})
    out = {}
    for rule in pr.RULES:
        if rule.param:
            value = pr.threshold_value(complete, rule.param, enabled=False)
            if np.isnan(value) and rule.param in DEFAULTS:
                value = float(DEFAULTS[rule.param])
            out[rule.param] = value
    return out


def _near(rng, t, n, side):
    """n values on one side of threshold t (side +1: above, -1: below): a hair away (the next
    float), or up to 60% of |t| away."""
    scale = abs(t) if np.isfinite(t) and t != 0 else 1.0
    far = t + side * scale * rng.uniform(0.01, 0.6, n)
    hair = np.full(n, np.nextafter(t, side * np.inf))
    return np.where(rng.random(n) < 0.3, hair, far)


def _passing(rng, metric, thresholds, n):
    """Values of ``metric`` that pass every rule on it: between the largest "<" threshold and
    the smallest ">" one, sometimes exactly at one of them (a tie passes), never NaN for nPeaks."""
    lo = max([thresholds[r.param] for r in pr.RULES if r.metric == metric and r.op == "<"
              and np.isfinite(thresholds[r.param])] or [-np.inf])
    hi = min([thresholds[r.param] for r in pr.RULES if r.metric == metric and r.op == ">"
              and np.isfinite(thresholds[r.param])] or [np.inf])
    if lo > hi:  # no value passes both (moved thresholds): NaN passes every comparison
        return np.full(n, np.nan)
    if np.isfinite(lo) and np.isfinite(hi):
        values = rng.uniform(lo, hi, n)
    elif np.isfinite(lo):
        values = _near(rng, lo, n, +1)
    elif np.isfinite(hi):
        values = _near(rng, hi, n, -1)
    else:
        values = rng.normal(0, 1, n)
    kind = rng.random(n)
    if np.isfinite(lo):
        values[kind < 0.1] = lo
    if np.isfinite(hi):
        values[(kind >= 0.1) & (kind < 0.2)] = hi
    if metric == "nPeaks":
        values = np.floor(np.clip(values, 0, None))
        values[values > hi] = np.floor(hi) if np.isfinite(hi) else 0
    elif metric == "nTroughs":
        values = np.floor(values)
    return values


def _failing(rng, rule, thresholds, n):
    t = thresholds[rule.param]
    if not np.isfinite(t):  # a NaN or infinite threshold: nothing fails it
        return np.full(n, np.nan)
    values = _near(rng, t, n, +1 if rule.op == ">" else -1)
    if rule.metric in ("nPeaks", "nTroughs"):
        values = np.floor(t) + 1 + rng.integers(0, 2, n)
    return values


def metric_table(params, seed, n_units, designs=DESIGNS):
    """Metric columns around the thresholds, with NaN, inf, exact ties, values a hair either side
    of a threshold and empty units.  Each unit follows a design drawn from ``designs``."""
    rng = np.random.default_rng(seed)
    thresholds = _numeric_thresholds(params)
    design = rng.choice(list(designs), n_units)
    metrics = {}
    for metric in METRICS:
        values = np.full(n_units, np.nan)
        free = design == "free"
        centres = np.array([t for r in pr.RULES if r.metric == metric and r.param
                            for t in [thresholds[r.param]] if np.isfinite(t)] or [1.0])
        centre = rng.choice(centres, n_units)
        scale = np.where(centre == 0, 1.0, np.abs(centre))
        spread = centre + scale * rng.normal(0, 0.6, n_units)
        hair = np.nextafter(centre, np.where(rng.random(n_units) < 0.5, -np.inf, np.inf))
        kind = rng.random(n_units)
        spread[kind < 0.05] = np.nan
        spread[(kind >= 0.05) & (kind < 0.07)] = np.inf
        spread[(kind >= 0.07) & (kind < 0.09)] = -np.inf
        tie = (kind >= 0.09) & (kind < 0.17)  # exactly at a threshold: passes
        spread[tie] = centre[tie]
        near = (kind >= 0.17) & (kind < 0.25)  # a hair either side
        spread[near] = hair[near]
        values[free] = spread[free]
        values[~free] = _passing(rng, metric, thresholds, int((~free).sum()))
        metrics[metric] = values
    free = design == "free"
    metrics["nPeaks"][free] = np.where(rng.random(free.sum()) < 0.1, np.nan,
                                       rng.integers(0, 5, free.sum()))
    metrics["nTroughs"][free] = np.where(rng.random(free.sum()) < 0.05, np.nan,
                                         rng.integers(0, 4, free.sum()))
    metrics["nSpikes"][free] = np.where(rng.random(free.sum()) < 0.08, 0,
                                        rng.integers(1, 2000, free.sum()))
    metrics["nSpikes"][~free] = np.ceil(np.nan_to_num(metrics["nSpikes"][~free], nan=1000.0,
                                                      posinf=5000.0, neginf=1.0))
    metrics["RPV_status"] = rng.choice([-1.0, 0.0, 1.0, np.nan], n_units)

    # The designed units: fail the chosen tests (one or two of the stage's, drawn at random).
    noise_rules = [r for r in pr.RULES if r.stage == "noise" and r.op != "isnan"
                   and r.metric != "spatialDecaySlope"]
    mua_rules = [r for r in pr.RULES if r.stage == "mua" and r.enabled_when == ()]
    route_a = [r for r in pr.RULES if r.route == "A"]
    route_b = [r for r in pr.RULES if r.route == "B"]
    for name, rules, how_many in (("noise", noise_rules, 2), ("mua", mua_rules, 2),
                                  ("mua route B", mua_rules, 1)):
        for unit in np.flatnonzero(design == name):
            for rule in rng.choice(rules, rng.integers(1, how_many + 1), replace=False):
                metrics[rule.metric][unit] = _failing(rng, rule, thresholds, 1)[0]
                if rule.metric == "nSpikes":
                    metrics["nSpikes"][unit] = max(1.0, np.floor(metrics["nSpikes"][unit]))
    for unit in np.flatnonzero(design == "route A"):
        for rule in route_a:
            metrics[rule.metric][unit] = _failing(rng, rule, thresholds, 1)[0]
    for unit in np.flatnonzero(np.isin(design, ["route B", "mua route B"])):
        for rule in route_b:
            metrics[rule.metric][unit] = _failing(rng, rule, thresholds, 1)[0]
    designed = ~free
    metrics["nSpikes"][designed & (metrics["nSpikes"] < 1)] = 1
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

"""Why did bombcell call this unit MUA?  Classification reasons for phy.

One file, three ways in:

* a phy plugin (``BombcellReasonPlugin``) that shows the reason of every unit as the
  ``bc_classificationReason`` column of phy's cluster view, a dock view with every criterion of
  the selected cluster, and a "Bombcell" menu;
* a command line tool, ``phy-bc-reason export|explain|rules|install|demo``;
* a Python API for notebooks: ``load_reasons(dataset_dir)`` and ``explain_cluster(...)``.

Everything is derived from one declarative table, ``RULES``, which mirrors bombcell 0.94's
``bombcell.quality_metrics.get_quality_unit_type``.  bombcell itself is never imported here: it
costs seconds and prints to stdout, and its results are plain parquet files.  The property tests
in ``tests/`` prove that the labels computed here equal bombcell's own on many random tables.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__version__ = "0.1.0"

logger = logging.getLogger("phy_bc_reason")

COLUMN = "bc_classificationReason"
TSV_NAME = f"cluster_{COLUMN}.tsv"
BOMBCELL_DIRNAME = "bombcell"
PARAMS_FILE = "_bc_parameters._bc_qMetrics.parquet"
METRICS_FILE = "templates._bc_qMetrics.parquet"
UNIT_TYPE_TSV = "cluster_bc_unitType.tsv"

UNCLASSIFIED = "UNCLASSIFIED"
NO_LABEL = "NO LABEL"  # shown for units bombcell leaves unlabelled ("") because they have no spikes


class BombcellReasonError(Exception):
    """A problem with the input, as one line that names the file and the fix."""


# ------------------------------------------------------------------------------------------------
# The rule table
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One criterion of bombcell's classifier: the unit fails it when ``metric op param`` holds.

    Comparisons are strict, as in bombcell, so a value exactly at its threshold passes, and a NaN
    value passes every comparison (only the ``isnan`` rule fails on NaN).
    """
    stage: str                    # "noise", "mua" or "non-somatic"
    metric: str                   # column of templates._bc_qMetrics.parquet
    op: str                       # ">", "<" or "isnan"
    param: str = None             # key of _bc_parameters._bc_qMetrics.parquet (None for isnan)
    enabled_when: tuple = ()      # ((flag, required truth value), ...): all must hold
    route: str = ""               # non-somatic route: "A" (all four must fail) or "B"
    skipped_where_nan: str = None  # bombcell tests only units where this metric is not NaN
    kept_when: tuple = ()          # (flag, metric, value): a failure does not count where the flag
    #                                is on and metric == value (uncertain refractory-period units)

    @property
    def name(self):
        return f"{self.metric} is NaN" if self.op == "isnan" else f"{self.metric}{self.op}{self.param}"


RULES = (
    Rule("noise", "nPeaks", "isnan"),
    Rule("noise", "nPeaks", ">", "maxNPeaks"),
    Rule("noise", "nTroughs", ">", "maxNTroughs"),
    Rule("noise", "waveformDuration_peakTrough", "<", "minWvDuration"),
    Rule("noise", "waveformDuration_peakTrough", ">", "maxWvDuration"),
    Rule("noise", "waveformBaselineFlatness", ">", "maxWvBaselineFraction"),
    Rule("noise", "scndPeakToTroughRatio", ">", "maxScndPeakToTroughRatio_noise"),
    Rule("noise", "spatialDecaySlope", "<", "minSpatialDecaySlope",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", True))),
    Rule("noise", "spatialDecaySlope", "<", "minSpatialDecaySlopeExp",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", False))),
    Rule("noise", "spatialDecaySlope", ">", "maxSpatialDecaySlopeExp",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", False))),
    Rule("mua", "percentageSpikesMissing_gaussian", ">", "maxPercSpikesMissing"),
    Rule("mua", "nSpikes", "<", "minNumSpikes"),
    Rule("mua", "fractionRPVs_estimatedTauR", ">", "maxRPVviolations",
         kept_when=("keepUncertainRPVUnits", "RPV_status", 0)),
    Rule("mua", "presenceRatio", "<", "minPresenceRatio"),
    Rule("mua", "rawAmplitude", "<", "minAmplitude",
         enabled_when=(("extractRaw", True),), skipped_where_nan="rawAmplitude"),
    Rule("mua", "signalToNoiseRatio", "<", "minSNR",
         enabled_when=(("extractRaw", True),), skipped_where_nan="rawAmplitude"),
    Rule("mua", "maxDriftEstimate", ">", "maxDrift", enabled_when=(("computeDrift", True),)),
    Rule("mua", "isolationDistance", "<", "isoDmin", enabled_when=(("computeDistanceMetrics", True),)),
    Rule("mua", "Lratio", ">", "lratioMax", enabled_when=(("computeDistanceMetrics", True),)),
    Rule("non-somatic", "troughToPeak2Ratio", "<", "minTroughToPeak2Ratio_nonSomatic", route="A"),
    Rule("non-somatic", "mainPeak_before_width", "<", "minWidthFirstPeak_nonSomatic", route="A"),
    Rule("non-somatic", "mainTrough_width", "<", "minWidthMainTrough_nonSomatic", route="A"),
    Rule("non-somatic", "peak1ToPeak2Ratio", ">", "maxPeak1ToPeak2Ratio_nonSomatic", route="A"),
    Rule("non-somatic", "mainPeakToTroughRatio", ">", "maxMainPeakToTroughRatio_nonSomatic", route="B"),
)

ROUTE_NAMES = {
    "A": "shape route: all 4 width/ratio tests fail",
    "B": "main-peak route",
}

# Labels by bombcell's numeric unit type; 3 reads "NON-SOMA GOOD" in split mode.
NOISE, GOOD, MUA, NON_SOMA, NON_SOMA_MUA = 0, 1, 2, 3, 4

# Parameters that older bombcell releases did not save, with the values bombcell 0.94's
# check_parameter_fields fills in to reproduce the old behaviour (tests check this equals
# bombcell.default_parameters._BACKCOMPAT_DEFAULTS).
BACKCOMPAT_DEFAULTS = {
    "extractRaw": True,
    "computeSpatialDecay": True,
    "spDecayLinFit": True,
    "computeDrift": False,
    "computeDistanceMetrics": False,
    "splitGoodAndMua_NonSomatic": False,
    "keepUncertainRPVUnits": False,
    "minSpatialDecaySlopeExp": 0.01,
    "maxSpatialDecaySlopeExp": 0.1,
    "maxScndPeakToTroughRatio_noise": 0.8,
    "maxMainPeakToTroughRatio_nonSomatic": 0.8,
    # ANDed together, so these values switch the shape route off as a whole.
    "minWidthFirstPeak_nonSomatic": 0,
    "minWidthMainTrough_nonSomatic": 0,
    "minTroughToPeak2Ratio_nonSomatic": 0,
    "maxPeak1ToPeak2Ratio_nonSomatic": np.inf,
}
SHAPE_ROUTE_PARAMS = tuple(r.param for r in RULES if r.route == "A")

# Every parameter the classifier reads: the thresholds and flags of the table, plus the split
# flag.  A missing one with no back-compatibility default is an error, as in bombcell.
CLASSIFICATION_PARAMS = tuple(dict.fromkeys(
    [r.param for r in RULES if r.param]
    + [flag for r in RULES for flag, _ in r.enabled_when]
    + ["splitGoodAndMua_NonSomatic"]))

# A few bombcell <= 0.31 snake_case names, to recognise such results and say so.
_SNAKE_CASE_MARKERS = ("n_peaks", "n_troughs", "max_n_peaks", "max_n_troughs", "min_num_spikes")

STATUSES = ("pass", "fail", "nan", "disabled")
_PASS, _FAIL, _NAN, _DISABLED = range(4)


# ------------------------------------------------------------------------------------------------
# Reading bombcell's results
# ------------------------------------------------------------------------------------------------

def dataset_path(path):
    """The dataset folder for a folder or for its params.py (what phy users type)."""
    path = Path(path).expanduser()
    return path.parent if path.is_file() else path


def find_bombcell_dir(dataset_dir, bombcell_dir=None):
    """bombcell's results folder: ``bombcell_dir`` if given, else ``<dataset>/bombcell``."""
    dataset_dir = dataset_path(dataset_dir)
    if not dataset_dir.is_dir():
        raise BombcellReasonError(f"{dataset_dir}: no such dataset folder")
    folder = Path(bombcell_dir).expanduser() if bombcell_dir else dataset_dir / BOMBCELL_DIRNAME
    if not folder.is_dir():
        raise BombcellReasonError(
            f"{folder}: no bombcell results folder; run bombcell on this dataset "
            f"(bc.run_bombcell(ks_dir, ks_dir/'bombcell', param)) or give its folder with --bombcell-dir")
    return folder


def _read_table(path):
    """A parquet file as a pyarrow Table, or a one-line error naming the file and the fix."""
    import pyarrow.parquet as pq
    if not path.is_file():
        raise BombcellReasonError(
            f"{path}: missing; re-run bombcell on this dataset to write it")
    try:
        # ParquetFile.read, not read_table: the dataset layer behind read_table starts thread
        # pools that cost ~50 MB and time for a file this small.
        table = pq.ParquetFile(path).read(use_threads=False)
    except Exception as e:  # truncated or not parquet at all: say so in one line
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BombcellReasonError(
            f"{path}: cannot be read ({first_line}); re-run bombcell to rewrite it") from None
    return table


def _read_parquet(path):
    """Columns of a parquet file as numpy arrays (numbers as float64, the rest as objects).

    Read with pyarrow alone, without pandas (see _NUMPY_DTYPES).
    """
    table = _read_table(path)
    columns = {}
    for name in table.column_names:
        array = table.column(name).combine_chunks()
        dtype = _NUMPY_DTYPES.get(str(array.type))
        if dtype is None:
            columns[name] = np.array(array.to_pylist(), dtype=object)
            continue
        start, stop = array.offset, array.offset + len(array)
        data = np.frombuffer(array.buffers()[1], dtype=np.uint8 if dtype == "bool" else dtype)
        if dtype == "bool":  # Arrow packs booleans in bits
            data = np.unpackbits(data, bitorder="little")
        values = data[start:stop].astype(np.float64)
        if array.null_count:
            valid = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8),
                                  bitorder="little")[start:stop]
            values[valid == 0] = np.nan
        columns[name] = values
    return columns


# Arrow type names of the numeric columns bombcell writes, and their numpy dtypes.  Read from
# the buffers directly because pyarrow's cast/to_numpy import pyarrow.compute and pandas
# (~0.5 s of start-up together).
_NUMPY_DTYPES = {**{t: t for t in ("int8", "int16", "int32", "int64",
                                   "uint8", "uint16", "uint32", "uint64")},
                 "double": "float64", "float": "float32", "halffloat": "float16", "bool": "bool"}


def _read_params(path):
    """The first row of the parameters file, as bombcell's load_bc_results takes it."""
    table = _read_table(path)
    if table.num_rows == 0:
        raise BombcellReasonError(f"{path}: holds no parameters; re-run bombcell to rewrite it")
    params = {}
    for key, value in table.slice(0, 1).to_pylist()[0].items():
        # Older releases saved some keys with a trailing space ("maxRPVviolations "); the exact
        # key wins where both are present.
        if key.strip() not in params or key == key.strip():
            params[key.strip()] = value
    return params


def _is_on(value):
    """Truth of a saved flag as bombcell's ``if param[flag]`` sees it (None is off)."""
    return bool(value) if value is not None else False


def complete_params(params, params_file="parameters"):
    """Fill parameters missing from an older bombcell run, as bombcell's check_parameter_fields.

    Returns (params, notes).  Raises BombcellReasonError for results of bombcell <= 0.31
    (snake_case names) and for missing parameters that have no back-compatibility default.
    """
    params = dict(params)
    notes = []
    if "maxNPeaks" not in params and any(k in params for k in _SNAKE_CASE_MARKERS):
        raise BombcellReasonError(
            f"{params_file}: written by bombcell 0.31 or older (snake_case names such as "
            f"max_n_peaks); re-run bombcell >= 0.94 on this dataset")
    defaults = dict(BACKCOMPAT_DEFAULTS)
    present = [k for k in SHAPE_ROUTE_PARAMS if k in params]
    if present and len(present) < len(SHAPE_ROUTE_PARAMS):
        # Some of the shape route is configured: bombcell fills the rest with its current
        # defaults (widths scaled by spike width) rather than switching the route off.
        width_scale = 1.0
        spike_width, standard_width = params.get("spikeWidth"), params.get("standardSpikeWidth")
        if spike_width and standard_width and np.isfinite(spike_width) and standard_width > 0:
            width_scale = spike_width / standard_width
        defaults["minTroughToPeak2Ratio_nonSomatic"] = 5
        defaults["minWidthFirstPeak_nonSomatic"] = max(2, round(4 * width_scale))
        defaults["minWidthMainTrough_nonSomatic"] = max(3, round(5 * width_scale))
        defaults["maxPeak1ToPeak2Ratio_nonSomatic"] = 3
    filled = [k for k in defaults if k not in params]
    for key in filled:
        params[key] = defaults[key]
    missing = [k for k in CLASSIFICATION_PARAMS if k not in params]
    if missing:
        raise BombcellReasonError(
            f"{params_file}: parameter {', '.join(missing)} missing and bombcell has no default "
            f"for it; re-run bombcell >= 0.94 on this dataset")
    if filled:
        notes.append("parameters missing from this older bombcell run were filled with bombcell's "
                     "back-compatibility defaults: " + ", ".join(f"{k}={params[k]}" for k in filled))
        if all(k in filled for k in SHAPE_ROUTE_PARAMS):
            notes.append("the non-somatic shape route is switched off: this bombcell run predates it")
    return params, notes


# ------------------------------------------------------------------------------------------------
# Evaluation: every rule on every unit at once
# ------------------------------------------------------------------------------------------------

def rule_enabled(rule, params):
    return all(_is_on(params[flag]) == wanted for flag, wanted in rule.enabled_when)


def evaluate(params, metrics):
    """Evaluate the whole rule table, vectorised.

    ``params``: complete parameters (see complete_params); ``metrics``: mapping of column name to
    array, one entry per unit.  Returns (values, thresholds, status, fails, kept, codes) where
    values/status/fails/kept are (n_rules, n_units) arrays, thresholds is (n_rules,), codes is
    bombcell's numeric unit type (NaN for empty units).
    """
    n_units = len(np.asarray(metrics["nSpikes"]))
    n_rules = len(RULES)
    values = np.full((n_rules, n_units), np.nan)
    thresholds = np.full(n_rules, np.nan)
    status = np.full((n_rules, n_units), _PASS, dtype=np.int8)
    fails = np.zeros((n_rules, n_units), dtype=bool)
    kept = np.zeros((n_rules, n_units), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i, rule in enumerate(RULES):
            value = np.asarray(metrics[rule.metric], dtype=float)
            values[i] = value
            if rule.param and params.get(rule.param) is not None:
                thresholds[i] = float(params[rule.param])  # shown for disabled rules too
            if not rule_enabled(rule, params):
                status[i] = _DISABLED
                continue
            if rule.op == "isnan":
                fails[i] = np.isnan(value)
            else:
                fails[i] = value > thresholds[i] if rule.op == ">" else value < thresholds[i]
                status[i, np.isnan(value)] = _NAN
            if rule.skipped_where_nan:
                skipped = np.isnan(np.asarray(metrics[rule.skipped_where_nan], dtype=float))
                fails[i] &= ~skipped
                status[i, skipped] = _NAN
            if rule.kept_when:
                flag, metric, kept_value = rule.kept_when
                if _is_on(params.get(flag, False)) and metric in metrics:
                    kept[i] = fails[i] & (np.asarray(metrics[metric]) == kept_value)
                    fails[i] &= ~kept[i]
            status[i, fails[i]] = _FAIL
    codes = _unit_codes(params, np.asarray(metrics["nSpikes"], dtype=float), fails)
    return values, thresholds, status, fails, kept, codes


_STAGE = np.array([r.stage for r in RULES])
_ROUTE = np.array([r.route for r in RULES])
IS_NOISE, IS_MUA = _STAGE == "noise", _STAGE == "mua"
IS_ROUTE_A, IS_ROUTE_B = _ROUTE == "A", _ROUTE == "B"


def _non_somatic(fails):
    """(route A, route B) masks: A needs all four shape tests to fail together."""
    return fails[IS_ROUTE_A].all(axis=0), fails[IS_ROUTE_B].any(axis=0)


def _unit_codes(params, n_spikes, fails):
    """bombcell's numeric unit type from the rule failures, in bombcell's order."""
    empty = n_spikes == 0
    noise = ~empty & fails[IS_NOISE].any(axis=0)
    mua = ~noise & fails[IS_MUA].any(axis=0)
    route_a, route_b = _non_somatic(fails)
    non_somatic = ~noise & (route_a | route_b)
    codes = np.where(noise, NOISE, np.where(mua, MUA, GOOD)).astype(float)
    if _is_on(params["splitGoodAndMua_NonSomatic"]):
        codes[non_somatic & (codes == MUA)] = NON_SOMA_MUA
        codes[non_somatic & (codes == GOOD)] = NON_SOMA
    else:
        codes[non_somatic] = NON_SOMA
    codes[empty] = np.nan
    return codes


def label_names(codes, split):
    names = {NOISE: "NOISE", GOOD: "GOOD", MUA: "MUA",
             NON_SOMA: "NON-SOMA GOOD" if split else "NON-SOMA", NON_SOMA_MUA: "NON-SOMA MUA"}
    labels = np.full(len(codes), "", dtype=object)
    for code, name in names.items():
        labels[codes == code] = name
    return labels


def decisive_mask(codes, fails):
    """(n_rules, n_units): the failing criteria that produce each unit's label."""
    route_a, route_b = _non_somatic(fails)
    non_somatic = np.isin(codes, (NON_SOMA, NON_SOMA_MUA))
    decisive = np.zeros_like(fails)
    decisive |= fails & IS_NOISE[:, None] & (codes == NOISE)
    decisive |= fails & IS_MUA[:, None] & np.isin(codes, (MUA, NON_SOMA_MUA))
    decisive |= fails & IS_ROUTE_A[:, None] & (non_somatic & route_a)
    decisive |= fails & IS_ROUTE_B[:, None] & (non_somatic & route_b)
    return decisive


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------

def format_number(x, digits=3):
    """Short, exponent-free text for a value: integers stay integers, inf and NaN by name, others
    to ``digits`` significant digits (``None``: the shortest text that reads back exactly)."""
    if x is None:
        return "None"
    x = float(x)
    if x != x:
        return "NaN"
    if x in (np.inf, -np.inf):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    if digits is not None and abs(x) >= 10 ** digits:
        return str(round(x))
    text = repr(x) if digits is None else f"{x:.{digits}g}"
    if "e" in text:  # rare: very small or large values
        text = np.format_float_positional(x, precision=digits, unique=digits is None,
                                          fractional=False, trim="-")
    return text


def criterion_text(rule, value, threshold):
    """``metric>param (value > threshold)``: the threshold exact, the value to 3 digits, or more
    where 3 digits would print it equal to the threshold it fails."""
    if rule.op == "isnan":
        return f"{rule.metric} is NaN"
    t = format_number(threshold, digits=None)
    v = format_number(value)
    digits = 3
    while v == t and digits < 17 and value != threshold:
        digits += 2
        v = format_number(value, digits)
    return f"{rule.name} ({v} {rule.op} {t})"


# ------------------------------------------------------------------------------------------------
# Classification of a dataset
# ------------------------------------------------------------------------------------------------

class Classification:
    """Labels, reasons and every criterion of every unit of one bombcell run."""

    def __init__(self, params, metrics, cluster_ids, bombcell_label=None, notes=(), source_mtime=0.0,
                 source=""):
        self.params = params
        self.metrics = metrics
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.split = _is_on(params["splitGoodAndMua_NonSomatic"])
        self.notes = list(notes)
        self.source_mtime = source_mtime
        self.source = source
        (self.values, self.thresholds, self.status, self.fails, self.kept,
         self.codes) = evaluate(params, metrics)
        self.label = label_names(self.codes, self.split)
        self.decisive = decisive_mask(self.codes, self.fails)
        self.bombcell_label = (np.asarray(bombcell_label, dtype=object) if bombcell_label is not None
                               else np.full(len(self.cluster_ids), None, dtype=object))
        self.label_differs = np.array(
            [s is not None and s != c for s, c in zip(self.bombcell_label, self.label)], dtype=bool)
        self._row = {int(c): i for i, c in enumerate(self.cluster_ids)}
        self.reason = self._reasons()

    def __len__(self):
        return len(self.cluster_ids)

    @property
    def metric_columns(self):
        return [k for k in self.metrics if k not in ("phy_clusterID", "bc_unitType")]

    def row(self, cluster_id):
        """Row index of a cluster, or None when bombcell has no row for it."""
        return self._row.get(int(cluster_id))

    def _first_decisive_text(self, rules_mask):
        """Per unit, the first decisive criterion among ``rules_mask`` (table order) as text,
        with "+N more" for the others; "" where none decides.  Built rule by rule, not unit by
        unit: only the number formatting touches single units."""
        mask = self.decisive & rules_mask[:, None]
        first, count = np.argmax(mask, axis=0), mask.sum(axis=0)
        texts = np.full(len(self), "", dtype=object)
        for i in np.unique(first[count > 0]):
            units = np.flatnonzero((first == i) & (count > 0))
            texts[units] = [criterion_text(RULES[i], v, self.thresholds[i])
                            for v in self.values[i, units]]
        more = count > 1
        texts[more] += np.char.add(" +", (count[more] - 1).astype(str)).astype(object) + " more"
        return texts, count > 0

    def _reasons(self):
        codes = self.codes
        noise, _ = self._first_decisive_text(IS_NOISE)
        mua, _ = self._first_decisive_text(IS_MUA)
        route_b, has_b = self._first_decisive_text(IS_ROUTE_B)
        route_a, has_a = self._first_decisive_text(IS_ROUTE_A)
        non_somatic = np.where(has_b, f"[{ROUTE_NAMES['B']}] " + route_b, "").astype(object)
        non_somatic[has_a & has_b] += "; "
        non_somatic[has_a] += f"[{ROUTE_NAMES['A']}] " + route_a[has_a]

        reasons = np.full(len(self), "GOOD: passed all thresholds", dtype=object)
        reasons[np.isnan(codes)] = (
            f"{NO_LABEL}: unit has no spikes (nSpikes = 0); bombcell leaves it unlabelled")
        for code, text in ((NOISE, noise), (MUA, mua)):
            reasons[codes == code] = self.label[codes == code] + ": " + text[codes == code]
        is_ns = codes == NON_SOMA
        reasons[is_ns] = self.label[is_ns] + ": " + non_somatic[is_ns]
        is_ns_mua = codes == NON_SOMA_MUA
        reasons[is_ns_mua] = "NON-SOMA MUA: " + mua[is_ns_mua] + "; " + non_somatic[is_ns_mua]
        differs = self.label_differs
        if differs.any():
            saved = np.array([s or NO_LABEL for s in self.bombcell_label[differs]], dtype=object)
            reasons[differs] += " (bombcell saved " + saved + ": results changed since?)"
        return reasons

    def reason_by_cluster(self):
        return dict(zip(self.cluster_ids.tolist(), self.reason.tolist()))

    # -- one cluster ---------------------------------------------------------------------------

    def unit_notes(self, unit):
        """Everything about one unit that the label alone does not tell."""
        notes = []
        code, label = self.codes[unit], self.label[unit]
        status, fails, values = self.status[:, unit], self.fails[:, unit], self.values[:, unit]
        name = {i: criterion_text(r, values[i], self.thresholds[i]) for i, r in enumerate(RULES)}
        if np.isnan(code):
            notes.append("no spikes (nSpikes = 0): bombcell gives empty units no label, whatever "
                         "their metrics")
        nan_peaks = [i for i, r in enumerate(RULES) if r.op == "isnan" and fails[i]]
        if nan_peaks and code == NOISE:
            notes.append("nPeaks is NaN: bombcell could not compute waveform metrics (units with "
                         "fewer than 50 spikes get NaN metrics) and counts that as NOISE")
        for i, rule in enumerate(RULES):
            if self.kept[i, unit]:
                notes.append(f"{name[i]} would fail, but RPV_status is 0 (uncertain) and "
                             f"keepUncertainRPVUnits is on: bombcell lets the unit pass this test")
            if (rule.skipped_where_nan and status[i] == _NAN and not np.isnan(values[i])):
                notes.append(f"{rule.name} not tested: bombcell skips it where "
                             f"{rule.skipped_where_nan} is NaN")
            if np.isinf(values[i]) and status[i] != _DISABLED and rule.op != "isnan":
                notes.append(f"{rule.metric} is {format_number(values[i])}: bombcell does not clean "
                             f"inf, so it {'fails' if fails[i] else 'passes'} {rule.name}")
        if status[IS_NOISE].tolist().count(_NAN) and code != NOISE and not np.isnan(code):
            nan_rules = [RULES[i].name for i in np.flatnonzero(IS_NOISE & (status == _NAN))]
            notes.append("NaN values pass these tests, as in bombcell: " + ", ".join(nan_rules))
        not_deciding = np.flatnonzero(fails & ~self.decisive[:, unit] & ~IS_ROUTE_A & ~IS_ROUTE_B)
        if len(not_deciding) and not np.isnan(code):
            why = {NOISE: "NOISE takes precedence over MUA",
                   NON_SOMA: ("the NON-SOMA label hides MUA failures when splitGoodAndMua_NonSomatic "
                              "is off" if not self.split else "")}.get(code, "")
            notes.append("also fails, without deciding the label: "
                         + ", ".join(name[i] for i in not_deciding) + (f" ({why})" if why else ""))
        a_fail = int(fails[IS_ROUTE_A].sum())
        if 0 < a_fail < IS_ROUTE_A.sum() and code != NOISE:
            notes.append(f"{a_fail} of 4 shape-route tests fail: the shape route makes a unit "
                         f"non-somatic only when all four fail")
        if code == NOISE and fails[IS_ROUTE_A].all() or code == NOISE and fails[IS_ROUTE_B].any():
            notes.append("non-somatic tests are not applied to NOISE units")
        if self.label_differs[unit]:
            notes.append(f"bombcell saved the label {self.bombcell_label[unit] or '(none)'!r}, but "
                         f"its classifier gives {label or '(none)'!r} for the saved parameters and "
                         f"metrics: they changed after the run, or came from another bombcell version")
        return notes

    def criteria(self, unit, only=None):
        """The criteria of one unit as JSON-able dicts (``only``: boolean mask over RULES)."""
        out = []
        for i, rule in enumerate(RULES):
            if only is not None and not only[i]:
                continue
            value, threshold = self.values[i, unit], self.thresholds[i]
            status = STATUSES[self.status[i, unit]]
            if rule.op == "isnan" or status in ("nan", "disabled") or np.isnan(threshold):
                margin = None
            else:
                margin = threshold - value if rule.op == ">" else value - threshold
            out.append({
                "stage": rule.stage + (f" {rule.route}" if rule.route else ""),
                "metric": rule.metric, "op": rule.op, "param": rule.param,
                "threshold": _json_number(threshold if rule.op != "isnan" else None),
                "value": _json_number(value), "status": status,
                "margin": _json_number(margin),
            })
        return out

    def explain(self, cluster_id):
        """Everything about one cluster as a JSON-able dict, or None if bombcell has no row."""
        unit = self.row(cluster_id)
        if unit is None:
            return None
        return {
            "cluster_id": int(self.cluster_ids[unit]),
            "label": self.label[unit],
            "bombcell_label": self.bombcell_label[unit],
            "reason": self.reason[unit],
            "criteria": self.criteria(unit),
            "decisive": self.criteria(unit, only=self.decisive[:, unit]),
            "notes": self.unit_notes(unit),
        }

    def explain_text(self, cluster_id):
        """A readable, multi-line explanation of one cluster (what the dock view and
        ``phy-bc-reason explain --cluster`` show)."""
        info = self.explain(cluster_id)
        if info is None:
            return f"cluster {cluster_id}: {UNCLASSIFIED}: bombcell has no row for this cluster"
        return format_explanation(info)


def _json_number(x):
    if x is None:
        return None
    x = float(x)
    if np.isnan(x):
        return None
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def format_explanation(info):
    """Multi-line text for one cluster from ``Classification.explain``: failing criteria first,
    those that decide the label marked with *."""
    saved = info["bombcell_label"]
    lines = [f"cluster {info['cluster_id']}: {info['reason']}",
             f"  label: {info['label'] or NO_LABEL}   bombcell's saved label: "
             f"{(saved or NO_LABEL) if saved is not None else 'not saved'}",
             f"    {'stage':13} {'criterion: fails when':58} {'value':>9} {'threshold':>10} "
             f"{'status':8} {'margin':>9}"]
    decisive = {(c["metric"], c["op"], c["param"]) for c in info["decisive"]}
    order = {"fail": 0, "nan": 1, "pass": 2, "disabled": 3}
    rows = sorted(info["criteria"], key=lambda c: (
        order[c["status"]], (c["metric"], c["op"], c["param"]) not in decisive))
    for c in rows:
        mark = "*" if (c["metric"], c["op"], c["param"]) in decisive else " "
        crit = f"{c['metric']} is NaN" if c["op"] == "isnan" else f"{c['metric']}{c['op']}{c['param']}"
        value = "NaN" if c["value"] is None else _fmt_json(c["value"])
        lines.append(f"  {mark} {c['stage']:13} {crit:58} {value:>9} {_fmt_json(c['threshold']):>10} "
                     f"{c['status']:8} {_fmt_json(c['margin']):>9}")
    lines.append("  * decides the label.  margin: distance on the passing side (negative: fails)")
    lines.extend(f"  note: {note}" for note in info["notes"])
    return "\n".join(lines)


def _fmt_json(x):
    if x is None:
        return "-"
    return x if isinstance(x, str) else format_number(x)


def read_saved_labels(dataset_dir, columns, cluster_ids):
    """bombcell's own label per unit: ``bc_unitType`` in the metrics parquet (bombcell >= 0.83),
    else cluster_bc_unitType.tsv.  Returns (labels or None, source description)."""
    if "bc_unitType" in columns:
        labels = np.array([("" if v is None else str(v)) for v in columns["bc_unitType"]], dtype=object)
        return labels, f"bc_unitType in {METRICS_FILE}"
    tsv = dataset_dir / UNIT_TYPE_TSV
    if not tsv.is_file():
        return None, "not saved"
    import csv
    saved = {}
    try:
        with tsv.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            next(reader)
            for row in reader:
                if len(row) >= 2:
                    # bombcell writes ids as floats ("12.0")
                    saved[int(float(row[0]))] = row[1]
    except (OSError, ValueError, StopIteration, UnicodeDecodeError) as e:
        logger.warning("%s: unreadable (%s), saved labels ignored", tsv, e)
        return None, "not saved"
    labels = np.array([saved.get(int(c)) for c in cluster_ids], dtype=object)
    return labels, UNIT_TYPE_TSV


def classify_dataset(dataset_dir, bombcell_dir=None):
    """Read one dataset's bombcell results and classify every unit. Raises BombcellReasonError."""
    dataset_dir = dataset_path(dataset_dir)
    folder = find_bombcell_dir(dataset_dir, bombcell_dir)
    params_file, metrics_file = folder / PARAMS_FILE, folder / METRICS_FILE
    if not params_file.exists() and not metrics_file.exists() and not any(folder.iterdir()):
        raise BombcellReasonError(f"{folder}: empty; run bombcell on this dataset to fill it")
    params, notes = complete_params(_read_params(params_file), params_file)
    columns = _read_parquet(metrics_file)
    if "nPeaks" not in columns and any(k in columns for k in _SNAKE_CASE_MARKERS):
        raise BombcellReasonError(
            f"{metrics_file}: written by bombcell 0.31 or older (snake_case names such as "
            f"n_peaks); re-run bombcell >= 0.94 on this dataset")
    needed = {r.metric for r in RULES if rule_enabled(r, params)} | {"nSpikes"}
    needed |= {r.skipped_where_nan for r in RULES if r.skipped_where_nan and rule_enabled(r, params)}
    missing = sorted(needed - set(columns))
    if missing:
        raise BombcellReasonError(
            f"{metrics_file}: metric column {', '.join(missing)} missing; re-run bombcell >= 0.94 "
            f"on this dataset")
    n_units = len(columns["nSpikes"])
    metrics = {}
    for key, value in columns.items():
        if key == "bc_unitType":
            continue
        try:
            metrics[key] = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            if key in needed:
                raise BombcellReasonError(
                    f"{metrics_file}: column {key} is not numeric; re-run bombcell") from None
    # Disabled rules still report their metric's value where bombcell saved one.
    for rule in RULES:
        metrics.setdefault(rule.metric, np.full(n_units, np.nan))
    if "phy_clusterID" in metrics:
        cluster_ids = metrics["phy_clusterID"]
        if np.isnan(cluster_ids).any():
            raise BombcellReasonError(f"{metrics_file}: phy_clusterID has empty values; re-run bombcell")
        cluster_ids = cluster_ids.astype(np.int64)
    else:
        cluster_ids = np.arange(n_units)
        notes.append(f"no phy_clusterID column in {METRICS_FILE}: units are taken as clusters "
                     f"0..{n_units - 1}, as bombcell's load_bc_results does")
    if len(np.unique(cluster_ids)) != len(cluster_ids):
        raise BombcellReasonError(f"{metrics_file}: phy_clusterID has duplicate ids; re-run bombcell")
    bombcell_label, label_source = read_saved_labels(dataset_dir, columns, cluster_ids)
    mtime = max(p.stat().st_mtime for p in (params_file, metrics_file))
    result = Classification(params, metrics, cluster_ids, bombcell_label, notes, mtime,
                            source=str(folder))
    n_differ = int(result.label_differs.sum())
    if n_differ:
        result.notes.append(
            f"{n_differ} unit(s) have a saved label ({label_source}) that differs from what "
            f"bombcell's classifier gives for the saved parameters and metrics")
    return result


# ------------------------------------------------------------------------------------------------
# The TSV phy reads
# ------------------------------------------------------------------------------------------------

def _tsv_safe(text):
    # phylib reads the TSV with csv.reader and the locale's encoding: keep one line, plain ASCII.
    text = str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text.encode("ascii", "replace").decode("ascii")


def write_reason_tsv(dataset_dir, reasons):
    """Write ``cluster_bc_classificationReason.tsv`` atomically: a temporary file in the same
    folder, flushed to disk, then renamed over the old one, so phy never reads half a file and a
    failed write leaves the previous file as it was."""
    import csv
    path = dataset_path(dataset_dir) / TSV_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{TSV_NAME}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="ascii") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["cluster_id", COLUMN])
            for cluster_id in sorted(reasons):
                writer.writerow([int(cluster_id), _tsv_safe(reasons[cluster_id])])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def phy_cluster_ids(dataset_dir):
    """The cluster ids phy shows for a dataset (spike_clusters.npy, else spike_templates.npy),
    or None when neither can be read."""
    dataset_dir = dataset_path(dataset_dir)
    for name in ("spike_clusters.npy", "spike_templates.npy"):
        path = dataset_dir / name
        if path.is_file():
            try:
                ids = np.load(path, mmap_mode="r").ravel()
                # bincount, not unique: linear time on tens of millions of spikes
                return np.flatnonzero(np.bincount(ids)) if ids.size else ids
            except (OSError, ValueError, TypeError):
                return None
    return None


def unclassified_reason(cause):
    return f"{UNCLASSIFIED}: {cause}"


def dataset_reasons(dataset_dir, bombcell_dir=None):
    """(classification, reasons by cluster id, notes) for a dataset, with phy's clusters that
    bombcell has no row for marked UNCLASSIFIED."""
    result = classify_dataset(dataset_dir, bombcell_dir)
    reasons = result.reason_by_cluster()
    notes = list(result.notes)
    phy_ids = phy_cluster_ids(dataset_dir)
    if phy_ids is not None:
        unknown = np.setdiff1d(phy_ids, result.cluster_ids)
        if len(unknown) and len(unknown) == len(phy_ids):
            raise BombcellReasonError(
                f"{result.source}: none of the dataset's {len(phy_ids)} clusters has a bombcell row; "
                f"these results belong to another dataset, or re-run bombcell on this one")
        for cluster_id in unknown.tolist():
            reasons[cluster_id] = unclassified_reason(
                "no bombcell row for this cluster (made by a merge or split in phy after bombcell "
                "ran?); re-run bombcell")
        if len(unknown):
            notes.append(f"{len(unknown)} phy cluster(s) have no bombcell row: marked {UNCLASSIFIED}")
    return result, reasons, notes


def export(dataset_dir, bombcell_dir=None):
    """Classify a dataset and write its TSV. Returns (path, classification, notes)."""
    result, reasons, notes = dataset_reasons(dataset_dir, bombcell_dir)
    try:
        path = write_reason_tsv(dataset_dir, reasons)
    except OSError as e:
        raise BombcellReasonError(
            f"{dataset_path(dataset_dir) / TSV_NAME}: cannot be written ({e.strerror or e}); "
            f"check the folder's permissions and free space") from None
    return path, result, notes


def label_counts(labels):
    names, counts = np.unique(np.asarray([lab or NO_LABEL for lab in labels], dtype=object),
                              return_counts=True)
    order = ["GOOD", "MUA", "NOISE", "NON-SOMA", "NON-SOMA GOOD", "NON-SOMA MUA", NO_LABEL]
    pairs = dict(zip(names.tolist(), counts.tolist()))
    return {k: pairs[k] for k in order if k in pairs}


# ------------------------------------------------------------------------------------------------
# Python API for notebooks
# ------------------------------------------------------------------------------------------------

def load_reasons(dataset_dir, bombcell_dir=None):
    """One row per unit: cluster_id, label, bombcell_label, reason, n_failing, notes, and for
    every criterion ``<criterion>.value`` and ``<criterion>.status`` columns.

    >>> df = load_reasons("path/to/kilosort_output")
    >>> df[df.label == "MUA"].reason.value_counts()
    """
    import pandas as pd
    result = classify_dataset(dataset_dir, bombcell_dir)
    data = {
        "cluster_id": result.cluster_ids,
        "label": result.label,
        "bombcell_label": result.bombcell_label,
        "reason": result.reason,
        "n_failing": result.fails.sum(axis=0),
        "notes": ["; ".join(result.unit_notes(u)) for u in range(len(result))],
    }
    statuses = np.array(STATUSES, dtype=object)
    for i, rule in enumerate(RULES):
        data[f"{rule.name}.value"] = result.values[i]
        data[f"{rule.name}.status"] = statuses[result.status[i]]
    frame = pd.DataFrame(data)
    frame.attrs["notes"] = result.notes
    return frame


def explain_cluster(dataset_dir, cluster_id, bombcell_dir=None):
    """A readable explanation of one cluster, for print() in a notebook."""
    return classify_dataset(dataset_dir, bombcell_dir).explain_text(cluster_id)


def rules_markdown():
    """The rule table as Markdown (the README's table is tested equal to this)."""
    lines = ["| stage | criterion: the unit fails when | threshold parameter | enabled when |",
             "|---|---|---|---|"]
    for rule in RULES:
        stage = rule.stage + (f" {rule.route}" if rule.route else "")
        test = f"`{rule.metric}` is NaN" if rule.op == "isnan" else f"`{rule.metric}` {rule.op} threshold"
        enabled = " and ".join(f"{flag}" if want else f"not {flag}" for flag, want in rule.enabled_when)
        extras = []
        if rule.skipped_where_nan:
            extras.append(f"only where `{rule.skipped_where_nan}` is not NaN")
        if rule.kept_when:
            flag, metric, value = rule.kept_when
            extras.append(f"passes where {flag} and `{metric}` == {value}")
        enabled = "; ".join(filter(None, [enabled or "always"] + extras))
        lines.append(f"| {stage} | {test} | {('`' + rule.param + '`') if rule.param else '-'} | {enabled} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def _summary_line(result, notes):
    counts = ", ".join(f"{k} {v}" for k, v in label_counts(result.label).items())
    return f"{len(result)} units: {counts}" + (f" ({len(notes)} note(s))" if notes else "")


def _cmd_export(args):
    failed = 0
    total = len(args.dataset)
    for i, folder in enumerate(args.dataset, 1):
        prefix = f"[{i}/{total}] " if total > 1 else ""
        try:
            path, result, notes = export(folder, args.bombcell_dir)
        except BombcellReasonError as e:
            failed += 1
            print(f"{prefix}{folder}: error: {e}", file=sys.stderr, flush=True)
            continue
        print(f"{prefix}{path}: {_summary_line(result, notes)}", flush=True)
        for note in notes if args.verbose else ():
            print(f"    note: {note}")
    if failed:
        print(f"{failed} of {total} dataset(s) failed; nothing was written for them", file=sys.stderr)
    return 1 if failed else 0


def _cmd_explain(args):
    result, reasons, notes = dataset_reasons(args.dataset, args.bombcell_dir)
    cluster_ids = args.cluster if args.cluster else sorted(reasons)
    missing = 0
    for cluster_id in cluster_ids:
        info = result.explain(cluster_id)
        if args.json:
            if info is None:
                info = {"cluster_id": int(cluster_id), "label": None, "bombcell_label": None,
                        "reason": reasons.get(cluster_id, unclassified_reason(
                            "no bombcell row for this cluster")),
                        "criteria": [], "decisive": [], "notes": []}
            print(json.dumps(info))
        elif args.cluster:
            print(format_explanation(info) if info else
                  f"cluster {cluster_id}: {reasons.get(cluster_id, unclassified_reason('no bombcell row for this cluster'))}")
            print()
        else:
            print(f"{cluster_id:>6}  {reasons[cluster_id]}")
        if info is None and cluster_id not in reasons:
            missing += 1
    if not args.json:
        for note in notes:
            print(f"note: {note}")
        if not args.cluster:
            print(f"{_summary_line(result, notes)}; details: phy-bc-reason explain DIR --cluster ID")
    return 1 if missing else 0


def _cmd_rules(args):
    print(rules_markdown())
    return 0


def _cmd_install(args):
    install = globals().get("install_plugin")
    if install is None:
        raise BombcellReasonError("this version has no installer; copy phy_bc_reason_plugin.py "
                                  "into ~/.phy/plugins instead")
    print(install(args.config_dir))
    return 0


def _cmd_demo(args):
    import phy_bc_reason_demo
    return phy_bc_reason_demo.main(args.demo_args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="phy-bc-reason",
        description="Why did bombcell label each unit GOOD, MUA, NOISE or NON-SOMA?")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help=f"write DIR/{TSV_NAME} for each dataset folder")
    p.add_argument("dataset", nargs="+", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DIR/bombcell)")
    p.add_argument("-v", "--verbose", action="store_true", help="print notes about each dataset")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("explain", help="print the reason of every unit, or all criteria of some")
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DIR/bombcell)")
    p.add_argument("--cluster", type=int, action="append", metavar="ID",
                   help="explain this cluster in full (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("rules", help="print the rule table (Markdown)")
    p.set_defaults(func=_cmd_rules)

    p = sub.add_parser("install", help="enable the plugin in ~/.phy/phy_config.py")
    p.add_argument("--config-dir", help="phy's configuration folder (default: ~/.phy)")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("demo", help="build a demo dataset, run bombcell on it, show the reasons",
                       add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BombcellReasonError as e:
        print(f"phy-bc-reason: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `phy-bc-reason explain DIR | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())

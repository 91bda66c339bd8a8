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

# A child of phy's logger: inside phy its messages reach phy.log and the status bar.
logger = logging.getLogger("phy.bc_reason")

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

ROUTE_NAMES = {  # in the criteria view
    "A": "shape route: all 4 width/ratio tests fail",
    "B": "main-peak route",
}
ROUTE_TAGS = {"A": "(shape, all 4 fail)", "B": "(main peak)"}  # in the column: it must stay short

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
STATUS_ORDER = {"fail": 0, "nan": 1, "pass": 2, "disabled": 3}  # how explanations list criteria
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


def _one_line(error):
    """An exception as one line of text."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


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
        raise BombcellReasonError(
            f"{path}: cannot be read ({_one_line(e)}); re-run bombcell to rewrite it") from None
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
    """Short text for a value: integers stay integers, large values are rounded, inf and NaN by
    name, others to ``digits`` significant digits (``None``: the shortest exact text)."""
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
    return repr(x) if digits is None else f"{x:.{digits}g}"  # tiny values keep their exponent


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
        saved = self.bombcell_label
        self.label_differs = np.not_equal(saved, None) & (saved != self.label)
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
        non_somatic = np.where(has_b, f"{ROUTE_TAGS['B']} " + route_b, "").astype(object)
        non_somatic[has_a & has_b] += "; "
        non_somatic[has_a] += f"{ROUTE_TAGS['A']} " + route_a[has_a]

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
            return f"cluster {cluster_id}: {NO_ROW_REASON}"
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
    rows = sorted(info["criteria"], key=lambda c: (
        STATUS_ORDER[c["status"]], (c["metric"], c["op"], c["param"]) not in decisive))
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


def read_cluster_tsv(path):
    """A two-column ``cluster_id``/value TSV as {cluster_id: text}.  Ids may be written as floats
    ("12.0"), as bombcell does.  Raises OSError or ValueError (UnicodeDecodeError included)."""
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return {int(float(row[0])): row[1] for row in rows if len(row) >= 2}


def read_saved_labels(dataset_dir, columns, cluster_ids):
    """bombcell's own label per unit: ``bc_unitType`` in the metrics parquet (bombcell >= 0.83),
    else cluster_bc_unitType.tsv.  Returns (labels or None, source description)."""
    if "bc_unitType" in columns:
        labels = np.array([("" if v is None else str(v)) for v in columns["bc_unitType"]], dtype=object)
        return labels, f"bc_unitType in {METRICS_FILE}"
    tsv = dataset_dir / UNIT_TYPE_TSV
    if not tsv.is_file():
        return None, "not saved"
    try:
        saved = read_cluster_tsv(tsv)
    except (OSError, ValueError) as e:
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


# The text for a cluster bombcell has no row for, when nothing more is known about it (the plugin
# knows more: "merged from 12, 15 after bombcell ran", "split from 12 ...").
NO_ROW_REASON = unclassified_reason("no bombcell row for this cluster; re-run bombcell")
# Texts the plugin gives clusters made in phy after bombcell ran; kept through our own TSV.
ORIGIN_PREFIXES = (f"{UNCLASSIFIED}: merged from ", f"{UNCLASSIFIED}: split from ")


def recorded_origins(previous, classified):
    """From an earlier column ({cluster_id: text}), the merge/split texts of clusters bombcell has
    no row for: what the plugin recorded when they were made in phy after bombcell ran."""
    origins = {}
    for cluster_id, text in (previous or {}).items():
        try:
            cluster_id = int(cluster_id)
        except (TypeError, ValueError):
            continue
        if cluster_id not in classified and isinstance(text, str) and text.startswith(ORIGIN_PREFIXES):
            origins[cluster_id] = text
    return origins


def foreign_results_message(source, n_clusters):
    return (f"{source}: none of the dataset's {n_clusters} clusters has a bombcell row; these "
            f"results belong to another dataset, or re-run bombcell on this one")


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
            raise BombcellReasonError(foreign_results_message(result.source, len(phy_ids)))
        # Keep what the plugin recorded about clusters merged or split in phy after bombcell ran
        # (our own TSV: unreadable means nothing recorded).
        origins = {}
        if len(unknown):
            try:
                origins = recorded_origins(read_cluster_tsv(dataset_path(dataset_dir) / TSV_NAME),
                                           reasons)
            except (OSError, ValueError):
                pass
        for cluster_id in unknown.tolist():
            reasons[cluster_id] = origins.get(cluster_id, NO_ROW_REASON)
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
                        "reason": reasons.get(cluster_id, NO_ROW_REASON),
                        "criteria": [], "decisive": [], "notes": []}
            print(json.dumps(info))
        elif args.cluster:
            print(format_explanation(info) if info else
                  f"cluster {cluster_id}: {reasons.get(cluster_id, NO_ROW_REASON)}")
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
    print(install_plugin(args.config_dir))
    return 0


def _cmd_demo(args):
    import importlib.util
    if importlib.util.find_spec("bombcell") is None:  # an extra ([demo]), not a requirement
        print("phy-bc-reason demo: it runs bombcell, which is not installed here; "
              "pip install 'phy-bc-reason[demo]'", file=sys.stderr)
        return 1
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


# ------------------------------------------------------------------------------------------------
# The phy plugin
# ------------------------------------------------------------------------------------------------
#
# How the column gets into phy, exactly once (phy 2.1 / phylib 2.7)
# ------------------------------------------------------------------
# phy builds the cluster and similarity views from ``Supervisor.columns``, computed once in
# ``Supervisor.__init__`` as ``['id'] + list(controller.cluster_metrics) + <labels>``, where the
# labels are ``TemplateModel.metadata``: phylib reads *every* ``*.tsv``/``*.csv`` of the dataset
# folder (except cluster_info.tsv) as a ``{field: {cluster_id: value}}`` label when the model
# loads.  Labels live in ``supervisor.cluster_meta``; a merge or split copies the parents' label
# to the new cluster (``ClusterMeta.set_from_descendants``, "the largest cluster wins"), and
# phy's save writes every label back to ``cluster_<field>.tsv``.
#
# So the reason is NOT a label.  It is a cluster *metric*: a function ``cluster_id -> text``
# that ``Supervisor.get_cluster_info`` calls whenever a row is built (startup, clusters added by
# a merge/split/undo/redo, similarity view).  ``attach_to_controller`` runs after the model is
# loaded but before the supervisor exists, and there it
#   1. pops ``bc_classificationReason`` from ``controller.model.metadata`` (the TSV that an
#      earlier save or ``phy-bc-reason export`` left), so it never becomes a second column, a
#      ``cluster_meta`` field that phy would copy from parents, or a file phy rewrites on save;
#   2. puts our function first in ``controller.cluster_metrics``.
# One name in ``Supervisor.columns`` -> one column in each view.  A new cluster id has no
# bombcell row; the text for it comes from the ``cluster`` event that created it (merged/split
# from ...), never from its parents' rows.  Undo/redo need no bookkeeping: they re-add the old
# ids, whose rows the function looks up again.  Clusters made in an earlier session keep their
# "merged from"/"split from" text through the TSV, which we read in step 1.
#
# Column order: phy orders the views' columns as ``supervisor.columns`` (no saved column order
# in phy 2.1's native Qt table; its GUI state keeps only the sort and the selection), so on
# ``controller_ready`` -- after the supervisor exists, before ``create_gui`` builds the tables --
# we move ``bc_classificationReason`` and ``bc_unitType`` right after ``id``, and leave the raw
# bombcell metric labels out unless the user chose to show them (see set_show_raw_metrics).
#
# Events and APIs used: controller ``controller_ready`` and ``gui_ready``; supervisor ``cluster``
# (UpdateInfo: description, history, added, descendants) and ``select`` (the dock view), and
# ``save_clustering`` (connected last=True, so it runs after phy's own ``on_save_clustering``);
# GUI ``close``; view ``close_view``; ``controller.cluster_metrics``, ``controller.view_creator``,
# ``supervisor.columns``, ``ClusterView._reset_table`` (what
# phy's ``Supervisor.label`` uses to add a column), ``Actions(gui, menu=...)`` with
# ``alias``/``prompt`` for the ``:bc`` snippet, ``gui.state`` (the plugin's toggles, saved in
# phy's state.json), ``gui.status_message`` and the "phy" logger (phy.log + status bar).
# Every function phy calls is wrapped: an exception is logged and shown, never raised into phy.

PLUGIN_NAME = "BombcellReasonPlugin"
VIEW_NAME = "BombcellReasonView"
UNIT_TYPE_COLUMN = "bc_unitType"
# The cluster_<metric>.tsv files bombcell 0.94 writes next to the data (save_utils.get_metric_keys),
# used when the results cannot be read; otherwise Classification.metric_columns is used too.
_BOMBCELL_TSV_METRICS = (
    "nPeaks", "nTroughs", "waveformDuration_peakTrough", "spatialDecaySlope",
    "waveformBaselineFlatness", "scndPeakToTroughRatio", "mainPeakToTroughRatio",
    "peak1ToPeak2Ratio", "troughToPeak2Ratio", "mainPeak_before_width", "mainTrough_width",
    "percentageSpikesMissing_gaussian", "percentageSpikesMissing_symmetric", "RPV_window_index",
    "fractionRPVs_estimatedTauR", "estimatedTauR", "RPV_status", "presenceRatio",
    "maxDriftEstimate", "cumDriftEstimate", "rawAmplitude", "signalToNoiseRatio",
    "isolationDistance", "Lratio", "silhouetteScore", "useTheseTimesStart", "useTheseTimesStop",
)
_MAX_CLUSTERS_IN_VIEW = 6


def _ids_text(ids):
    return ", ".join(str(i) for i in sorted({int(i) for i in ids}))


def merged_reason(parents):
    return unclassified_reason(f"merged from {_ids_text(parents)} after bombcell ran; re-run bombcell")


def split_reason(parents):
    return unclassified_reason(f"split from {_ids_text(parents)} after bombcell ran; re-run bombcell")


def _report_exception(what, error, gui=None):
    """An exception in the plugin: one line to phy.log and the status bar, traceback to phy.log."""
    import traceback
    message = f"bombcell reasons: {what} failed: {_one_line(error)}"
    try:
        logger.error(message)
        logger.debug("".join(traceback.format_exception(type(error), error,
                                                            error.__traceback__)))
        if gui is not None:
            gui.status_message = message
    except Exception:  # the report itself must not raise into phy either
        pass


def _guarded(what):
    """Decorator for every function phy calls: exceptions are reported, never raised into phy
    (phylib's ``emit`` does not catch them, so one would stop the other handlers and plugins)."""
    def decorate(f):
        import functools

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except Exception as e:
                owner = args[0] if args and isinstance(args[0], _PluginLogic) else None
                _report_exception(what, e, getattr(owner, "gui", None))
        return wrapper
    return decorate


class ReasonBook:
    """The text of the column for every cluster phy shows, as O(1) lookups.

    A cluster bombcell classified gets bombcell's reason; a cluster made in phy after bombcell ran
    gets "UNCLASSIFIED: merged from ..."/"split from ..."; any other gets NO_ROW_REASON.  When
    bombcell's results cannot be read every cluster gets "UNCLASSIFIED: <problem>".  Pure Python
    (no phy), so it is cheap to test and to rebuild on reload.
    """

    def __init__(self, classification=None, error=None, previous=None):
        self.classification = classification
        self.error = error
        self._base = classification.reason_by_cluster() if classification is not None else {}
        # cluster id made after bombcell ran -> its UNCLASSIFIED text
        self._origin = recorded_origins(previous, self._base)
        self._html = {}  # cluster id -> cached HTML of the dock view

    @classmethod
    def load(cls, dataset_dir, previous=None):
        """Classify a dataset; any failure becomes the book's ``error``, never an exception."""
        try:
            return cls(classify_dataset(dataset_dir), previous=previous)
        except BombcellReasonError as e:
            return cls(error=_one_line(e), previous=previous)
        except Exception as e:  # a bug or an unexpected file: phy must still open
            _report_exception("reading bombcell's results", e)
            return cls(error=f"bombcell's results could not be read ({_one_line(e)}); "
                             f"see phy.log", previous=previous)

    @property
    def ok(self):
        return self.error is None

    @property
    def source_mtime(self):
        return self.classification.source_mtime if self.classification is not None else None

    def metric_columns(self):
        names = set(_BOMBCELL_TSV_METRICS)
        if self.classification is not None:
            names.update(self.classification.metric_columns)
        return names

    def check_clusters(self, cluster_ids, prune=False):
        """Turn results that match none of phy's clusters into an error (another dataset's).
        ``prune``: forget origins (read from an old TSV) of clusters that do not exist."""
        cluster_ids = [int(c) for c in cluster_ids]
        if prune:
            existing = set(cluster_ids)
            self._origin = {c: t for c, t in self._origin.items() if c in existing}
        if (self.ok and self.classification is not None and cluster_ids
                and not any(c in self._base for c in cluster_ids)):
            self.error = foreign_results_message(self.classification.source, len(cluster_ids))
            self._html.clear()

    def reason(self, cluster_id):
        if self.error is not None:
            return unclassified_reason(self.error)
        text = self._base.get(cluster_id)
        if text is None:
            text = self._origin.get(cluster_id, NO_ROW_REASON)
        return text

    def reasons(self, cluster_ids):
        return {int(c): self.reason(int(c)) for c in cluster_ids}

    def adopt_origins(self, other):
        """Keep what another book learnt about clusters made in this session (for reload)."""
        for cluster_id, text in other._origin.items():
            if cluster_id not in self._base:
                self._origin.setdefault(cluster_id, text)

    def record(self, up):
        """Learn where the clusters of a merge/split come from, from phy's ``cluster`` event.

        An undo re-adds old clusters and reports them as "descendants" of the undone one: ignored.
        A redo re-adds the ids of the redone action: what we learnt then still holds.  A new
        action always creates brand-new ids (phy never reuses them), so its text replaces any.
        """
        history = up.get("history")
        if history == "undo" or not up.get("added"):
            return
        parents = {}
        for old, new in up.get("descendants") or ():
            parents.setdefault(int(new), set()).add(int(old))
        merge = up.get("description") == "merge"
        for new in up["added"]:
            new = int(new)
            if new in self._base or (history == "redo" and new in self._origin):
                continue
            from_ = parents.get(new, set()) - {new}
            if not from_:
                continue
            self._origin[new] = merged_reason(from_) if merge else split_reason(from_)
            self._html.pop(new, None)

    # -- the dock view ----------------------------------------------------------------------------

    def html(self, cluster_ids):
        """HTML of the dock view for a selection (cached per cluster: a selection is a join)."""
        cluster_ids = [int(c) for c in cluster_ids][:_MAX_CLUSTERS_IN_VIEW]
        if not cluster_ids:
            return _html_page("<p class='dim'>Select a cluster to see why bombcell labelled it.</p>")
        parts = []
        for cluster_id in cluster_ids:
            part = self._html.get(cluster_id)
            if part is None:
                part = self._html[cluster_id] = self._cluster_html(cluster_id)
            parts.append(part)
        return _html_page("<hr>".join(parts))

    def _cluster_html(self, cluster_id):
        info = None
        if self.error is None and cluster_id in self._base:
            info = self.classification.explain(cluster_id)
        if info is None:
            return _unclassified_html(cluster_id, self.reason(cluster_id), self.error)
        return _explanation_html(info)


# -- HTML (QTextBrowser's rich-text subset: tables, inline styles, no CSS selectors on classes
#    beyond the document stylesheet) ----------------------------------------------------------

_LABEL_COLORS = {"GOOD": "#86d16d", "MUA": "#e0b040", "NOISE": "#a0a0a0", UNCLASSIFIED: "#e07070"}
_CSS = """
body { background-color: #000; color: #ddd; font-size: 10pt; }
h3 { margin: 2px 0 2px 0; }
td, th { padding: 1px 5px 1px 5px; white-space: nowrap; }
th { color: #aaa; text-align: left; font-weight: normal; }
.dim { color: #888; }
.num { text-align: right; }
"""


def _esc(text):
    import html
    return html.escape(str(text), quote=False)


def _html_page(body):
    return f"<html><head><style>{_CSS}</style></head><body>{body}</body></html>"


def _label_color(label):
    label = str(label or "")
    for key, color in _LABEL_COLORS.items():
        if label.startswith(key):
            return color
    return "#c090e0" if label.startswith("NON-SOMA") else "#ddd"


def _fmt(x):
    return "&ndash;" if x is None else _esc(_fmt_json(x))


def _stage_title(stage):
    base, _, route = stage.partition(" ")
    if route and route in ROUTE_NAMES:
        return f"{base} ({ROUTE_NAMES[route]})"
    return stage


def _explanation_html(info):
    label = info["label"] or NO_LABEL
    saved = info["bombcell_label"]
    out = [
        f"<h3>cluster {info['cluster_id']} &nbsp;"
        f"<span style='color:{_label_color(label)}'>{_esc(label)}</span></h3>",
        f"<p><b>reason:</b> {_esc(info['reason'])}<br>",
        f"<span class='dim'>bombcell's own label:</span> "
        f"{_esc(saved) if saved is not None else 'not saved'}</p>",
    ]
    decisive = {(c["metric"], c["op"], c["param"]) for c in info["decisive"]}
    stages = []  # stage order of the rule table, then failing criteria first inside each stage
    for c in info["criteria"]:
        if c["stage"] not in stages:
            stages.append(c["stage"])
    rows = ["<table cellspacing='0'><tr><th></th><th>criterion</th><th class='num'>value</th>"
            "<th></th><th class='num'>limit</th><th>status</th><th class='num'>margin</th></tr>"]
    worst = {s: min(STATUS_ORDER[c["status"]] for c in info["criteria"] if c["stage"] == s)
             for s in stages}
    for stage in sorted(stages, key=lambda s: (worst[s], stages.index(s))):
        rows.append(f"<tr><td colspan='7' style='white-space:normal; color:#9cf; font-weight:bold;"
                    f" padding-top:6px'>{_esc(_stage_title(stage))}</td></tr>")
        crits = [c for c in info["criteria"] if c["stage"] == stage]
        for c in sorted(crits, key=lambda c: STATUS_ORDER[c["status"]]):
            is_decisive = (c["metric"], c["op"], c["param"]) in decisive
            if c["status"] == "fail":
                style, dim = " style='background-color:#5a1d1d; color:#ffc0c0'", "#d89090"
            elif c["status"] in ("nan", "disabled"):
                style, dim = " style='color:#777'", "#666"
            else:
                style, dim = "", "#888"
            metric = _esc(c["metric"] + (" is NaN" if c["op"] == "isnan" else ""))
            name = f"<b>{metric}</b>" if is_decisive else metric
            if c["param"]:
                name += f"<br><span style='color:{dim}; font-size:9pt'>{_esc(c['param'])}</span>"
            mark = "&#9733;" if is_decisive else ""
            op = "" if c["op"] == "isnan" else _esc(c["op"])
            rows.append(
                f"<tr{style}><td>{mark}</td><td>{name}</td>"
                f"<td class='num'>{'NaN' if c['value'] is None else _fmt(c['value'])}</td><td>{op}</td>"
                f"<td class='num'>{_fmt(c['threshold'])}</td><td>{c['status']}</td>"
                f"<td class='num'>{_fmt(c['margin'])}</td></tr>")
    rows.append("</table>")
    out.append("".join(rows))
    out.append("<p class='dim'>&#9733; decides the label &middot; margin: distance on the passing "
               "side, negative = failing</p>")
    if info["notes"]:
        out.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in info["notes"]) + "</ul>")
    return "".join(out)


def _unclassified_html(cluster_id, reason, error):
    if error is not None:
        hint = ("Fix the problem above (or run bombcell), then use Bombcell &gt; Reload bombcell "
                "results; phy itself works as usual.")
    else:
        hint = ("bombcell only judged the clusters that existed when it ran. Save, re-run bombcell "
                "on this dataset, then use Bombcell &gt; Reload bombcell results.")
    return (f"<h3>cluster {cluster_id} &nbsp;<span style='color:{_label_color(UNCLASSIFIED)}'>"
            f"{UNCLASSIFIED}</span></h3><p>{_esc(reason)}</p><p class='dim'>{hint}</p>")


# -- the plugin -------------------------------------------------------------------------------


class _PluginLogic:
    """Everything ``BombcellReasonPlugin`` does; the phy class adds only ``IPlugin`` (phy is
    imported lazily, see ``_define_phy_classes``)."""

    def attach_to_controller(self, controller):
        """Called by phy after the model is loaded and before the supervisor is created."""
        self.controller = controller
        controller.bombcell_reason = self  # for the IPython view, other plugins and tests
        self.gui = None
        self.view = None
        self.show_raw_metrics = False
        self._startup_message = None
        self._reason_failed = False
        self.book = ReasonBook(error="bombcell reasons not loaded yet")
        try:
            self._connect(self._on_controller_ready, "controller_ready", controller)
            self._connect(self._on_gui_ready, "gui_ready", controller)
            self._attach(controller)
        except Exception as e:  # phy opens anyway; the status bar says what went wrong
            if self.book.ok:
                self.book = ReasonBook(error=f"plugin error: {_one_line(e)}")
            self._startup_message = f"bombcell reasons: attaching to phy failed: {_one_line(e)}"
            _report_exception("attaching to phy", e)

    def _connect(self, func, event, sender):
        from phylib.utils import connect
        connect(func, event=event, sender=sender, last=event == "save_clustering")

    def _attach(self, controller):
        self.dataset_dir = Path(controller.dir_path)
        metadata = getattr(controller.model, "metadata", None)
        previous = metadata.pop(COLUMN, None) if isinstance(metadata, dict) else None
        self.book = ReasonBook.load(self.dataset_dir, previous=previous)
        if self.book.ok:
            logger.debug("bombcell reasons: read %s", self.book.classification.source)
        else:
            logger.warning("bombcell reasons unavailable: %s", self.book.error)

        # Our column first among the metrics, so that it follows the id column.
        metrics = controller.cluster_metrics
        others = {k: v for k, v in metrics.items() if k != COLUMN}
        metrics.clear()
        metrics[COLUMN] = self.reason
        metrics.update(others)

        # In View > Add view.  Shown by default: added once in _on_gui_ready (phy's first start
        # copies its own default state.json, whose view_count would ignore default_views).
        controller.view_creator[VIEW_NAME] = self._create_view

    # -- the column -------------------------------------------------------------------------------

    def reason(self, cluster_id):
        """The column's value (phy calls this for every row it builds)."""
        try:
            return self.book.reason(cluster_id)
        except Exception as e:
            if not self._reason_failed:  # once, not once per row
                self._reason_failed = True
                _report_exception("computing the reason column", e, self.gui)
            return unclassified_reason(f"plugin error: {_one_line(e)}")

    # -- controller events ------------------------------------------------------------------------

    @_guarded("setting up the cluster view")
    def _on_controller_ready(self, sender):
        supervisor = self.controller.supervisor
        self.book.check_clusters(supervisor.clustering.cluster_ids, prune=True)
        # Column order: id, our reason, bombcell's label, then phy's and the other labels.
        first = ["id", COLUMN] + ([UNIT_TYPE_COLUMN] if UNIT_TYPE_COLUMN in supervisor.columns else [])
        supervisor.columns[:] = first + [c for c in supervisor.columns if c not in first]
        # The raw metric columns are hidden by leaving them out of the views (see
        # set_show_raw_metrics), decided before phy builds the tables.
        metrics = self.book.metric_columns()
        self._raw_metric_columns = [c for c in supervisor.columns if c in metrics]
        self.show_raw_metrics = self._saved_state().get("show_raw_metrics", False) is True
        if not self.show_raw_metrics:
            supervisor.columns[:] = [c for c in supervisor.columns if c not in metrics]
        self._connect(self._on_cluster, "cluster", supervisor)
        self._connect(self._on_save_clustering, "save_clustering", supervisor)
        self._write_tsv_if_stale()

    @_guarded("following a clustering change")
    def _on_cluster(self, sender, up):
        self.book.record(up)

    @_guarded("writing the reasons TSV after phy's save")
    def _on_save_clustering(self, sender, *args, **kwargs):
        self.write_tsv(on_save=True)

    @_guarded("setting up the GUI")
    def _on_gui_ready(self, sender, gui):
        self.gui = gui
        state = gui.state.get(PLUGIN_NAME, None) or {}
        self._create_actions(gui)
        self._connect(self._on_gui_close, "close", gui)
        if self.book.ok and not state.get("view_added_once") and not gui.list_views(VIEW_NAME):
            gui.create_and_add_view(VIEW_NAME)
        if self.book.ok or gui.list_views(VIEW_NAME):
            state["view_added_once"] = True
        state["show_raw_metrics"] = self.show_raw_metrics
        gui.state[PLUGIN_NAME] = state
        self.say(self._startup_message or self.summary(),
                 logging.INFO if self.book.ok else logging.WARNING)

    @_guarded("closing")
    def _on_gui_close(self, sender):
        state = self.gui.state.get(PLUGIN_NAME, None) or {}
        state["show_raw_metrics"] = self.show_raw_metrics
        self.gui.state[PLUGIN_NAME] = state
        # The GUI's handlers go; the controller's stay (a controller may get another GUI).
        from phylib.utils import unconnect
        unconnect(self._on_gui_close)
        if self.view is not None:
            self.view.detach()

    # -- feedback ---------------------------------------------------------------------------------

    def say(self, message, level=logging.INFO):
        """One line to phy.log and the status bar."""
        logger.log(level, message)
        if self.gui is not None:
            self.gui.status_message = message

    def summary(self):
        book = self.book
        if not book.ok:
            return f"bombcell reasons unavailable ({UNCLASSIFIED}): {book.error}"
        counts = label_counts(book.classification.label)
        text = ", ".join(f"{k} {v}" for k, v in counts.items())
        source = book.classification.source
        return f"bombcell reasons: {len(book.classification)} units ({text}) from {source}"

    def _cluster_ids(self):
        return self.controller.supervisor.clustering.cluster_ids

    # -- TSV --------------------------------------------------------------------------------------

    def write_tsv(self, on_save=False):
        """Write cluster_bc_classificationReason.tsv for phy's current clusters."""
        if not self.book.ok:
            self.say(f"bombcell reasons: {TSV_NAME} not written: {self.book.error}", logging.WARNING)
            return None
        path = write_reason_tsv(self.dataset_dir, self.book.reasons(self._cluster_ids()))
        self.say(f"bombcell reasons: wrote {path}{' after phy saved' if on_save else ''}")
        return path

    def _write_tsv_if_stale(self):
        if not self.book.ok:
            return
        path = self.dataset_dir / TSV_NAME
        try:
            stale = not path.exists() or path.stat().st_mtime < self.book.source_mtime
        except OSError:
            stale = True
        if stale:
            written = self.write_tsv()
            self._startup_message = f"{self.summary()}; wrote {written.name}"

    # -- columns ----------------------------------------------------------------------------------

    def _saved_state(self):
        """The plugin's part of phy's GUI state file, read before the GUI exists."""
        import json
        try:
            from phylib.utils._misc import phy_config_dir
            config_dir = Path(self.controller.config_dir or phy_config_dir())
            path = config_dir / self.controller.gui_name / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {}
            return state.get(PLUGIN_NAME) or {}
        except Exception as e:  # a corrupt state file: phy will say so itself
            logger.debug("bombcell reasons: GUI state unreadable: %s", e)
            return {}

    def _rebuild_tables(self):
        """Rebuild the cluster and similarity views with ``supervisor.columns`` (what phy's own
        ``Supervisor.label`` does when it adds a column), keeping the sort and the selection."""
        supervisor = self.controller.supervisor
        cv, sv = supervisor.cluster_view, supervisor.similarity_view
        clusters, similar = list(supervisor.selected_clusters), list(supervisor.selected_similar)

        # The columns are read at each step, not here: in phy 2.0 the steps run later, and a
        # second toggle meanwhile must win.
        def rebuild_cluster_view(sort):
            _rebuild_table(cv, supervisor.cluster_info, list(supervisor.columns), sort,
                           then=rebuild_similarity_view)

        def rebuild_similarity_view():
            _rebuild_table(sv, [], list(supervisor.columns) + ["similarity"], ("similarity", "desc"),
                           then=lambda: _reselect(supervisor, clusters, similar))

        _table_sort(cv, rebuild_cluster_view)

    def _refresh_tables(self):
        supervisor = self.controller.supervisor
        rows = [{"id": c, COLUMN: self.book.reason(c)} for c in self._cluster_ids()]
        supervisor.cluster_view.change(rows)
        supervisor.similarity_view.change(rows)

    # -- dock view --------------------------------------------------------------------------------

    def _create_view(self):
        cls = _define_phy_classes()[1]
        return cls(self)

    def selection_html(self, cluster_ids):
        return self.book.html(cluster_ids)

    def _show_view(self):
        gui = self.gui
        views = gui.list_views(VIEW_NAME)
        view = views[0] if views else gui.create_and_add_view(VIEW_NAME)
        if view is not None:
            view.show_selection(self.controller.supervisor.selected)
            dock = getattr(view, "dock", None)
            if dock is not None:
                dock.show()
                dock.raise_()
        return view

    # -- the Bombcell menu ------------------------------------------------------------------------

    def _create_actions(self, gui):
        from phy.gui.actions import Actions
        self.actions = actions = Actions(gui, name="Bombcell", menu="&Bombcell",
                                         insert_menu_before="&Help")
        actions.add(self._action_show_criteria, name="show_criteria_of_selected_cluster",
                    shortcut="alt+b", alias="bcs")
        actions.add(self._action_select, name="select_cluster_and_show_criteria", alias="bc",
                    prompt=True, n_args=1)
        actions.separator()
        actions.add(self._action_export, name="export_reasons_TSV_now", alias="bce")
        actions.add(self._action_reload, name="reload_bombcell_results", alias="bcr")
        actions.add(self._action_toggle_metrics, name="show_raw_bombcell_metric_columns",
                    alias="bcm", checkable=True, checked=self.show_raw_metrics)

    @_guarded("Show criteria of selected cluster")
    def _action_show_criteria(self):
        """Show every bombcell criterion of the selected cluster in the Bombcell view."""
        self.show_criteria()

    @_guarded("the :bc snippet")
    def _action_select(self, cluster_id):
        """Select a cluster and show its bombcell criteria (snippet :bc ID)."""
        self.select_and_show(cluster_id)

    @_guarded("Export reasons TSV now")
    def _action_export(self):
        """Write cluster_bc_classificationReason.tsv for the current clusters now."""
        self.write_tsv()

    @_guarded("Reload bombcell results")
    def _action_reload(self):
        """Read bombcell's results again (after bombcell ran again) without restarting phy."""
        self.reload()

    @_guarded("Show/hide raw bombcell metric columns")
    def _action_toggle_metrics(self, checked):
        """Show or hide the cluster_<metric>.tsv columns that bombcell writes for phy."""
        self.set_show_raw_metrics(checked)

    def show_criteria(self):
        selected = self.controller.supervisor.selected
        self._show_view()
        if selected:
            self.say(f"cluster {selected[0]}: {self.book.reason(selected[0])}")
        else:
            self.say("bombcell reasons: select a cluster first")

    def select_and_show(self, cluster_id):
        if isinstance(cluster_id, (list, tuple)):
            cluster_ids = [int(c) for c in cluster_id]
        else:
            cluster_ids = [int(cluster_id)]
        existing = set(int(c) for c in self._cluster_ids())
        missing = [c for c in cluster_ids if c not in existing]
        if missing:
            self.say(f"bombcell reasons: no cluster {_ids_text(missing)} in this dataset", logging.WARNING)
            return
        self.controller.supervisor.select(cluster_ids)
        self._show_view()
        self.say(f"cluster {cluster_ids[0]}: {self.book.reason(cluster_ids[0])}")

    def reload(self):
        old = self.book
        book = ReasonBook.load(self.dataset_dir)
        book.adopt_origins(old)
        book.check_clusters(self._cluster_ids())
        self.book = book
        self._refresh_tables()
        for view in self.gui.list_views(VIEW_NAME) if self.gui is not None else ():
            view.show_selection(self.controller.supervisor.selected)
        if book.ok:
            self._startup_message = None
            self._write_tsv_if_stale()
            self.say(f"reloaded: {self._startup_message or self.summary()}")
        else:
            self.say(f"reload: bombcell reasons unavailable: {book.error}", logging.WARNING)

    def set_show_raw_metrics(self, show):
        """Show or hide the raw bombcell metric columns.  Hidden columns are left out of the
        views, not just narrowed: phy 2.1's table sizes every cell of every column to its
        contents in Python, so ~20 fewer columns halve the time phy takes to open 3,000
        clusters.  (Sorting or filtering by a metric needs it shown.)"""
        show = bool(show)
        supervisor = self.controller.supervisor
        raw = getattr(self, "_raw_metric_columns", [])
        columns = [c for c in supervisor.columns if c not in raw]
        if show:
            columns += raw
        changed = columns != list(supervisor.columns)
        supervisor.columns[:] = columns
        self.show_raw_metrics = show
        if self.gui is not None:
            state = self.gui.state.get(PLUGIN_NAME, None) or {}
            state["show_raw_metrics"] = show
            self.gui.state[PLUGIN_NAME] = state
        if changed:
            self._rebuild_tables()
        self.say(f"bombcell reasons: {len(raw)} raw bombcell metric columns "
                 f"{'shown' if show else 'hidden'}")


# -- phy 2.0 and 2.1 tables --------------------------------------------------------------------
# phy 2.1's cluster and similarity views are Qt tables: every call answers at once.  phy 2.0's
# (2.0b5, still in most labs) are HTML pages in QtWebEngine: ``get_current_sort`` and
# ``get_selected`` answer only through a callback, and ``_reset_table`` loads a new page, which
# takes commands only after it emits ``ready``.  These helpers are the only places that tell the
# two apart, by what the running phy's table offers (never by version strings).

def _html_table(view):
    """True for phy 2.0's HTML table (a QWebEngineView, asynchronous), False for phy 2.1's Qt
    table (a QWidget; it also has ``eval_js``, a synchronous stand-in for old callers)."""
    return callable(getattr(view, "page", None))


def _table_sort(view, callback):
    """Call ``callback((name, direction) or None)`` with the view's current sort."""
    def answer(sort):
        callback(tuple(sort) if sort and sort[0] else None)
    if _html_table(view):  # a callback from Qt's event loop: errors are reported, not raised
        view.get_current_sort(_guarded("rebuilding the tables")(answer))
    else:
        answer(view.get_current_sort())


def _after_event(sender, event, func):
    """Call ``func()`` once, the next time ``sender`` emits ``event`` (after phy's handlers);
    an exception is reported, not raised into phy."""
    from phylib.utils import connect, unconnect

    def once(*args, **kwargs):
        unconnect(once)
        _guarded(f"after {event}")(func)()
    connect(once, event=event, sender=sender, last=True)


def _rebuild_table(view, data, columns, sort, then):
    """``view._reset_table`` (what phy's ``Supervisor.label`` does to add a column), then
    ``then()`` once the new table takes commands."""
    if _html_table(view):
        _after_event(view, "ready", then)
    view._reset_table(data=data, columns=columns, sort=sort)
    if not _html_table(view):
        then()


def _reselect(supervisor, clusters, similar):
    """Select ``clusters`` in the cluster view and ``similar`` in the similarity view again
    after both were rebuilt.  phy 2.1's rebuilt cluster view keeps its selection; phy 2.0's new
    page has none, and selecting there resets the similarity view, so ``similar`` comes after."""
    cv, sv = supervisor.cluster_view, supervisor.similarity_view
    if not clusters:
        return
    if _html_table(cv):
        if similar:
            _after_event(cv, "select", lambda: sv.select(similar))
        cv.select(clusters)
    else:
        sv.reset(clusters)
        if similar:
            sv.select(similar)


def _define_phy_classes():
    """Create (once) the classes that need phy and Qt, register the plugin with phy, and return
    ``(BombcellReasonPlugin, BombcellReasonView)``."""
    module = sys.modules[__name__]
    existing = module.__dict__.get("_PHY_CLASSES")
    if existing is not None:
        return existing

    from phy import IPlugin
    from phylib.utils import connect, unconnect
    from PyQt5.QtWidgets import QTextBrowser

    class BombcellReasonPlugin(_PluginLogic, IPlugin):
        """phy plugin: why bombcell labelled each cluster GOOD/MUA/NOISE/NON-SOMA.

        Adds the ``bc_classificationReason`` column to the cluster and similarity views, the
        ``BombcellReasonView`` dock view, and a Bombcell menu (alt+b, snippet ``:bc ID``).
        """

    class BombcellReasonView(QTextBrowser):
        """Dock view: label, bombcell's own label, reason and every criterion of the selection."""

        def __init__(self, plugin):
            super().__init__()
            self.plugin = plugin
            self.setOpenLinks(False)
            self.setReadOnly(True)
            self.setStyleSheet("QTextBrowser { background-color: black; color: #ddd; border: 0; }")
            self._supervisor = None

        def attach(self, gui):
            gui.add_view(self, position="right")
            self._supervisor = self.plugin.controller.supervisor
            connect(self.on_select, event="select", sender=self._supervisor)
            connect(self.on_close_view, event="close_view", sender=self)
            self.plugin.view = self
            self.show_selection(self._supervisor.selected)

        def on_select(self, sender, cluster_ids, **kwargs):
            try:
                self.show_selection(cluster_ids)
            except Exception as e:
                _report_exception("updating the Bombcell view", e, self.plugin.gui)

        def show_selection(self, cluster_ids):
            self.setHtml(self.plugin.selection_html(cluster_ids))
            dock = getattr(self, "dock", None)
            if dock is not None and cluster_ids:
                dock.set_status(_one_line(self.plugin.book.reason(int(cluster_ids[0]))))

        def on_close_view(self, view, gui):
            self.detach()

        def detach(self):
            unconnect(self.on_select, self.on_close_view)
            if self.plugin.view is self:
                self.plugin.view = None

    for cls in (BombcellReasonPlugin, BombcellReasonView):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
    module.BombcellReasonPlugin = BombcellReasonPlugin
    module.BombcellReasonView = BombcellReasonView
    module._PHY_CLASSES = (BombcellReasonPlugin, BombcellReasonView)
    return module._PHY_CLASSES


def __getattr__(name):  # PEP 562: the phy classes on first use, without importing phy earlier
    if name in ("BombcellReasonPlugin", "BombcellReasonView"):
        _define_phy_classes()
        return sys.modules[__name__].__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- enabling the plugin ----------------------------------------------------------------------

_CONFIG_BEGIN = "# >>> phy-bc-reason >>>"
_CONFIG_END = "# <<< phy-bc-reason <<<"


def _config_block(module_name, module_dir):
    return f"""{_CONFIG_BEGIN} (added by `phy-bc-reason install`; remove the block to disable)
try:
    try:
        import {module_name}
    except ImportError:
        import sys as _bc_sys
        _bc_sys.path.append(r"{module_dir}")
        import {module_name}
    {module_name}.{PLUGIN_NAME}  # creates and registers the phy plugin class
except Exception as _bc_error:
    import logging as _bc_logging
    _bc_logging.getLogger("phy").warning("phy-bc-reason plugin not loaded: %s", _bc_error)
else:
    _bc_plugins = c.TemplateGUI.plugins
    _bc_plugins = list(_bc_plugins) if isinstance(_bc_plugins, (list, tuple)) else []
    if "{PLUGIN_NAME}" not in _bc_plugins:
        c.TemplateGUI.plugins = _bc_plugins + ["{PLUGIN_NAME}"]
{_CONFIG_END}
"""


def install_plugin(config_dir=None):
    """Enable the plugin in phy's ``phy_config.py`` (``~/.phy`` unless ``config_dir``).

    phy runs that file with traitlets (``phy.utils.config.load_master_config``) before it
    attaches the plugins named in ``c.TemplateGUI.plugins``.  Adds (or refreshes) one marked block
    at the end of the file, after backing the old file up as ``phy_config.py.bak``; creates the
    file (with phy's default content) if missing.  Idempotent.  Returns a one-line message.
    """
    config_dir = Path(config_dir).expanduser() if config_dir else Path.home() / ".phy"
    path = config_dir / "phy_config.py"
    module_name = __name__ if __name__ != "__main__" else Path(__file__).stem
    block = _config_block(module_name, Path(__file__).resolve().parent)
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as e:
        raise BombcellReasonError(f"{path}: cannot be read ({e}); fix or remove it, then run "
                                  f"`phy-bc-reason install` again") from None
    if old is None:
        # What phy writes when it creates the file (phy.utils.config._default_config).
        base = ("# You can also put your plugins in ~/.phy/plugins/.\n\n"
                "from phy import IPlugin\n\n"
                "c = get_config()\n"
                f"c.Plugins.dirs = [r'{config_dir / 'plugins'}']\n")
    else:
        base = old
        start, end = old.find(_CONFIG_BEGIN), old.find(_CONFIG_END)
        if start >= 0 and end > start:
            base = old[:start] + old[end + len(_CONFIG_END):].lstrip("\n")
    new = base.rstrip("\n") + "\n\n" + block
    if new == old:
        return f"{PLUGIN_NAME} already enabled in {path}"
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        if old is not None:
            (config_dir / "phy_config.py.bak").write_text(old, encoding="utf-8")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise BombcellReasonError(f"{path}: cannot be written ({e.strerror or e}); check the "
                                  f"folder's permissions") from None
    backup = f" (backup: {path.name}.bak)" if old is not None else ""
    return f"enabled {PLUGIN_NAME} in {path}{backup}; restart phy to use it"


# phy is already imported when phy itself loads this module (phy_config.py, a plugin folder):
# create and register the plugin class now so that phy finds it by name.
if "phy" in sys.modules:
    try:
        _define_phy_classes()
    except Exception as _e:  # never break phy's start or its config file
        _report_exception("registering the phy plugin", _e)


if __name__ == "__main__":
    sys.exit(main())

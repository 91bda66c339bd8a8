"""Why did bombcell call this unit MUA?  Classification reasons for phy.

One file, three ways in:

* a phy plugin (``BombcellReasonPlugin``) that shows the reason of every unit as the
  ``bc_classificationReason`` column of phy's cluster view, a dock view with every criterion of
  the selected cluster, and a "Bombcell" menu;
* a command line tool, ``phy-bc-reason export|explain|summary|rerun|rules|install|demo``;
* a Python API for notebooks: ``load_reasons(dataset_dir)`` and ``explain_cluster(...)``.

Everything is derived from one declarative table, ``RULES``, which mirrors bombcell 0.94's
``bombcell.quality_metrics.get_quality_unit_type``; results of bombcell's SpikeInterface route
(``run_bombcell_qc``: CSV/JSON, labelled by SpikeInterface's ``bombcell_label_units``) get their
own table, derived from their thresholds.json (section "The SpikeInterface route").  bombcell
and SpikeInterface are never imported here (only ``phy-bc-reason rerun``, a child process of
phy's *Re-run bombcell*, runs bombcell): they cost seconds and print to stdout, and their
results are plain parquet, CSV and JSON files.  The property tests in ``tests/`` prove that the
labels computed here equal bombcell's (and SpikeInterface's) own on many random tables.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

__version__ = "0.1.0"

# A child of phy's logger: inside phy its messages reach phy.log and the status bar.
logger = logging.getLogger("phy.bc_reason")

COLUMN = "bc_classificationReason"
TSV_NAME = f"cluster_{COLUMN}.tsv"
BOMBCELL_DIRNAME = "bombcell"
PARAMS_FILE = "_bc_parameters._bc_qMetrics.parquet"
METRICS_FILE = "templates._bc_qMetrics.parquet"
# bombcell 0.94 also writes both as CSV (same names, .csv): read where pyarrow is missing.
UNIT_TYPE_TSV = "cluster_bc_unitType.tsv"

UNCLASSIFIED = "UNCLASSIFIED"
NO_LABEL = "NO LABEL"  # shown for units bombcell leaves unlabelled ("") because they have no spikes


def unclassified_reason(cause):
    return f"{UNCLASSIFIED}: {cause}"


# The text for a cluster bombcell has no row for, when nothing more is known about it (the plugin
# knows more: "merged from 12, 15 after bombcell ran", "split from 12 ...").
NO_ROW_REASON = unclassified_reason("no bombcell row for this cluster; re-run bombcell")
# Texts the plugin gives clusters made in phy after bombcell ran; kept through our own TSV.
ORIGIN_PREFIXES = (f"{UNCLASSIFIED}: merged from ", f"{UNCLASSIFIED}: split from ")


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
    short: str = ""                # the name curators know (bombcell's GUI and make_qm_table):
    #                                the column says "fraction RPVs", the view adds the full name

    @property
    def name(self):
        """``fractionRPVs_estimatedTauR>maxRPVviolations``, ``nPeaks is NaN``."""
        return criterion_name(self.metric, self.op, self.param)

    @property
    def short_name(self):
        """``fraction RPVs``, ``# peaks is NaN``: as the column and the view say it."""
        return criterion_name(self.short, self.op)


def criterion_name(subject, op, param=None, sep=""):
    """The one place a criterion's name is built: ``subject is NaN`` for the NaN test, else
    ``subject<op><param>`` (``sep=" "``: ``subject > param``, which can wrap), or ``subject``
    alone without ``param`` (a short name: the comparison follows it as numbers)."""
    if op == "isnan":
        return f"{subject} is NaN"
    return subject if param is None else f"{subject}{sep}{op}{sep}{param}"


RULES = (
    Rule("noise", "nPeaks", "isnan", short="# peaks"),
    Rule("noise", "nPeaks", ">", "maxNPeaks", short="# peaks"),
    Rule("noise", "nTroughs", ">", "maxNTroughs", short="# troughs"),
    Rule("noise", "waveformDuration_peakTrough", "<", "minWvDuration", short="waveform duration"),
    Rule("noise", "waveformDuration_peakTrough", ">", "maxWvDuration", short="waveform duration"),
    Rule("noise", "waveformBaselineFlatness", ">", "maxWvBaselineFraction",
         short="baseline flatness"),
    Rule("noise", "scndPeakToTroughRatio", ">", "maxScndPeakToTroughRatio_noise",
         short="peak2/trough"),
    Rule("noise", "spatialDecaySlope", "<", "minSpatialDecaySlope",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", True)), short="spatial decay"),
    Rule("noise", "spatialDecaySlope", "<", "minSpatialDecaySlopeExp",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", False)), short="spatial decay"),
    Rule("noise", "spatialDecaySlope", ">", "maxSpatialDecaySlopeExp",
         enabled_when=(("computeSpatialDecay", True), ("spDecayLinFit", False)), short="spatial decay"),
    Rule("mua", "percentageSpikesMissing_gaussian", ">", "maxPercSpikesMissing",
         short="% spikes missing"),
    Rule("mua", "nSpikes", "<", "minNumSpikes", short="# spikes"),
    Rule("mua", "fractionRPVs_estimatedTauR", ">", "maxRPVviolations",
         kept_when=("keepUncertainRPVUnits", "RPV_status", 0), short="fraction RPVs"),
    Rule("mua", "presenceRatio", "<", "minPresenceRatio", short="presence ratio"),
    Rule("mua", "rawAmplitude", "<", "minAmplitude",
         enabled_when=(("extractRaw", True),), skipped_where_nan="rawAmplitude", short="amplitude"),
    Rule("mua", "signalToNoiseRatio", "<", "minSNR",
         enabled_when=(("extractRaw", True),), skipped_where_nan="rawAmplitude", short="SNR"),
    Rule("mua", "maxDriftEstimate", ">", "maxDrift", enabled_when=(("computeDrift", True),),
         short="max. drift"),
    Rule("mua", "isolationDistance", "<", "isoDmin",
         enabled_when=(("computeDistanceMetrics", True),), short="isolation dist."),
    Rule("mua", "Lratio", ">", "lratioMax", enabled_when=(("computeDistanceMetrics", True),),
         short="L-ratio"),
    Rule("non-somatic", "troughToPeak2Ratio", "<", "minTroughToPeak2Ratio_nonSomatic", route="A",
         short="trough/peak2"),
    Rule("non-somatic", "mainPeak_before_width", "<", "minWidthFirstPeak_nonSomatic", route="A",
         short="peak1 width"),
    Rule("non-somatic", "mainTrough_width", "<", "minWidthMainTrough_nonSomatic", route="A",
         short="trough width"),
    Rule("non-somatic", "peak1ToPeak2Ratio", ">", "maxPeak1ToPeak2Ratio_nonSomatic", route="A",
         short="peak1/peak2"),
    Rule("non-somatic", "mainPeakToTroughRatio", ">", "maxMainPeakToTroughRatio_nonSomatic",
         route="B", short="main peak/trough"),
)

ROUTE_NAMES = {  # in the criteria view
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

# "kept": a failure bombcell forgives (keepUncertainRPVUnits and RPV_status == 0).  A criterion's
# margin is the distance on the passing side: never negative for "pass", never positive for "fail".
STATUSES = ("pass", "fail", "nan", "disabled", "kept")
STATUS_ORDER = {"fail": 0, "kept": 1, "nan": 2, "pass": 3, "disabled": 4}  # how explanations list criteria
_PASS, _FAIL, _NAN, _DISABLED, _KEPT = range(5)

# Every parameter and metric column bombcell 0.94 writes (get_default_parameters for every
# Kilosort version, what run_bombcell adds, check_parameter_fields' spikeWidth/standardSpikeWidth;
# tests check this against a real run).  Other names mean a newer bombcell wrote the results.
_KNOWN_094_NAMES = frozenset("""
    computeDistanceMetrics computeDrift computeSpatialDecay computeTimeChunks confidence_threshold
    contamination_values decompress_data deltaTimeChunk detrendForUnitMatch detrendWaveform
    driftBinSize duplicateSpikeWindow_s ephysKilosortPath ephys_meta_file ephys_sample_rate
    extractRaw gain_to_uV hillOrLlobetMethod isoDmin joblib_backend_preference joblib_n_jobs
    keepUncertainRPVUnits lratioMax maxDrift maxMainPeakToTroughRatio_nonSomatic maxNPeaks
    maxNTroughs maxPeak1ToPeak2Ratio_nonSomatic maxPercSpikesMissing maxRPVviolations
    maxScndPeakToTroughRatio_noise maxSpatialDecaySlopeExp maxWvBaselineFraction maxWvDuration
    minAmplitude minNumSpikes minPresenceRatio minSNR minSpatialDecaySlope minSpatialDecaySlopeExp
    minThreshDetectPeaksTroughs minTroughToPeak2Ratio_nonSomatic minWidthFirstPeak_nonSomatic
    minWidthMainTrough_nonSomatic minWvDuration nChannels nChannelsIsoDist nRawSpikesToExtract
    nSyncChannels n_channels_rec normalizeSpDecay plotDetails plotGlobal plotsSaveDir
    presenceRatioBinSize probeType raw_data_file recomputeDuplicateSpikes reextractRaw
    removeDuplicateSpikes rpv_method saveAsTSV savePlots saveSpikes_withoutDuplicates spDecayLinFit
    spikeWidth spike_width splitGoodAndMua_NonSomatic ss_min standardSpikeWidth tauC tauR_reject
    tauR_values tauR_valuesMax tauR_valuesMin tauR_valuesStep unit_type_for_phy verbose
    waveformBaselineNoiseWindow waveform_baseline_window_start waveform_baseline_window_stop
    saveMultipleRaw RPV_tauR_estimate unique_templates empty_unit_idx
    Lratio RPV_status RPV_window_index bc_unitType cumDriftEstimate estimatedTauR
    fractionRPVs_estimatedTauR isolationDistance mainPeakToTroughRatio mainPeak_before_width
    mainTrough_width maxChannels maxDriftEstimate nPeaks nSpikes nTroughs peak1ToPeak2Ratio
    percentageSpikesMissing_gaussian percentageSpikesMissing_symmetric phy_clusterID presenceRatio
    rawAmplitude scndPeakToTroughRatio signalToNoiseRatio silhouetteScore spatialDecaySlope
    troughToPeak2Ratio useTheseTimesStart useTheseTimesStop waveformBaselineFlatness
    waveformDuration_peakTrough
""".split())

# Parameters only MATLAB bombcell saves (Python bombcell spells them in snake_case).  Its
# getQualityUnitType differs from Python 0.94's (e.g. its linear spatial-decay test fails units
# with spatialDecaySlope > minSpatialDecaySlope, it skips distance metrics when isoDmin is NaN,
# and it has no keepUncertainRPVUnits), so its results are refused rather than explained.
_MATLAB_MARKERS = ("saveMatFileForGUI", "unitType_for_phy", "ephysMetaFile", "rawFile",
                   "waveformBaselineWindowStart", "decompressData", "ssMin")


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


def _read_columns(path):
    """bombcell's table ``path`` (a .parquet) as {column: list of values}, read from the parquet
    file with pyarrow, or from bombcell's CSV twin (same name, .csv) where pyarrow is missing
    (phy does not bring it).

    Values are what bombcell's own reader (pandas) gives: numbers stay int or float, a null in a
    number column is NaN, a null elsewhere None.  One reader for both formats, so the engine
    sees the same columns from either (tested equal).
    """
    csv_twin = path.with_suffix(".csv")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        if csv_twin.is_file():
            return _read_csv_columns(csv_twin)
        raise BombcellReasonError(
            f"{path}: cannot be read without pyarrow, and bombcell's CSV twin {csv_twin.name} is "
            f"missing; pip install pyarrow into this (phy's) environment") from None
    if not path.is_file():
        raise BombcellReasonError(f"{path}: missing; re-run bombcell on this dataset to write it")
    try:
        # ParquetFile.read, not read_table: the dataset layer behind read_table starts thread
        # pools that cost ~50 MB and time for a file this small.
        table = pq.ParquetFile(path).read(use_threads=False)
    except Exception as e:  # truncated or not parquet at all: say so in one line
        raise BombcellReasonError(
            f"{path}: cannot be read ({_one_line(e)}); re-run bombcell to rewrite it") from None
    import pyarrow.types as pat
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        # to_pylist, not to_numpy: pyarrow's to_numpy imports pandas (~0.3 s, measured), and
        # the export of 10,000 units must stay close to a bare `import pyarrow.parquet`.
        values = column.to_pylist()
        if column.null_count and (pat.is_integer(column.type) or pat.is_floating(column.type)):
            values = [np.nan if v is None else v for v in values]
        columns[name] = values
    return columns


class _EmptyCell:
    """An empty cell of a CSV twin: bombcell's CSV writer prints both None and NaN as nothing,
    and bombcell reads them differently (a None flag is off, a NaN flag on)."""

    def __repr__(self):
        return "empty"


EMPTY_CSV_CELL = _EmptyCell()


def _read_csv_columns(path):
    """A CSV twin (pandas' to_csv) as {column: list}, typed as pandas' read_csv types it: a
    column of integers is int, of numbers float, of True/False bool, else text.  The unnamed
    index column of templates._bc_qMetrics.csv is left out."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, ValueError) as e:
        raise BombcellReasonError(f"{path}: cannot be read ({_one_line(e)}); re-run bombcell") from None
    if not rows:
        raise BombcellReasonError(f"{path}: empty; re-run bombcell to rewrite it")
    header, body = rows[0], rows[1:]
    columns = {}
    for j, name in enumerate(header):
        if not name or name.startswith("Unnamed:"):
            continue
        columns[name] = _csv_values([row[j] if j < len(row) else "" for row in body])
    return columns


def _csv_values(cells):
    """One CSV column typed as pandas types it; an empty cell is EMPTY_CSV_CELL."""
    filled = [c for c in cells if c != ""]
    if filled and all(c in ("True", "False") for c in filled):
        return [EMPTY_CSV_CELL if c == "" else c == "True" for c in cells]
    try:
        numbers = [int(c) for c in filled]
        if len(filled) < len(cells):  # pandas: integers with gaps become floats
            numbers = [float(n) for n in numbers]
    except ValueError:
        try:
            numbers = [float(c) for c in filled]
        except ValueError:
            numbers = filled  # text
    it = iter(numbers)
    return [next(it) if c != "" else EMPTY_CSV_CELL for c in cells]


def _read_params(path):
    """The first row of the parameters file, as bombcell's load_bc_results takes it (keys as
    saved: bombcell does not strip stray spaces, so neither do we)."""
    columns = _read_columns(path)
    if not columns or not len(next(iter(columns.values()))):
        raise BombcellReasonError(f"{path}: holds no parameters; re-run bombcell to rewrite it")
    return {key: values[0] for key, values in columns.items()}


def _read_metrics(path):
    """The metrics file as {column: array}: numbers as float64 (NaN for nulls), others as
    object arrays (bc_unitType)."""
    columns = {}
    for name, values in _read_columns(path).items():
        try:
            columns[name] = np.array([np.nan if v is EMPTY_CSV_CELL else v for v in values],
                                     dtype=np.float64)
        except (TypeError, ValueError):  # text: an empty CSV cell is no text (bc_unitType "")
            columns[name] = np.array([None if v is EMPTY_CSV_CELL else v for v in values],
                                     dtype=object)
    return columns


def _truth(params, key):
    """A saved flag as bombcell's ``if param[flag]`` reads it: NaN is on, None off, 2 on."""
    value = params[key]
    if value is EMPTY_CSV_CELL:
        raise BombcellReasonError(_empty_cell_message(key))
    try:
        return bool(value)
    except (TypeError, ValueError):  # an array: bombcell's `if` raises too
        raise BombcellReasonError(
            f"flag {key} = {value!r} has no truth value, so bombcell itself cannot classify "
            f"these results; fix the parameter or re-run bombcell") from None


def _empty_cell_message(key):
    return (f"parameter {key} is empty in bombcell's CSV twin (saved as None or NaN, which "
            f"bombcell reads differently); pip install pyarrow into this environment to read "
            f"the parquet file")


def linear_spatial_decay(params):
    """bombcell's ``param["computeSpatialDecay"] & param["spDecayLinFit"]``: a bitwise ``&``,
    so ``2 & True`` is 0 (the exponential tests apply), and NaN, None or a float on either side
    makes bombcell raise TypeError."""
    both = (params["computeSpatialDecay"], params["spDecayLinFit"])
    for key, value in zip(("computeSpatialDecay", "spDecayLinFit"), both):
        if value is EMPTY_CSV_CELL:
            raise BombcellReasonError(_empty_cell_message(key))
    try:
        return bool(both[0] & both[1])
    except (TypeError, ValueError):
        raise BombcellReasonError(
            f"computeSpatialDecay = {both[0]!r} and spDecayLinFit = {both[1]!r}: bombcell combines "
            f"them with `&`, which raises TypeError, so bombcell itself cannot classify these "
            f"results; save them as True/False (or 0/1) or re-run bombcell") from None


def enabled_flags(params):
    """{flag: on?} for the flags of the rule table, as bombcell's classifier decides them.
    ``spDecayLinFit`` holds the truth of the bitwise ``computeSpatialDecay & spDecayLinFit``."""
    flags = {flag: _truth(params, flag) for r in RULES for flag, _ in r.enabled_when
             if flag != "spDecayLinFit"}
    flags["spDecayLinFit"] = linear_spatial_decay(params)
    return flags


def threshold_value(params, key, enabled=True):
    """A saved threshold as a float, as numpy compares it with a metric column.  For a rule that
    is switched off bombcell never reads it: anything goes (NaN when not a number).  For one
    that is on, text, None or a list of several values make bombcell's comparison raise (or
    compare unit by unit): one line naming the parameter."""
    value = params.get(key)
    try:
        number = np.asarray(value)
        if number.dtype.kind not in "biuf" or number.size != 1:
            raise TypeError
        return float(number.ravel()[0])
    except (TypeError, ValueError):
        if not enabled:
            return np.nan
        if value is EMPTY_CSV_CELL:
            raise BombcellReasonError(_empty_cell_message(key)) from None
        raise BombcellReasonError(
            f"threshold {key} = {value!r} is not a number and its test is on, so bombcell "
            f"itself cannot classify these results; fix the parameter or re-run bombcell") from None


def _spike_width_scale(params):
    """check_parameter_fields' width scale, computed by the same expression (a text spikeWidth
    makes it raise, as it makes bombcell raise)."""
    spike_width, standard_width = params.get("spikeWidth"), params.get("standardSpikeWidth")
    try:
        if spike_width and standard_width and np.isfinite(spike_width) and standard_width > 0:
            return spike_width / standard_width
    except (TypeError, ValueError):
        raise BombcellReasonError(
            f"spikeWidth = {spike_width!r}, standardSpikeWidth = {standard_width!r}: bombcell "
            f"scales the missing non-somatic widths by their ratio and fails on these values, so "
            f"it cannot classify these results; fix them or re-run bombcell") from None
    return 1.0


def complete_params(params, params_file="parameters"):
    """Fill parameters missing from an older bombcell run, as bombcell's check_parameter_fields.

    Returns (params, notes).  Raises BombcellReasonError for results of bombcell <= 0.31
    (snake_case names), for missing parameters that have no back-compatibility default, and where
    bombcell itself would fail.  Keys are taken as saved: like bombcell, a key with a stray space
    ("maxRPVviolations ") is not the parameter.
    """
    params = dict(params)
    notes = []
    if "maxNPeaks" not in params and any(k in params for k in _SNAKE_CASE_MARKERS):
        raise BombcellReasonError(
            f"{params_file}: written by bombcell 0.31 or older (snake_case names such as "
            f"max_n_peaks); re-run bombcell >= 0.94 on this dataset")
    spaced = {k.strip(): k for k in params if isinstance(k, str) and k != k.strip()}
    defaults = dict(BACKCOMPAT_DEFAULTS)
    present = [k for k in SHAPE_ROUTE_PARAMS if k in params]
    if present and len(present) < len(SHAPE_ROUTE_PARAMS):
        # Some of the shape route is configured: bombcell fills the rest with its current
        # defaults (widths scaled by spike width) rather than switching the route off.
        width_scale = _spike_width_scale(params)
        defaults["minTroughToPeak2Ratio_nonSomatic"] = 5
        defaults["minWidthFirstPeak_nonSomatic"] = max(2, round(4 * width_scale))
        defaults["minWidthMainTrough_nonSomatic"] = max(3, round(5 * width_scale))
        defaults["maxPeak1ToPeak2Ratio_nonSomatic"] = 3
    filled = [k for k in defaults if k not in params]
    for key in filled:
        params[key] = defaults[key]
    missing = [k for k in CLASSIFICATION_PARAMS if k not in params]
    if missing:
        stray = [repr(spaced[k]) for k in missing if k in spaced]
        raise BombcellReasonError(
            f"{params_file}: parameter {', '.join(missing)} missing and bombcell has no default "
            f"for it" + (f" (saved as {', '.join(stray)}: bombcell does not read a key with "
                         f"stray spaces)" if stray else "")
            + "; re-run bombcell >= 0.94 on this dataset")
    newer = newer_bombcell_names(params)
    if filled:
        notes.append(f"parameters missing from this {'' if newer else 'older '}bombcell run were "
                     f"filled with bombcell's back-compatibility defaults: "
                     + ", ".join(f"{k}={params[k]}" for k in filled))
        if all(k in filled for k in SHAPE_ROUTE_PARAMS):
            notes.append("the non-somatic shape route is switched off: this bombcell run predates it")
    ignored = [spaced[k] for k in spaced if k in CLASSIFICATION_PARAMS or k in BACKCOMPAT_DEFAULTS]
    if ignored:
        notes.append("key(s) with stray spaces ignored, as bombcell ignores them: "
                     + ", ".join(repr(k) for k in ignored))
    return params, notes


def newer_bombcell_names(names):
    """Names (parameters or metric columns) that bombcell 0.94 never writes."""
    return [k for k in names if k not in _KNOWN_094_NAMES and isinstance(k, str)
            and k == k.strip()]


def newer_version_note(names):
    """The note for results written by a bombcell newer than 0.94 (or None)."""
    unknown = newer_bombcell_names(names)
    if not unknown:
        return None
    return (f"written by a bombcell newer than 0.94: unknown parameters/metrics "
            f"{', '.join(unknown)}; reasons follow 0.94's rules and may differ")


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
        labels = np.array([("" if v is None or v != v else str(v)) for v in columns["bc_unitType"]],
                          dtype=object)  # None, or NaN from a CSV twin: no label
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


SPIKE_FILES = ("spike_clusters.npy", "spike_templates.npy")  # what bombcell counts, in its order
DUPLICATES_FILE = "spikes._bc_duplicateSpikes.npy"  # bombcell's removeDuplicateSpikes record


def spike_counts(dataset_dir, bombcell_dir=None, remove_duplicates=False):
    """(spikes per cluster id, file name) as bombcell counts them: ``np.bincount`` of
    spike_clusters.npy (spike_templates.npy when absent), without the spikes bombcell marked as
    duplicates where it saved them; (None, None) when neither file can be read.  bincount, not
    unique: linear time on tens of millions of spikes."""
    dataset_dir = dataset_path(dataset_dir)
    for name in SPIKE_FILES:
        path = dataset_dir / name
        if not path.is_file():
            continue
        try:
            ids = np.load(path, mmap_mode="r").ravel()
            if ids.size and ids.min() < 0:
                return None, None
            if remove_duplicates:
                folder = Path(bombcell_dir) if bombcell_dir else dataset_dir / BOMBCELL_DIRNAME
                duplicates = np.load(folder / DUPLICATES_FILE, mmap_mode="r").ravel()
                if len(duplicates) != len(ids):
                    raise ValueError("not this spike file's")
                ids = ids[np.asarray(duplicates) == 0]
            return np.bincount(ids), name
        except (OSError, ValueError, TypeError):
            if remove_duplicates:  # no usable record of duplicates: count every spike
                return spike_counts(dataset_dir)[0], name
            return None, None
    return None, None


def _has_duplicates_record(dataset_dir, bombcell_dir, name):
    folder = Path(bombcell_dir) if bombcell_dir else dataset_path(dataset_dir) / BOMBCELL_DIRNAME
    try:
        duplicates = np.load(folder / DUPLICATES_FILE, mmap_mode="r")
        ids = np.load(dataset_path(dataset_dir) / name, mmap_mode="r")
        return duplicates.size == ids.size
    except (OSError, ValueError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------
# Evaluation: every rule on every unit at once
# ------------------------------------------------------------------------------------------------

def rule_enabled(rule, params, flags=None):
    """Whether bombcell applies ``rule`` with these parameters (``flags``: enabled_flags)."""
    flags = enabled_flags(params) if flags is None else flags
    return all(flags[flag] == wanted for flag, wanted in rule.enabled_when)


class Evaluation(NamedTuple):
    """The rule table evaluated on every unit (``evaluate``)."""
    values: np.ndarray      # (n_rules, n_units): each rule's metric value
    thresholds: np.ndarray  # (n_rules,): each rule's threshold (NaN for isnan, or not a number)
    status: np.ndarray      # (n_rules, n_units): index into STATUSES
    fails: np.ndarray       # (n_rules, n_units): the rule fails and the failure counts
    kept: np.ndarray        # (n_rules, n_units): a failure bombcell forgives (kept_when)
    codes: np.ndarray       # (n_units,): bombcell's numeric unit type, NaN for empty units


def evaluate(params, metrics):
    """Evaluate the whole rule table, vectorised: an ``Evaluation``.

    ``params``: complete parameters (see complete_params); ``metrics``: mapping of column name to
    array, one entry per unit.  Raises BombcellReasonError (one line naming the parameter) where
    bombcell itself cannot classify with these parameters.
    """
    n_units = len(np.asarray(metrics["nSpikes"]))
    n_rules = len(RULES)
    flags = enabled_flags(params)
    values = np.full((n_rules, n_units), np.nan)
    thresholds = np.full(n_rules, np.nan)
    status = np.full((n_rules, n_units), _PASS, dtype=np.int8)
    fails = np.zeros((n_rules, n_units), dtype=bool)
    kept = np.zeros((n_rules, n_units), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i, rule in enumerate(RULES):
            value = np.asarray(metrics[rule.metric], dtype=float)
            values[i] = value
            enabled = rule_enabled(rule, params, flags)
            if rule.param:
                # shown for disabled rules too, where it is a number
                thresholds[i] = threshold_value(params, rule.param, enabled)
            if not enabled:
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
                if _truth(params, flag) and metric in metrics:
                    kept[i] = fails[i] & (np.asarray(metrics[metric]) == kept_value)
                    fails[i] &= ~kept[i]
            status[i, fails[i]] = _FAIL
            status[i, kept[i]] = _KEPT
    codes = _unit_codes(params, np.asarray(metrics["nSpikes"], dtype=float), fails)
    return Evaluation(values, thresholds, status, fails, kept, codes)


_STAGE = np.array([r.stage for r in RULES])
_ROUTE = np.array([r.route for r in RULES])
IS_NOISE, IS_MUA = _STAGE == "noise", _STAGE == "mua"
IS_ROUTE_A, IS_ROUTE_B = _ROUTE == "A", _ROUTE == "B"
# The order in which the column names a unit's deciding criteria (a NON-SOMA MUA unit: its MUA
# failure first; a NON-SOMA unit: the single main-peak test before the four shape tests).
_REASON_ORDER = np.concatenate([np.flatnonzero(m) for m in (IS_NOISE, IS_MUA, IS_ROUTE_B, IS_ROUTE_A)])


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
    if _truth(params, "splitGoodAndMua_NonSomatic"):
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
    if isinstance(x, str):  # "inf"/"-inf" as JSON holds them
        return x
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


def _as_float(x):
    """A number as JSON or the tables hold it (None, "inf", float) as a float (None: NaN)."""
    return np.nan if x is None else float(x)


def _order(a, b):
    return (a > b) - (a < b)


def comparison_numbers(value, threshold):
    """(value text, threshold text) with as few digits as show how the two compare: 3
    significant digits, more only where fewer would print ``20 > 20`` for 20.04 > 20 (or turn a
    pass into a fail).  The one number format of the column, the view and the CLI table."""
    value, threshold = _as_float(value), _as_float(threshold)
    if np.isnan(value) or np.isnan(threshold):
        return format_number(value), format_number(threshold)
    want = _order(value, threshold)
    for digits in range(3, 18):
        v, t = format_number(value, digits), format_number(threshold, digits)
        if _order(float(v), float(t)) == want:
            return v, t
    return format_number(value, None), format_number(threshold, None)


def criterion_text(rule, value, threshold):
    """``metric>param (value > threshold)``: the criterion by its full names, for notes and
    tooltips; numbers as ``comparison_numbers``."""
    if rule.op == "isnan":
        return rule.name
    v, t = comparison_numbers(value, threshold)
    return f"{rule.name} ({v} {rule.op} {t})"


def short_criterion_text(rule, value, threshold):
    """``fraction RPVs 0.23 > 0.1``: the criterion as the column says it (short name first)."""
    if rule.op == "isnan":
        return rule.short_name
    v, t = comparison_numbers(value, threshold)
    return f"{rule.short_name} {v} {rule.op} {t}"


def comparison_text(op, value, threshold, status):
    """``0.23 > 0.1`` for a failing criterion, ``0.05 <= 0.1`` for a passing one (the relation
    that holds), ``NaN`` or ``off`` otherwise: what the view shows next to a criterion."""
    if op == "isnan":
        return "NaN" if status == "fail" else "not NaN"
    if status == "disabled":
        return "off"
    v, t = comparison_numbers(value, threshold)
    if status == "nan" and np.isnan(_as_float(value)):
        return "NaN (passes)"  # bombcell's comparisons are False for NaN
    if status == "nan":
        return f"{v} (not tested)"  # skipped where another metric is NaN
    if status == "pass":
        op = {">": "\u2264", "<": "\u2265"}[op]  # the relation that holds: <= or >=
    return f"{v} {op} {t}"


# ------------------------------------------------------------------------------------------------
# Classification of a dataset
# ------------------------------------------------------------------------------------------------

class Classification:
    """Labels, reasons and every criterion of every unit of one bombcell run."""

    rules = RULES  # the rule table behind every array below (the SpikeInterface route has its own)
    route = "bombcell"
    _reason_order = _REASON_ORDER

    def __init__(self, params, metrics, cluster_ids, bombcell_label=None, notes=(), source_mtime=0.0,
                 source="", version_note=None, changes=None, real=None):
        self.params = params
        # A what-if (see what_if): the parameters changed from the saved ones, and the real
        # classification it was derived from (itself when this is the real one).
        self.changes = dict(changes or {})
        self.real = real if real is not None else self
        self._text_cache = {}  # see _criterion_texts
        self.version_note = version_note  # results of a newer bombcell: said on every unit
        self.metrics = metrics
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.split = _truth(params, "splitGoodAndMua_NonSomatic")
        self.notes = list(notes)
        self.source_mtime = source_mtime
        self.source = source
        evaluation = evaluate(params, metrics)
        self.values, self.thresholds = evaluation.values, evaluation.thresholds
        self.status, self.fails, self.kept = evaluation.status, evaluation.fails, evaluation.kept
        self.codes = evaluation.codes
        self.label = label_names(self.codes, self.split)
        self.decisive = decisive_mask(self.codes, self.fails)
        self.bombcell_label = (np.asarray(bombcell_label, dtype=object) if bombcell_label is not None
                               else np.full(len(self.cluster_ids), None, dtype=object))
        saved = self.bombcell_label
        self.label_differs = np.not_equal(saved, None) & (saved != self.label)
        if self.changes:  # a what-if differs from bombcell's saved labels on purpose
            self.label_differs = np.zeros(len(self.cluster_ids), dtype=bool)
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

    def _criterion_texts(self, i, units):
        """short_criterion_text of rule ``i`` for ``units``, cached per rule and threshold and
        shared with what-ifs (the same metrics): a what-if formats only what its changes changed."""
        cache = self.real._text_cache
        key = (i, float(self.thresholds[i]))
        texts = cache.get(key)
        if texts is None:
            texts = cache[key] = np.full(len(self), None, dtype=object)
        todo = units[np.equal(texts[units], None)]
        texts[todo] = [short_criterion_text(self.rules[i], v, self.thresholds[i])
                       for v in self.values[i, todo]]
        return texts[units]

    def _reasons(self):
        """The column's text: the label, then the first criterion that decides it, by its short
        name with value and threshold, and "+N" for the others deciding it too
        (``MUA: fraction RPVs 0.23 > 0.1 +1``).  At most ~40 characters, so that phy's cluster
        view shows it whole beside fr and n_spikes; ``full_reason`` names every criterion."""
        mask = self.decisive[self._reason_order]
        count = mask.sum(axis=0)
        first = self._reason_order[np.argmax(mask, axis=0)]
        texts = np.full(len(self), "passed all thresholds", dtype=object)
        texts[np.isnan(self.codes)] = "no spikes"
        for i in np.unique(first[count > 0]):  # rule by rule: only numbers touch single units
            units = np.flatnonzero((first == i) & (count > 0))
            texts[units] = self._criterion_texts(i, units)
        more = count > 1
        texts[more] += np.char.add(" +", (count[more] - 1).astype(str)).astype(object)
        # A unit whose RPV failure bombcell forgives (uncertain estimate, keepUncertainRPVUnits)
        # and that nothing else decides says so, rather than "passed all thresholds".
        kept = self.kept.any(axis=0) & (count == 0) & ~np.isnan(self.codes)
        texts[kept] = [f"{self.rules[i].short_name} kept (uncertain)"
                       for i in np.argmax(self.kept[:, kept], axis=0)]
        labels = np.where(self.label == "", NO_LABEL, self.label).astype(object)
        reasons = labels + ": " + texts
        differs = self.label_differs
        if differs.any():
            saved = np.array([s or NO_LABEL for s in self.bombcell_label[differs]], dtype=object)
            reasons[differs] += " (bombcell saved " + saved + ")"
        return reasons

    def full_reason(self, cluster_id):
        """The reason with every deciding criterion by its full names (the column's tooltip)."""
        unit = self.row(cluster_id)
        if unit is None:
            return None
        label = self.label[unit] or NO_LABEL
        decisive = np.flatnonzero(self.decisive[:, unit])
        if not len(decisive):
            kept = np.flatnonzero(self.kept[:, unit])
            if len(kept) and not np.isnan(self.codes[unit]):
                i = kept[0]
                return (f"{label}: {criterion_text(self.rules[i], self.values[i, unit], self.thresholds[i])}"
                        f" kept: uncertain RPV estimate, kept by keepUncertainRPVUnits")
            return f"{label}: " + ("unit has no spikes (nSpikes = 0); bombcell leaves it unlabelled"
                                   if np.isnan(self.codes[unit]) else "passed all thresholds")
        return f"{label}: " + "; ".join(
            criterion_text(self.rules[i], self.values[i, unit], self.thresholds[i]) for i in decisive)

    @property
    def n_failing(self):
        """Per unit, how many criteria fail that can change its label (the ``bc_nFailing``
        column): every failing criterion, except shape-route tests while fewer than all four
        fail (the route is one AND of four; a partial failure changes nothing)."""
        route_a, _ = _non_somatic(self.fails)
        partial = self.fails[IS_ROUTE_A].sum(axis=0) * ~route_a
        return self.fails.sum(axis=0) - partial

    def reason_by_cluster(self):
        return dict(zip(self.cluster_ids.tolist(), self.reason.tolist()))

    def what_if(self, changes):
        """A new classification with some parameters changed (``{"maxRPVviolations": 0.5}``),
        from the metrics already in memory: no file is read.  Changes add up
        (``c.what_if(a).what_if(b)``); ``c.real`` is the classification of the saved parameters.
        Raises BombcellReasonError naming an unknown parameter or a bad value."""
        return what_if(self, changes)

    def summary(self):
        """Counts per label and, per criterion, failing units and sole blockers (see summarize)."""
        return summarize(self)

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
            notes.append(f"{RULES[nan_peaks[0]].name}: bombcell could not compute waveform metrics "
                         "(units with fewer than 50 spikes get NaN metrics) and counts that as NOISE")
        for i, rule in enumerate(RULES):
            if self.kept[i, unit]:
                notes.append(f"{name[i]} would fail, but the RPV estimate is uncertain "
                             f"(RPV_status 0), kept by keepUncertainRPVUnits: bombcell lets the "
                             f"unit pass this test")
            if (rule.skipped_where_nan and status[i] == _NAN and not np.isnan(values[i])):
                notes.append(f"{rule.name} not tested: bombcell skips it where "
                             f"{rule.skipped_where_nan} is NaN")
            if np.isinf(values[i]) and status[i] != _DISABLED and rule.op != "isnan":
                notes.append(f"{rule.metric} is {format_number(values[i])}: bombcell does not clean "
                             f"inf, so it {'fails' if fails[i] else 'passes'} {rule.name}")
        nan_value = (status == _NAN) & np.isnan(values)  # not the skipped ones (noted above)
        if (nan_value & IS_NOISE).any() and code != NOISE and not np.isnan(code):
            nan_rules = [RULES[i].name for i in np.flatnonzero(IS_NOISE & nan_value)]
            notes.append("NaN values pass these tests, as in bombcell: " + ", ".join(nan_rules))
        if (nan_value & IS_MUA).any() and code != NOISE and not np.isnan(code):
            nan_rules = [RULES[i].name for i in np.flatnonzero(IS_MUA & nan_value)]
            notes.append("NaN values pass these MUA tests, as in bombcell: " + ", ".join(nan_rules))
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
        if self.version_note:
            notes.append(self.version_note)
        if self.label_differs[unit]:
            notes.append(f"bombcell saved the label {self.bombcell_label[unit] or '(none)'!r}, but "
                         f"its classifier gives {label or '(none)'!r} for the saved parameters and "
                         f"metrics: they changed after the run, or came from another bombcell version")
        return notes

    def criteria(self, unit, only=None):
        """The criteria of one unit as JSON-able dicts (``only``: boolean mask over the rules)."""
        out = []
        for i, rule in enumerate(self.rules):
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
                "name": rule.name, "short": rule.short,
                "threshold": _json_number(threshold if rule.op != "isnan" else None),
                "value": _json_number(value), "status": status,
                "margin": _json_number(margin),
                "decisive": bool(self.decisive[i, unit]),
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


def ordered_criteria(info):
    """The criteria of ``Classification.explain`` in the order the view and the CLI list them:
    those deciding the label, then the other failing ones, then the rest (by STATUS_ORDER, any
    status without an order last)."""
    return sorted(info["criteria"], key=lambda c: (
        not c["decisive"], STATUS_ORDER.get(c["status"], len(STATUS_ORDER))))


def format_explanation(info):
    """Multi-line text for one cluster from ``Classification.explain``: the criteria deciding
    the label first (marked *), then the other failing ones, then the rest."""
    saved = info["bombcell_label"]
    lines = [f"cluster {info['cluster_id']}: {info['reason']}",
             f"  label: {info['label'] or NO_LABEL}   bombcell's saved label: "
             f"{(saved or NO_LABEL) if saved is not None else 'not saved'}",
             f"    {'stage':13} {'name':18} {'criterion: fails when':57} {'value':>9} "
             f"{'threshold':>10} {'status':8} {'margin':>9}"]
    for c in ordered_criteria(info):
        mark = "*" if c["decisive"] else " "
        if c["op"] == "isnan":
            value, threshold = format_number(_as_float(c["value"])), "-"
        else:
            value, threshold = comparison_numbers(c["value"], c["threshold"])
        lines.append(f"  {mark} {c['stage']:13} {c['short']:18} {c['name']:57} {value:>9} "
                     f"{threshold:>10} {c['status']:8} {_fmt_json(c['margin']):>9}")
    lines.append("  * decides the label.  margin: distance on the passing side (negative: fails)")
    lines.extend(f"  note: {note}" for note in info["notes"])
    return "\n".join(lines)


def _fmt_json(x):
    return "-" if x is None else format_number(x)


def classify_dataset(dataset_dir, bombcell_dir=None):
    """Read one dataset's bombcell results and classify every unit. Raises BombcellReasonError."""
    dataset_dir = dataset_path(dataset_dir)
    folder = find_bombcell_dir(dataset_dir, bombcell_dir)
    if is_spikeinterface_folder(folder):  # run_bombcell_qc's CSV/JSON: SpikeInterface's rules
        return classify_spikeinterface(dataset_dir, folder)
    params_file, metrics_file = folder / PARAMS_FILE, folder / METRICS_FILE
    if not params_file.exists() and not metrics_file.exists() and not any(folder.iterdir()):
        raise BombcellReasonError(f"{folder}: empty; run bombcell on this dataset to fill it")
    saved_params = _read_params(params_file)
    matlab = [k for k in _MATLAB_MARKERS if k in saved_params]
    if matlab:
        raise BombcellReasonError(
            f"{params_file}: written by MATLAB bombcell (parameter {matlab[0]}), whose rules differ "
            f"from Python bombcell 0.94's (e.g. its linear spatial-decay test); not explained: "
            f"run Python bombcell >= 0.94 on this dataset")
    params, notes = complete_params(saved_params, params_file)
    columns = _read_metrics(metrics_file)
    if "nPeaks" not in columns and any(k in columns for k in _SNAKE_CASE_MARKERS):
        raise BombcellReasonError(
            f"{metrics_file}: written by bombcell 0.31 or older (snake_case names such as "
            f"n_peaks); re-run bombcell >= 0.94 on this dataset")
    version_note = newer_version_note(list(saved_params) + list(columns))
    if version_note:
        notes.insert(0, version_note)
    try:
        flags = enabled_flags(params)
    except BombcellReasonError as e:
        raise BombcellReasonError(f"{params_file}: {e}") from None
    enabled = [r for r in RULES if rule_enabled(r, params, flags)]
    needed = {r.metric for r in enabled} | {"nSpikes"}
    needed |= {r.skipped_where_nan for r in enabled if r.skipped_where_nan}
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
    mtime = max(p.stat().st_mtime for p in (params_file, metrics_file,
                                            params_file.with_suffix(".csv"),
                                            metrics_file.with_suffix(".csv")) if p.exists())
    try:
        result = Classification(params, metrics, cluster_ids, bombcell_label, notes, mtime,
                                source=str(folder), version_note=version_note)
    except BombcellReasonError as e:
        raise BombcellReasonError(f"{params_file}: {e}") from None
    n_differ = int(result.label_differs.sum())
    if n_differ:
        result.notes.append(
            f"{n_differ} unit(s) have a saved label ({label_source}) that differs from what "
            f"bombcell's classifier gives for the saved parameters and metrics")
    return result


# ------------------------------------------------------------------------------------------------
# The SpikeInterface route: rule table, reading and evaluation
# ------------------------------------------------------------------------------------------------
# bombcell's run_bombcell_qc(sorting_analyzer, output_folder) labels units with SpikeInterface's
# spikeinterface.curation.bombcell_label_units, whose rules differ from bombcell's own
# get_quality_unit_type, and writes CSV/JSON instead of parquet:
#   labeling_results_wide.csv   one row per unit: the SI unit id (first, unnamed column), its
#                               label, then every metric the labeller saw
#   thresholds.json             {"noise"|"mua"|"non-somatic": {metric: {"greater", "less", "abs"}}}
#                               as the user passed it (metrics never computed included)
#   bombcell_config.json        {"split_non_somatic", "compute_valid_periods"}
#   labeling_results_narrow.csv its "passed" column ignores abs, fails every NaN and tests every
#                               stage on every unit: it contradicts the labels, so it is not read.
# The rules below follow SpikeInterface 0.105.3's code (where its docstrings differ, the code):
# * a side ``greater: g`` is a lower bound, passing at value >= g; ``less: l`` an upper bound,
#   passing at <= l; None or NaN disables a side; ``abs`` compares |value|; a metric with both
#   sides disabled, or not a column of the table, is dropped (SI only warns about the latter).
# * noise: any failing side makes a unit NOISE; a NaN value fails.
# * mua, on units that are not noise: any failing side makes it MUA; a NaN value passes, except
#   for sliding_rp_violation, where NaN is the result "no contamination level is certain": fails.
# * non-somatic, on units that are not noise: (width AND ratio) OR main peak OR extra, where the
#   width group is narrow unless some width metric passes with a real value (NaN: narrow), the
#   ratio and main-peak groups flag only real-valued failures, and the extra metrics (any other
#   metric of the section) flag a unit only when every one of them fails, NaN failing (SI's
#   docstring says each is OR'd in; its code ANDs them).  With split_non_somatic, good and mua
#   units become non_soma_good / non_soma_mua; without, every non-noise one becomes non_soma.

# The bombcell_label_units these rules follow; 0.105.0-0.105.3 have the same labelling code.
# (0.104's differs, but bombcell 0.94's run_bombcell_qc does not run on it.)
SPIKEINTERFACE_VERSION = "0.105.3"
SI_WIDE_CSV = "labeling_results_wide.csv"
SI_THRESHOLDS = "thresholds.json"
SI_CONFIG = "bombcell_config.json"
SI_UNIT_ID_MAP = "cluster_si_unit_ids.tsv"  # export_to_phy: phy cluster id -> SI unit id
SI_SECTIONS = ("noise", "mua", "non-somatic")
SI_SIDES = {"greater": "<", "less": ">"}  # side -> the comparison that fails it
SI_NAN_FAILS_MUA = frozenset({"sliding_rp_violation"})
# The non-somatic section's groups; any other metric there is an "extra" one.
SI_GROUPS = {"peak_before_width": "width", "trough_width": "width",
             "peak_before_to_trough_ratio": "ratio", "peak_before_to_peak_after_ratio": "ratio",
             "main_peak_to_trough_ratio": "main peak"}
SI_GROUP_NAMES = {  # in the criteria view, after "non-somatic"
    "width": "width group: narrow unless a width metric passes (with ratio)",
    "ratio": "ratio group (with width)",
    "main peak": "main-peak group",
    "extra": "extra metrics: all must fail",
}
# Groups that hold only when all their metrics fail; the others when any side fails.
SI_ALL_FAIL_GROUPS = ("width", "extra")
# SpikeInterface's labels, as written in the wide CSV, and as this tool shows them.
SI_LABEL_NAMES = {"good": "GOOD", "mua": "MUA", "noise": "NOISE", "non_soma": "NON-SOMA",
                  "non_soma_good": "NON-SOMA GOOD", "non_soma_mua": "NON-SOMA MUA"}
SI_CONFIG_KEYS = frozenset({"split_non_somatic", "compute_valid_periods"})

# spikeinterface.curation.bombcell_get_default_thresholds() of 0.105.3 (tested equal): the table
# `phy-bc-reason rules --spikeinterface` prints.
SI_DEFAULT_THRESHOLDS = {
    "noise": {
        "num_positive_peaks": {"greater": None, "less": 2},
        "num_negative_peaks": {"greater": None, "less": 1},
        "peak_to_trough_duration": {"greater": 0.0001, "less": 0.00115},
        "waveform_baseline_flatness": {"greater": None, "less": 0.5},
        "peak_after_to_trough_ratio": {"greater": None, "less": 0.8},
        "exp_decay": {"greater": 0.01, "less": 0.1},
    },
    "mua": {
        "amplitude_median": {"greater": 30, "less": None, "abs": True},
        "snr": {"greater": 5, "less": None},
        "amplitude_cutoff": {"greater": None, "less": 0.2},
        "num_spikes": {"greater": 300, "less": None},
        "sliding_rp_violation": {"greater": None, "less": 0.1},
        "presence_ratio": {"greater": 0.7, "less": None},
        "drift_ptp": {"greater": None, "less": 100},
        "isolation_distance": {"greater": 20, "less": None},
        "l_ratio": {"greater": None, "less": 0.3},
    },
    "non-somatic": {
        "peak_before_to_trough_ratio": {"greater": None, "less": 3},
        "peak_before_width": {"greater": 0.00015, "less": None},
        "trough_width": {"greater": 0.0002, "less": None},
        "peak_before_to_peak_after_ratio": {"greater": None, "less": 3},
        "main_peak_to_trough_ratio": {"greater": None, "less": 0.8},
    },
}


@dataclass(frozen=True)
class SIRule(Rule):
    """One side of one metric of a SpikeInterface threshold dictionary.  ``param`` names section,
    metric and side (``mua.sliding_rp_violation.less``), ``op`` the failing comparison (``>`` for
    a ``less`` bound), ``route`` the non-somatic group."""
    threshold: float = np.nan
    abs: bool = False
    nan_fails: bool = False  # a NaN value fails this side (noise; sliding_rp_violation; width, extra)

    @property
    def name(self):
        metric = f"abs({self.metric})" if self.abs else self.metric
        return f"{metric}{self.op}{self.param}"


def _si_threshold(value):
    """A side's threshold: a number, or None/NaN (disabled, as SI's is_threshold_disabled)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number or null")
    return None if value != value else float(value)


def spikeinterface_rules(thresholds, columns=None):
    """The rule table of one SpikeInterface threshold dictionary: one SIRule per enabled side,
    in the dictionary's order, sections noise, mua, non-somatic.  ``columns``: the metric columns
    of the table (None: every metric kept).  Returns (rules, dropped metrics as "section.metric").
    Raises ValueError for a structure SpikeInterface 0.105 does not know."""
    if not isinstance(thresholds, dict):
        raise ValueError("not a JSON object of sections")
    unknown = [k for k in thresholds if k not in SI_SECTIONS]
    if unknown:
        raise ValueError(f"unknown section {unknown[0]!r} (SpikeInterface {SPIKEINTERFACE_VERSION} "
                         f"knows {', '.join(SI_SECTIONS)})")
    rules, dropped = [], []
    for section in SI_SECTIONS:
        entries = thresholds.get(section) or {}
        if not isinstance(entries, dict):
            raise ValueError(f"section {section!r} is not a JSON object of metrics")
        for metric, sides in entries.items():
            if not isinstance(sides, dict) or not set(sides) <= {"greater", "less", "abs"}:
                raise ValueError(f"{section}.{metric}: not an object of greater/less/abs")
            try:
                bounds = {side: _si_threshold(sides.get(side)) for side in SI_SIDES}
            except ValueError as e:
                raise ValueError(f"{section}.{metric}: {e}") from None
            use_abs = sides.get("abs", False)
            if not isinstance(use_abs, bool):
                raise ValueError(f"{section}.{metric}.abs: {use_abs!r} is not true/false")
            if columns is not None and metric not in columns:
                dropped.append(f"{section}.{metric}")
                continue
            group = (SI_GROUPS.get(metric, "extra") if section == "non-somatic" else "")
            nan_fails = (section == "noise" or group in SI_ALL_FAIL_GROUPS
                         or section == "mua" and metric in SI_NAN_FAILS_MUA)
            for side, op in SI_SIDES.items():
                if bounds[side] is None:
                    continue
                short = f"|{metric}|" if use_abs else metric
                rules.append(SIRule(section, metric, op, f"{section}.{metric}.{side}", route=group,
                                    short=short, threshold=bounds[side], abs=use_abs,
                                    nan_fails=nan_fails))
    return tuple(rules), dropped


def evaluate_spikeinterface(rules, metrics, split):
    """SpikeInterface's bombcell_label_units on one table, every side of every metric at once:
    an ``Evaluation`` (values as compared: |value| for abs sides; nothing is kept; codes are
    never NaN: SpikeInterface labels units without spikes too)."""
    n_units = len(next(iter(metrics.values()))) if metrics else 0
    values = np.full((len(rules), n_units), np.nan)
    status = np.full((len(rules), n_units), _PASS, dtype=np.int8)
    fails = np.zeros((len(rules), n_units), dtype=bool)
    with np.errstate(invalid="ignore"):
        for i, rule in enumerate(rules):
            value = np.asarray(metrics[rule.metric], dtype=float)
            values[i] = np.abs(value) if rule.abs else value
            nan = np.isnan(values[i])
            fails[i] = values[i] < rule.threshold if rule.op == "<" else values[i] > rule.threshold
            if rule.nan_fails:
                fails[i] |= nan
            else:
                status[i, nan] = _NAN
            status[i, fails[i]] = _FAIL
    holds = _si_groups(rules, fails)
    stage = np.array([r.stage for r in rules], dtype=object)
    noise = fails[stage == "noise"].any(axis=0)
    mua = ~noise & fails[stage == "mua"].any(axis=0)
    non_somatic = ~noise & ((holds["width"] & holds["ratio"]) | holds["main peak"] | holds["extra"])
    codes = np.where(noise, NOISE, np.where(mua, MUA, GOOD)).astype(float)
    if split:  # only good and mua units are relabelled
        codes[non_somatic & mua] = NON_SOMA_MUA
    codes[non_somatic & (codes != NON_SOMA_MUA)] = NON_SOMA
    thresholds = np.array([r.threshold for r in rules], dtype=float)
    return Evaluation(values, thresholds, status, fails, np.zeros_like(fails), codes)


def spikeinterface_decisive(rules, codes, fails):
    """(n_rules, n_units): the failing criteria that produce each unit's label: the noise ones of
    NOISE units, the MUA ones of MUA and NON-SOMA MUA units, and those of the non-somatic groups
    that make a NON-SOMA unit (width and ratio together, main peak, extra)."""
    holds = _si_groups(rules, fails)
    non_somatic = np.isin(codes, (NON_SOMA, NON_SOMA_MUA))
    deciding = {"noise": codes == NOISE, "mua": np.isin(codes, (MUA, NON_SOMA_MUA)),
                "width": non_somatic & holds["width"] & holds["ratio"],
                "main peak": non_somatic & holds["main peak"],
                "extra": non_somatic & holds["extra"]}
    deciding["ratio"] = deciding["width"]
    stage_decides = np.array([deciding[r.route or r.stage] for r in rules], dtype=bool)
    return fails & stage_decides.reshape(fails.shape)  # (also with no rule at all)


def _si_groups(rules, fails):
    """{group: per unit, whether the non-somatic group holds}."""
    route = np.array([r.route for r in rules], dtype=object)
    return {g: _si_group_holds(rules, fails, route == g) for g in SI_GROUP_NAMES}


def _si_group_holds(rules, fails, in_group):
    """Per unit, whether a non-somatic group holds: an all-fail group when every metric of it
    fails (a metric fails when any of its sides does), and has at least one; the others when any
    side fails."""
    members = np.flatnonzero(in_group)
    if not len(members):
        return np.zeros(fails.shape[1], dtype=bool)
    if rules[members[0]].route not in SI_ALL_FAIL_GROUPS:
        return fails[members].any(axis=0)
    metric_fails = {}
    for i in members:
        metric_fails[rules[i].metric] = metric_fails.get(rules[i].metric, False) | fails[i]
    return np.all(list(metric_fails.values()), axis=0)


def is_spikeinterface_folder(folder):
    """Whether ``folder`` holds run_bombcell_qc's results (and not bombcell's own parquet/CSV)."""
    folder = Path(folder)
    return (folder / SI_WIDE_CSV).is_file() and not any(
        (folder / name).exists() for name in (PARAMS_FILE, METRICS_FILE,
                                              Path(PARAMS_FILE).with_suffix(".csv").name,
                                              Path(METRICS_FILE).with_suffix(".csv").name))


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise BombcellReasonError(f"{path}: cannot be read ({e.strerror or e}); re-run "
                                  f"run_bombcell_qc to rewrite it") from None
    except ValueError as e:
        raise BombcellReasonError(f"{path}: not JSON ({_one_line(e)}); re-run run_bombcell_qc "
                                  f"to rewrite it") from None


def read_spikeinterface_wide_csv(path):
    """The wide CSV as (SI unit ids as text, saved labels, {metric: float array or None where
    the column is not numeric})."""
    import csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, ValueError) as e:
        raise BombcellReasonError(f"{path}: cannot be read ({_one_line(e)}); re-run "
                                  f"run_bombcell_qc") from None
    if not rows or len(rows[0]) < 2 or rows[0][1] != "label":
        raise BombcellReasonError(
            f"{path}: not run_bombcell_qc's wide table (a unit id column, then 'label', then "
            f"the metrics); re-run run_bombcell_qc (bombcell >= 0.94, SpikeInterface "
            f"{SPIKEINTERFACE_VERSION})")
    header, body = rows[0], [r for r in rows[1:] if r]
    if any(len(r) != len(header) for r in body):
        raise BombcellReasonError(f"{path}: rows of different lengths; re-run run_bombcell_qc")
    cells = list(zip(*body)) if body else [()] * len(header)
    unit_ids, saved = list(cells[0]), list(cells[1])
    columns = {}
    for name, column in zip(header[2:], cells[2:]):
        text = np.array(column, dtype=str)
        text = np.where(text == "", "nan", text)  # pandas writes NaN as an empty cell
        try:
            columns[name] = text.astype(float)  # numpy parses in C ("inf" too)
        except ValueError:
            columns[name] = None
    return unit_ids, saved, columns


def _si_cluster_ids(dataset_dir, unit_ids, wide_csv):
    """phy cluster id per row of the wide CSV (None where export_to_phy left the unit out: an
    empty unit), from cluster_si_unit_ids.tsv; without it, SI unit ids must be phy's ids."""
    mapping = dataset_dir / SI_UNIT_ID_MAP
    if mapping.is_file():
        try:
            by_unit = {unit: cluster for cluster, unit in read_cluster_tsv(mapping).items()}
        except (OSError, ValueError) as e:
            raise BombcellReasonError(f"{mapping}: cannot be read ({_one_line(e)}); re-run "
                                      f"export_to_phy") from None
        return [by_unit.get(u) for u in unit_ids], f"SI unit ids mapped by {SI_UNIT_ID_MAP}"
    try:
        return [int(u) for u in unit_ids], "SI unit ids taken as phy cluster ids"
    except ValueError:
        bad = next(u for u in unit_ids if not u.lstrip("-").isdigit())
        raise BombcellReasonError(
            f"{wide_csv}: SpikeInterface unit id {bad!r} is not a phy cluster id, and "
            f"{mapping.name} (written by export_to_phy) is missing to map it") from None


def classify_spikeinterface(dataset_dir, folder):
    """A run_bombcell_qc results folder classified by SpikeInterface's rules (see above)."""
    wide = folder / SI_WIDE_CSV
    thresholds_file, config_file = folder / SI_THRESHOLDS, folder / SI_CONFIG
    if not thresholds_file.is_file():
        raise BombcellReasonError(f"{thresholds_file}: missing; re-run run_bombcell_qc with an "
                                  f"output_folder to write it")
    thresholds = _read_json(thresholds_file)
    unit_ids, saved, columns = read_spikeinterface_wide_csv(wide)
    try:
        rules, dropped = spikeinterface_rules(thresholds, columns)
    except ValueError as e:
        raise BombcellReasonError(
            f"{thresholds_file}: a structure SpikeInterface {SPIKEINTERFACE_VERSION}'s "
            f"bombcell_label_units does not have: {e}; not explained") from None
    notes = []
    if config_file.is_file():
        config = _read_json(config_file)
        if (not isinstance(config, dict) or not set(config) <= SI_CONFIG_KEYS
                or not isinstance(config.get("split_non_somatic"), bool)):
            raise BombcellReasonError(
                f"{config_file}: not run_bombcell_qc's config (split_non_somatic, "
                f"compute_valid_periods); not explained")
        split = config["split_non_somatic"]
    else:
        split = any(s in ("non_soma_good", "non_soma_mua") for s in saved)
        notes.append(f"no {SI_CONFIG}: split_non_somatic taken as {split} from the saved labels")
    not_numeric = sorted({r.metric for r in rules if columns[r.metric] is None})
    if not_numeric:
        raise BombcellReasonError(f"{wide}: column {', '.join(not_numeric)} is not numeric; "
                                  f"re-run run_bombcell_qc")
    if dropped:
        notes.append("thresholds ignored, their metric is not in the table (SpikeInterface drops "
                     "them with a warning): " + ", ".join(dropped))
    cluster_ids, id_note = _si_cluster_ids(dataset_path(dataset_dir), unit_ids, wide)
    notes.append(id_note)
    keep = np.array([c is not None for c in cluster_ids], dtype=bool)
    if not keep.all():
        notes.append(f"{int((~keep).sum())} SpikeInterface unit(s) not in {SI_UNIT_ID_MAP} "
                     f"(export_to_phy leaves out empty units): not shown")
    cluster_ids = np.array([c for c in cluster_ids if c is not None], dtype=np.int64)
    if len(np.unique(cluster_ids)) != len(cluster_ids):
        raise BombcellReasonError(f"{wide}: two units map to one phy cluster; re-run export_to_phy")
    metrics = {k: v[keep] for k, v in columns.items() if v is not None}
    # What the dataset checks read (foreign_results_problem): SI's spike count is phy's.
    metrics["nSpikes"] = metrics.get("num_spikes", np.full(int(keep.sum()), np.nan))
    saved_labels = np.array([SI_LABEL_NAMES.get(s, s.upper()) for s in np.asarray(saved)[keep]],
                            dtype=object)
    mtime = max(p.stat().st_mtime for p in (wide, thresholds_file, config_file) if p.exists())
    return SpikeInterfaceClassification(rules, split, metrics, cluster_ids, saved_labels, notes,
                                        mtime, source=str(folder))


class SpikeInterfaceClassification(Classification):
    """A run_bombcell_qc result: the same outputs as Classification (column, TSV, view,
    explain, export), from SpikeInterface's rules and this results' own rule table."""

    route = "spikeinterface"

    def __init__(self, rules, split, metrics, cluster_ids, bombcell_label, notes=(),
                 source_mtime=0.0, source=""):
        self.rules = rules
        self.params = {}
        self.changes, self.real, self._text_cache = {}, self, {}  # no what-ifs on this route
        self.version_note = None
        self.metrics = metrics
        self.cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
        self.split = split
        self.notes = list(notes)
        self.source_mtime = source_mtime
        self.source = source
        evaluation = evaluate_spikeinterface(rules, metrics, split)
        self.values, self.thresholds = evaluation.values, evaluation.thresholds
        self.status, self.fails, self.kept = evaluation.status, evaluation.fails, evaluation.kept
        self.codes = evaluation.codes
        self.label = label_names(self.codes, split)
        self.decisive = spikeinterface_decisive(rules, self.codes, self.fails)
        stage = [r.route or r.stage for r in rules]
        self._reason_order = np.array(
            [i for part in ("noise", "mua", "main peak", "width", "ratio", "extra")
             for i, s in enumerate(stage) if s == part], dtype=np.int64)
        self.bombcell_label = np.asarray(bombcell_label, dtype=object)
        self.label_differs = self.bombcell_label != self.label
        self._row = {int(c): i for i, c in enumerate(self.cluster_ids)}
        self.reason = self._reasons()

    @property
    def metric_columns(self):
        return [k for k in self.metrics if k != "nSpikes"]

    def _reasons(self):
        if len(self.rules):
            return super()._reasons()
        # No criterion at all (every section empty, absent or switched off): all units are good.
        reasons = np.array([f"{label}: passed all thresholds" for label in self.label], dtype=object)
        differs = self.label_differs
        reasons[differs] += " (bombcell saved " + self.bombcell_label[differs] + ")"
        return reasons

    def _group(self, name):
        return np.array([r.route == name for r in self.rules], dtype=bool)

    @property
    def n_failing(self):
        """Failing criteria that can change the label: all, except those of a width or extra
        group that does not hold (it holds only when every metric of it fails)."""
        partial = np.zeros(len(self), dtype=np.int64)
        for name in SI_ALL_FAIL_GROUPS:
            members = self._group(name)
            holds = _si_group_holds(self.rules, self.fails, members)
            partial += self.fails[members].sum(axis=0) * ~holds
        return self.fails.sum(axis=0) - partial

    def unit_notes(self, unit):
        notes = []
        rules, code = self.rules, self.codes[unit]
        status, fails, values = self.status[:, unit], self.fails[:, unit], self.values[:, unit]
        stage = np.array([r.stage for r in rules], dtype=object)
        nan = np.isnan(values)
        nan_failing = [r.name for i, r in enumerate(rules) if nan[i] and fails[i] and r.stage != "non-somatic"]
        if nan_failing:
            notes.append("NaN fails these tests in SpikeInterface (noise: every NaN; mua: "
                         "sliding_rp_violation): " + ", ".join(nan_failing))
        nan_passing = [r.name for i, r in enumerate(rules) if status[i] == _NAN]
        if nan_passing and code != NOISE:
            notes.append("NaN values pass these tests, as in SpikeInterface: " + ", ".join(nan_passing))
        not_deciding = [i for i in np.flatnonzero(fails & ~self.decisive[:, unit])
                        if rules[i].stage != "non-somatic"]
        if not_deciding:
            why = {NOISE: "NOISE takes precedence over MUA",
                   NON_SOMA: "" if self.split else
                   "NON-SOMA hides MUA failures when split_non_somatic is off"}.get(code, "")
            notes.append("also fails, without deciding the label: "
                         + ", ".join(rules[i].name for i in not_deciding) + (f" ({why})" if why else ""))
        for name, what in (("width", "the width group calls a unit narrow only when no width "
                                     "metric passes with a real value (NaN counts as narrow)"),
                           ("extra", "extra non-somatic metrics flag a unit only when all of "
                                     "them fail (NaN counts as failing)")):
            members = self._group(name)
            metrics = {r.metric for r, m in zip(rules, members) if m}
            failing = {rules[i].metric for i in np.flatnonzero(members & fails)}
            if failing and len(failing) < len(metrics):
                notes.append(f"{len(failing)} of {len(metrics)} {name} metrics fail: {what}")
        holds = {g: h[0] for g, h in _si_groups(rules, self.fails[:, unit:unit + 1]).items()}
        if holds["width"] != holds["ratio"] and code != NOISE:
            notes.append("the " + ("width" if holds["width"] else "ratio") + " group holds, the "
                         + ("ratio" if holds["width"] else "width") + " group does not: both "
                         "are needed for the width-and-ratio route to non-somatic")
        if code == NOISE and (fails & (stage == "non-somatic")).any():
            notes.append("non-somatic tests are not applied to NOISE units")
        if self.label_differs[unit]:
            notes.append(f"SpikeInterface saved the label {self.bombcell_label[unit]!r}, but its "
                         f"rules give {self.label[unit]!r} for the saved thresholds and metrics: "
                         f"they changed after the run, or another SpikeInterface version wrote it")
        return notes


def spikeinterface_rules_markdown(thresholds=None):
    """The SpikeInterface route's rule table (SpikeInterface's default thresholds unless given)
    as Markdown (the README's table is tested equal to `rules --spikeinterface`)."""
    rules, _ = spikeinterface_rules(SI_DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    lines = ["| stage | criterion: the unit fails when | threshold key | default | a NaN value |",
             "|---|---|---|---|---|"]
    for rule in rules:
        stage = rule.stage + (f" {rule.route}" if rule.route else "")
        metric = f"abs(`{rule.metric}`)" if rule.abs else f"`{rule.metric}`"
        lines.append(f"| {stage} | {metric} {rule.op} threshold | `{rule.param}` | "
                     f"{format_number(rule.threshold, None)} | "
                     f"{'fails' if rule.nan_fails else 'passes'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# What-if thresholds and the population view
# ------------------------------------------------------------------------------------------------
# A what-if re-evaluates the rule table on the metrics already in memory, with some parameters
# changed: the labels are bombcell's own for those parameters (tests/test_whatif.py checks them
# against bombcell.get_quality_unit_type).  The summary counts, per criterion, the units that
# fail it and its sole blockers: units that turn GOOD when that one threshold is relaxed, with
# everything else as it is.

# The flags a what-if may switch; every other settable parameter is a threshold.
FLAG_PARAMS = tuple(dict.fromkeys([flag for r in RULES for flag, _ in r.enabled_when]
                                  + ["splitGoodAndMua_NonSomatic", "keepUncertainRPVUnits"]))
SETTABLE_PARAMS = tuple(dict.fromkeys(list(CLASSIFICATION_PARAMS) + list(FLAG_PARAMS)))
WHATIF_COLUMN = "bc_whatIfReason"  # the column of a what-if export: never phy's reason column
WHATIF_PARAMS_NAME = "bombcell_whatif_parameters.json"  # phy's "Save what-if parameters"
_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
QUANTILES = (("min", 0.0), ("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75),
             ("q95", 0.95), ("max", 1.0))


def parse_setting(text):
    """``"PARAM=VALUE"`` (the CLI's ``--set``) as (PARAM, VALUE as text)."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip() or not value.strip():
        raise BombcellReasonError(f"--set {text!r}: expected PARAM=VALUE, e.g. --set maxRPVviolations=0.5")
    return key.strip(), value.strip()


def check_change(key, value):
    """A what-if value as bombcell would read it: True/False for a flag, a float (inf allowed,
    NaN not: it would silently switch the test off) for a threshold.  Text is parsed.  Raises
    BombcellReasonError naming the parameter."""
    if key not in SETTABLE_PARAMS:
        import difflib
        close = difflib.get_close_matches(str(key), SETTABLE_PARAMS, n=1)
        raise BombcellReasonError(
            f"unknown parameter {key!r}" + (f" (did you mean {close[0]}?)" if close else "")
            + f"; settable: {', '.join(SETTABLE_PARAMS)}")
    if key in FLAG_PARAMS:
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer))
                                                   and value in (0, 1)):
            return bool(value)
        raise BombcellReasonError(f"bad value for flag {key}: {value!r} (use true or false)")
    try:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise BombcellReasonError(f"bad value for threshold {key}: {value!r} (not a number)") from None
    if np.isnan(number):
        raise BombcellReasonError(f"bad value for threshold {key}: NaN (it would pass every unit; "
                                  f"use inf or -inf to relax the test)")
    return number


def check_changes(changes):
    """Every change checked (check_change); a list of "PARAM=VALUE" texts is accepted too."""
    if not isinstance(changes, dict):
        changes = dict(parse_setting(text) for text in changes)
    return {key: check_change(key, value) for key, value in changes.items()}


def _bombcell_route_only(result, what):
    """What-ifs and sole blockers re-run bombcell's own rule table: not (yet) SpikeInterface's."""
    if result.route != "bombcell":
        raise BombcellReasonError(
            f"{result.source}: {what} work on bombcell's own results; these are the SpikeInterface "
            f"route's (run_bombcell_qc), whose labels and reasons are explained, not re-run")


def what_if(result, changes):
    """``result`` re-classified with ``changes`` on top of its own changes (see
    Classification.what_if).  Only the rule table runs again: ~20 ms for 10,000 units."""
    _bombcell_route_only(result, "what-if thresholds")
    changes = dict(result.changes, **check_changes(changes))
    real = result.real
    changes = {k: v for k, v in changes.items() if not _same_value(k, real.params.get(k), v)}
    if not changes:
        return real
    params = dict(real.params, **changes)
    return Classification(params, real.metrics, real.cluster_ids, real.bombcell_label,
                          real.notes, real.source_mtime, real.source, real.version_note,
                          changes=changes, real=real)


def _same_value(key, saved, value):
    """Whether a change leaves bombcell's reading of a parameter as saved (then it is no
    change).  Flags must match in type too: bombcell's ``&`` reads 2 and True differently."""
    try:
        if key in FLAG_PARAMS:
            return isinstance(saved, (bool, np.bool_)) and bool(saved) == value
        return float(saved) == value
    except (TypeError, ValueError):
        return False


def whatif_changes_text(result):
    """``maxRPVviolations=0.5 (saved 0.1), ...``: what a what-if changed, for every display."""
    saved = result.real.params
    return ", ".join(f"{k}={_param_text(v)} (saved {_param_text(saved.get(k))})"
                     for k, v in result.changes.items())


def _param_text(value):
    if isinstance(value, (bool, np.bool_)) or value is None:
        return str(value)
    try:
        return format_number(value, digits=None)
    except (TypeError, ValueError):
        return repr(value)


def whatif_header(result):
    """One line that says plainly that labels are a what-if, or "" for the real ones."""
    if not result.changes:
        return ""
    return (f"WHAT-IF (not bombcell's saved labels): {whatif_changes_text(result)}; labels are "
            f"bombcell's under these parameters")


def relaxed_value(rule):
    """The threshold that relaxes ``rule`` completely: no value fails ``> inf`` or ``< -inf``."""
    return np.inf if rule.op == ">" else -np.inf


def sole_blockers(result):
    """(n_rules, n_units) bool: the units that bombcell would label GOOD if only this rule's
    threshold were relaxed (set to relaxed_value), all else unchanged.  One vectorised
    re-labelling per rule (_unit_codes, bombcell's order); a route-A unit counts for each of the
    four shape tests whose relaxing frees it.  The isnan rule has no threshold: never."""
    _bombcell_route_only(result, "the summary and the metric view")
    blockers = np.zeros_like(result.fails)
    not_good = result.codes != GOOD
    n_spikes = np.asarray(result.metrics["nSpikes"], dtype=float)
    for i, rule in enumerate(RULES):
        units = np.flatnonzero(result.fails[i] & not_good)
        if rule.op == "isnan" or not len(units):
            continue
        fails = result.fails[:, units].copy()
        fails[i] = False
        blockers[i, units] = _unit_codes(result.params, n_spikes[units], fails) == GOOD
    return blockers


def _quantiles(values):
    finite = values[~np.isnan(values)]
    if not len(finite):
        return {name: None for name, _ in QUANTILES}
    with np.errstate(invalid="ignore"):
        qs = np.quantile(finite, [q for _, q in QUANTILES])
    return {name: _json_number(q) for (name, _), q in zip(QUANTILES, qs)}


def summarize(result):
    """The population view: {"n_units", "labels": counts, "what_if": changes, "criteria": [...]}
    with one dict per criterion (stage, metric, op, param, threshold, enabled, n_fail, n_kept,
    n_decisive, n_sole_blocker, n_nan, quantiles of the metric), the ones blocking the most units
    first.  Counted over labelled units (bombcell leaves units without spikes unlabelled)."""
    labelled = ~np.isnan(result.codes)
    blockers = sole_blockers(result)
    flags = enabled_flags(result.params)
    criteria = []
    for i, rule in enumerate(RULES):
        values = result.values[i, labelled]
        criteria.append({
            "stage": rule.stage + (f" {rule.route}" if rule.route else ""),
            "metric": rule.metric, "op": rule.op, "param": rule.param,
            "criterion": rule.name,
            "threshold": _json_number(result.thresholds[i]) if rule.param else None,
            "enabled": rule_enabled(rule, result.params, flags),
            "n_fail": int(result.fails[i, labelled].sum()),
            "n_kept": int(result.kept[i, labelled].sum()),
            "n_decisive": int(result.decisive[i, labelled].sum()),
            "n_sole_blocker": int(blockers[i, labelled].sum()) if rule.op != "isnan" else None,
            "n_nan": int(np.isnan(values).sum()),
            "quantiles": _quantiles(values),
        })
    order = sorted(range(len(RULES)), key=lambda i: (-(criteria[i]["n_sole_blocker"] or 0),
                                                     -criteria[i]["n_fail"], i))
    return {"n_units": len(result), "labels": label_counts(result.label),
            "what_if": {k: _json_param(v) for k, v in result.changes.items()},
            "criteria": [criteria[i] for i in order]}


def _json_param(value):
    return bool(value) if isinstance(value, (bool, np.bool_)) else _json_number(value)


def format_summary(summary):
    """The summary as text (``phy-bc-reason summary``, phy's *Bombcell summary*)."""
    counts = ", ".join(f"{k} {v}" for k, v in summary["labels"].items())
    lines = [f"{summary['n_units']} units: {counts}",
             f"  {'stage':13} {'criterion: fails when':58} {'threshold':>10} {'fail':>6} "
             f"{'sole':>6} {'decides':>7}   {'metric: q05 / median / q95':28}"]
    for c in summary["criteria"]:
        if not c["enabled"]:
            continue
        q = c["quantiles"]
        spread = " / ".join(_fmt_json(q[k]) for k in ("q05", "median", "q95"))
        sole = "-" if c["n_sole_blocker"] is None else c["n_sole_blocker"]
        lines.append(f"  {c['stage']:13} {c['criterion']:58} {_fmt_json(c['threshold']):>10} "
                     f"{c['n_fail']:>6} {sole:>6} {c['n_decisive']:>7}   {spread}")
    off = [c["criterion"] for c in summary["criteria"] if not c["enabled"]]
    lines.append("  fail: units failing it; sole: units that turn GOOD when this threshold alone is "
                 "relaxed; decides: units whose label it decides")
    if off:
        lines.append(f"  switched off by the saved flags: {', '.join(off)}")
    return "\n".join(lines)


def write_params_file(path, changes):
    """Write the changed parameters as a JSON object ``{param: value}``, atomically, for
    bombcell's own run: ``param.update(json.load(f))`` before ``bombcell.run_bombcell(ks_dir,
    save_path, param)`` (see the README).  Returns the path."""
    path = Path(path).expanduser()
    # json writes inf as Infinity, which Python's json reads back as float("inf")
    text = json.dumps({k: bool(v) if isinstance(v, (bool, np.bool_)) else float(v)
                       for k, v in changes.items()}, indent=1) + "\n"
    return write_atomically(path, lambda f: f.write(text))


# ------------------------------------------------------------------------------------------------
# The curator's labels against bombcell's: concordance and suggested thresholds
# ------------------------------------------------------------------------------------------------
# The curator's labels are phy's ``group`` (cluster_group.tsv, or supervisor.cluster_meta inside
# phy): good, mua or noise; ``unsorted`` and unlabelled clusters are left out.  ``suggest`` is
# bombcell 0.94's ``manual_analysis.suggest_parameter_adjustments`` reproduced with numpy (bombcell
# is never imported in phy's process): each noise/MUA threshold swept alone within its stage,
# balanced accuracy, a stratified bootstrap of the best threshold (the same random draws, seed
# included), out-of-bag accuracy.  tests/test_concordance.py checks every row against the real
# function.  The sweep is counted with cumulative sums over the sorted metric instead of
# bombcell's unit x threshold matrix (the same integers, so the same floats): 2,000 units in
# well under a second.

GROUP_TSV = "cluster_group.tsv"  # phy's labels
CURATOR_GROUPS = ("good", "mua", "noise")
# Which curator labels a stage's criteria should pass and fail: bombcell's _STAGE_LABELS for
# phy's three labels (noise criteria separate noise from the rest, MUA criteria good from mua).
STAGE_GROUPS = {"noise": (("good", "mua"), ("noise",)), "mua": (("good",), ("mua",))}
# bombcell's label -> the curator label it agrees with (unsplit NON-SOMA: any unit not noise).
AGREEING_GROUPS = {"GOOD": ("good",), "NON-SOMA GOOD": ("good",), "MUA": ("mua",),
                   "NON-SOMA MUA": ("mua",), "NON-SOMA": ("good", "mua"), "NOISE": ("noise",)}
SUGGEST_COLUMNS = ("parameter", "metric", "stage", "current", "suggested", "status", "n_pass",
                   "n_fail", "accuracy_current", "accuracy_suggested", "ci_low", "ci_high")
# suggest_parameter_adjustments' defaults (at least 20 labelled units on each side, ...).
SUGGEST_DEFAULTS = {"min_units_per_class": 20, "min_improvement": 0.05, "n_bootstrap": 200,
                    "random_seed": 0}
_INTEGER_METRICS = ("nPeaks", "nTroughs", "nSpikes")  # suggested values rounded to integers
_SUGGESTABLE = tuple(i for i, r in enumerate(RULES) if r.stage in STAGE_GROUPS and r.param)
SUGGEST_PARAMS_NAME = "bombcell_suggested_parameters.json"  # phy's "Save suggestions"


def curator_labels(groups):
    """{cluster_id: good/mua/noise} from phy's ``group`` values ({cluster_id: text}): other
    values (``unsorted``, empty) are left out."""
    return {int(c): str(g).strip().lower() for c, g in groups.items()
            if g is not None and str(g).strip().lower() in CURATOR_GROUPS}


def read_curator_labels(dataset_dir):
    """The curator's labels of DATASET/cluster_group.tsv ({} when phy never saved any)."""
    path = dataset_path(dataset_dir) / GROUP_TSV
    if not path.is_file():
        return {}
    try:
        return curator_labels(read_cluster_tsv(path))
    except (OSError, ValueError) as e:
        raise BombcellReasonError(f"{path}: unreadable ({_one_line(e)})") from None


def labelled_rows(result, labels):
    """(rows, groups, cluster ids) of the labelled clusters bombcell has a row for, by cluster id
    (the order bombcell's function is given the units in: the bootstrap draws depend on it)."""
    ids = np.array(sorted(c for c in labels if result.row(c) is not None), dtype=np.int64)
    rows = np.array([result.row(c) for c in ids], dtype=np.int64)
    groups = np.array([labels[int(c)] for c in ids], dtype=object)
    return rows, groups, ids


def agrees(bombcell_labels, groups):
    """Per unit: bombcell's label agrees with the curator's (see AGREEING_GROUPS)."""
    return np.array([g in AGREEING_GROUPS.get(b, ()) for b, g in zip(bombcell_labels, groups)],
                    dtype=bool)


def concordance(result, labels):
    """The curator's labels (``{cluster_id: good/mua/noise}``) against ``result``'s labels: the
    confusion counts, the agreement rate, per criterion the units the curator kept that it
    rejects and rejected that it passes, and the disagreeing clusters."""
    rows, groups, ids = labelled_rows(result, labels)
    bombcell = np.array([b or NO_LABEL for b in result.label[rows]], dtype=object)
    confusion = {g: {} for g in CURATOR_GROUPS}
    for g, b in zip(groups, bombcell):
        confusion[g][b] = confusion[g].get(b, 0) + 1
    agree = agrees(bombcell, groups)
    criteria = []
    # per criterion: bombcell's own rule table (the SpikeInterface route's has other criteria)
    for i in _SUGGESTABLE if result.route == "bombcell" else ():
        rule = RULES[i]
        if not rule_enabled(rule, result.params):
            continue
        kept, rejected = (np.isin(groups, list(g)) for g in STAGE_GROUPS[rule.stage])
        fails = result.fails[i, rows]
        criteria.append({"criterion": rule.name, "parameter": rule.param, "stage": rule.stage,
                         "threshold": _json_number(result.thresholds[i]),
                         "kept_but_fails": int((kept & fails).sum()),
                         "rejected_but_passes": int((rejected & ~fails).sum())})
    n = len(ids)
    return {"n_labelled": n, "n_without_bombcell_row": len(labels) - n,
            "n_agree": int(agree.sum()), "agreement": float(agree.mean()) if n else None,
            "confusion": confusion, "criteria": criteria,
            "disagreements": [{"cluster_id": int(c), "curator": g, "bombcell": b}
                              for c, g, b, a in zip(ids, groups, bombcell, agree) if not a],
            "what_if": {k: _json_param(v) for k, v in result.changes.items()}}


def format_concordance(info):
    """concordance() as the CLI's text."""
    n = info["n_labelled"]
    if not n:
        return ("no curator labels (good/mua/noise in cluster_group.tsv) on units bombcell has a "
                "row for: label clusters in phy and save")
    seen = sorted({b for row in info["confusion"].values() for b in row},
                  key=lambda b: (b not in AGREEING_GROUPS, b))
    lines = [f"{info['n_agree']} of {n} labelled units agree with bombcell "
             f"({100 * info['agreement']:.1f}%)", "",
             "curator \\ bombcell " + "".join(f"{b:>14}" for b in seen)]
    for g, row in info["confusion"].items():
        lines.append(f"{g:<19}" + "".join(f"{row.get(b, 0):>14}" for b in seen))
    lines += ["", f"{'criterion':<52}{'kept, fails':>12}{'rejected, passes':>18}"]
    for c in info["criteria"]:
        lines.append(f"{c['criterion']:<52}{c['kept_but_fails']:>12}{c['rejected_but_passes']:>18}")
    lines.append("(kept/rejected: the curator's labels this stage passes/fails: noise criteria "
                 "good+mua/noise, MUA criteria good/mua)")
    if info["disagreements"]:
        lines += ["", "disagreements: " + ", ".join(
            f"{d['cluster_id']} ({d['curator']} vs {d['bombcell']})" for d in info["disagreements"])]
    return "\n".join(lines)


# -- suggest: bombcell's suggest_parameter_adjustments --------------------------------------------

def _criterion_active(rule, params):
    """bombcell's _criterion_is_active: the rule's flags hold and its parameter is a number."""
    if rule.param not in params or not rule_enabled(rule, params):
        return False
    return not np.all(np.isnan(np.atleast_1d(np.asarray(params[rule.param], dtype=float))))


def _suggest_failures(values, thresholds, active):
    """(n_rules, n_units) of what each active criterion rejects as bombcell's function sees it:
    a non-finite value never fails (unlike the classifier, which fails an inf)."""
    fails = np.zeros(values.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        for i in np.flatnonzero(active):
            passes = values[i] >= thresholds[i] if RULES[i].op == "<" else values[i] <= thresholds[i]
            fails[i] = ~passes & np.isfinite(values[i])
    return fails


def _balanced_accuracy(rejected, should_reject):
    """Mean of sensitivity and specificity (bombcell's, with a boolean mean: count / n)."""
    return 0.5 * (rejected[should_reject].mean() + (~rejected[~should_reject]).mean())


class _Sweep:
    """One criterion's thresholds scored on (re)sampled units with counts, not a matrix.

    A unit is rejected at candidate c when another criterion of the stage rejects it, or its
    value is on the failing side of c; with the values sorted, the units on the failing side of
    each candidate are a prefix (``<``) or a suffix (``>``), so weighted prefix sums give every
    candidate's counts at once."""

    def __init__(self, values, candidates, below, others_fail, should_reject):
        order = np.argsort(values, kind="stable")
        self.order, self.below = order, below
        self.cut = np.searchsorted(values[order], candidates, side="left" if below else "right")
        free = ~others_fail
        self.reject_free = (should_reject & free)[order]
        self.keep_free = (~should_reject & free)[order]
        self.reject_others = should_reject & others_fail

    def scores(self, weights, n_reject, n_keep):
        """Balanced accuracy of every candidate for units counted ``weights`` times."""
        w = weights[self.order]
        cum_r = np.concatenate(([0], np.cumsum(w * self.reject_free)))
        cum_k = np.concatenate(([0], np.cumsum(w * self.keep_free)))
        at_r, at_k = cum_r[self.cut], cum_k[self.cut]
        failing_r = at_r if self.below else cum_r[-1] - at_r
        kept_k = cum_k[-1] - at_k if self.below else at_k
        rejected_r = int((weights * self.reject_others).sum()) + failing_r
        return 0.5 * (rejected_r / n_reject + kept_k / n_keep)


def _candidate_thresholds(values):
    """bombcell's: midpoints between observed values, and one that accepts / rejects everything."""
    unique_values = np.unique(values)
    if unique_values.size < 2:
        return np.array([])
    midpoints = (unique_values[:-1] + unique_values[1:]) / 2
    span = unique_values[-1] - unique_values[0]
    return np.concatenate([[unique_values[0] - span], midpoints, [unique_values[-1] + span]])


def _best_of(scores, candidates, tie_break_towards):
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
    return tied[np.argmin(np.abs(candidates[tied] - tie_break_towards))]


def _bootstrap(sweep, rejected_at, should_reject, candidates, current, n_bootstrap, rng):
    """bombcell's _bootstrap_threshold, draw for draw: (median, 16th, 84th percentile of the best
    threshold, mean out-of-bag balanced accuracy)."""
    reject_idx = np.flatnonzero(should_reject)
    keep_idx = np.flatnonzero(~should_reject)
    n = should_reject.size
    thresholds = np.empty(n_bootstrap)
    oob_accuracies = []
    for i in range(n_bootstrap):
        resampled = np.concatenate([rng.choice(reject_idx, size=reject_idx.size, replace=True),
                                    rng.choice(keep_idx, size=keep_idx.size, replace=True)])
        weights = np.bincount(resampled, minlength=n)
        best = _best_of(sweep.scores(weights, reject_idx.size, keep_idx.size), candidates, current)
        thresholds[i] = candidates[best]
        held_out = weights == 0
        n_held = int(held_out.sum())
        if n_held and 0 < should_reject[held_out].sum() < n_held:
            column = np.flatnonzero(candidates == candidates[best])[0]
            oob_accuracies.append(_balanced_accuracy(rejected_at(candidates[column])[held_out],
                                                     should_reject[held_out]))
    return (np.median(thresholds), np.percentile(thresholds, 16), np.percentile(thresholds, 84),
            float(np.mean(oob_accuracies)) if oob_accuracies else np.nan)


def _round_threshold(threshold, values, below, is_integer):
    """bombcell's: readable without moving the decision boundary."""
    if is_integer:
        return int(np.ceil(threshold)) if below else int(np.floor(threshold))
    magnitude = np.nanmax(np.abs(values))
    if magnitude == 0 or not np.isfinite(magnitude):
        return float(threshold)
    decimals = max(0, 3 - int(np.floor(np.log10(magnitude))) - 1)
    return float(np.round(threshold, decimals))


def suggest(result, labels, min_units_per_class=20, min_improvement=0.05, n_bootstrap=200,
            random_seed=0):
    """Per threshold parameter, bombcell's ``suggest_parameter_adjustments(...,
    return_details=True)`` row for the curator's labels (``{cluster_id: good/mua/noise}``) and
    ``result``'s parameters and metrics: a list of dicts with SUGGEST_COLUMNS as keys.  Status
    "too few labels" when a class has fewer than ``min_units_per_class`` units (``n_pass`` and
    ``n_fail`` say how many it has)."""
    _bombcell_route_only(result, "suggested thresholds")
    rows, groups, _ = labelled_rows(result, labels)
    params = result.params
    values = result.values[:, rows]
    active = np.array([i in _SUGGESTABLE and _criterion_active(r, params)
                       for i, r in enumerate(RULES)])
    current = np.array([float(params[r.param]) if active[i] else np.nan
                        for i, r in enumerate(RULES)])
    fails = _suggest_failures(values, current, active)
    predicted_noise = fails[IS_NOISE].any(axis=0)
    rng = np.random.default_rng(random_seed)
    out = []
    for i in np.flatnonzero(active):
        rule = RULES[i]
        below = rule.op == "<"
        passing, failing = STAGE_GROUPS[rule.stage]
        evaluable = np.isin(groups, passing + failing) & np.isfinite(values[i])
        if rule.stage == "mua":
            evaluable &= ~predicted_noise
        v = values[i, evaluable]
        should_reject = np.isin(groups[evaluable], failing)
        n_reject, n_keep = int(should_reject.sum()), int((~should_reject).sum())
        row = {"parameter": rule.param, "metric": rule.metric, "stage": rule.stage,
               "current": current[i], "suggested": np.nan, "status": "", "n_pass": n_keep,
               "n_fail": n_reject, "accuracy_current": np.nan, "accuracy_suggested": np.nan,
               "ci_low": np.nan, "ci_high": np.nan}
        out.append(row)
        if n_reject < min_units_per_class or n_keep < min_units_per_class:
            row["status"] = "too few labels"
            continue
        candidates = _candidate_thresholds(v)
        if candidates.size == 0:
            row["status"] = "no variation"
            continue
        stage = IS_NOISE if rule.stage == "noise" else IS_MUA
        others = stage.copy()
        others[i] = False
        others_fail = fails[others][:, evaluable].any(axis=0)

        def rejected_at(threshold, v=v, others_fail=others_fail, below=below):
            return others_fail | ((v < threshold) if below else (v > threshold))

        row["accuracy_current"] = _balanced_accuracy(
            others_fail | ~((v >= current[i]) if below else (v <= current[i])), should_reject)
        sweep = _Sweep(v, candidates, below, others_fail, should_reject)
        median, ci_low, ci_high, accuracy_suggested = _bootstrap(
            sweep, rejected_at, should_reject, candidates, current[i], n_bootstrap, rng)
        suggested = _round_threshold(median, v, below, rule.metric in _INTEGER_METRICS)
        row.update(suggested=suggested, accuracy_suggested=accuracy_suggested, ci_low=ci_low,
                   ci_high=ci_high)
        accepts_everything = suggested <= v.min() if below else suggested >= v.max()
        if ci_low <= current[i] <= ci_high:
            row["status"] = "inconclusive"
        elif accuracy_suggested - row["accuracy_current"] < min_improvement:
            row["status"] = "ok as is"
        elif accepts_everything:
            row["status"] = "rejects only good units"
        else:
            row["status"] = "suggested"
    return out


def suggested_changes(rows):
    """{param: suggested value} of the rows whose status is "suggested"."""
    return {r["parameter"]: r["suggested"] for r in rows if r["status"] == "suggested"}


def labels_needed(rows, min_units_per_class=20):
    """Per "too few labels" row, how many more labels of which class it needs: a text."""
    texts = []
    for r in rows:
        if r["status"] != "too few labels":
            continue
        passing, failing = STAGE_GROUPS[r["stage"]]
        need = [f"{min_units_per_class - n} more {'/'.join(g)}" for n, g in
                ((r["n_pass"], passing), (r["n_fail"], failing)) if n < min_units_per_class]
        texts.append(f"{r['parameter']}: {' and '.join(need)}")
    return texts


def suggestion_json(row):
    """One suggest() row as JSON-ready values (NaN as null)."""
    return {k: (_json_number(v) if isinstance(v, (float, np.floating)) else v)
            for k, v in row.items()}


def format_suggestions(rows, min_units_per_class=20):
    """suggest() as the CLI's table (bombcell's own print-out, with the labelled counts)."""
    def num(x, fmt):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)
    lines = [f"  {'parameter':<32}{'current':>10}{'suggested':>11}{'acc now':>9}{'acc new':>9}"
             f"{'pass':>6}{'fail':>6}  status"]
    for r in rows:
        marker = "->" if r["status"] == "suggested" else "  "
        lines.append(f"{marker}{r['parameter']:<32}{r['current']:>10g}{num(r['suggested'], 'g'):>11}"
                     f"{num(r['accuracy_current'], '.2f'):>9}{num(r['accuracy_suggested'], '.2f'):>9}"
                     f"{r['n_pass']:>6}{r['n_fail']:>6}  {r['status']}")
    lines.append("acc = balanced accuracy against the curator's labels ('acc new' on held-out "
                 "units); pass/fail = labelled units on each side")
    needed = labels_needed(rows, min_units_per_class)
    if needed:
        lines.append(f"too few labels (each needs {min_units_per_class} units on both sides): "
                     + "; ".join(needed))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Re-running bombcell (in a child process: phy's *Re-run bombcell*, ``phy-bc-reason rerun``)
# ------------------------------------------------------------------------------------------------
# bombcell runs on the saved clustering (its loader follows spike_clusters.npy, so clusters merged
# or split in phy get rows) with the saved parameters, into a new folder next to the results;
# only when it succeeded are its phy TSVs moved into the dataset and the folders swapped
# (DATASET/bombcell -> DATASET/bombcell.previous).  A failed or killed run leaves the previous
# results and every TSV as they were (the caller removes the new folder).

RERUN_PREFIX = ".bombcell-rerun-"  # the new results folder while bombcell runs
PREVIOUS_DIRNAME = BOMBCELL_DIRNAME + ".previous"  # the results a successful re-run replaced
RERUN_DONE = "phy-bc-reason rerun: done"  # the child's last line on success
_RAW_RULES = tuple(r.name for r in RULES if ("extractRaw", True) in r.enabled_when)


def rerun_plan(dataset_dir, changes=None):
    """(bombcell's param dict, notes) for a re-run: the saved parameters (DATASET/bombcell),
    ``changes`` on top, no plots, no TSVs written by bombcell itself (they are moved in after
    success).  Without the raw data file bombcell had, the raw-data tests are switched off and a
    note says which."""
    dataset = dataset_path(dataset_dir)
    params_file = dataset / BOMBCELL_DIRNAME / PARAMS_FILE
    param = dict(_read_params(params_file))
    param.update(check_changes(changes or {}))
    notes = []
    raw = param.get("raw_data_file")
    if _truth(param, "extractRaw") if "extractRaw" in param else False:
        if not raw or not Path(str(raw)).is_file():
            param["raw_data_file"] = None
            param["extractRaw"] = False
            notes.append(f"raw data file {raw or '(none saved)'} not found: raw waveforms are not "
                         f"extracted and the raw-data tests are off ({', '.join(_RAW_RULES)})")
    elif raw:
        notes.append(f"extractRaw is off in the saved parameters: {', '.join(_RAW_RULES)} stay off")
    param.update(ephysKilosortPath=str(dataset), plotGlobal=False, plotDetails=False,
                 savePlots=False, saveAsTSV=False, verbose=True)
    return param, notes


def rerun_bombcell(dataset_dir, changes=None, log=print):
    """Run bombcell again on a dataset (in this process: call it in a child process).  Returns
    the results folder.  Raises on failure, after which nothing in the dataset has changed but
    the new folder (``RERUN_PREFIX<pid>``), which the caller removes."""
    import contextlib
    dataset = dataset_path(dataset_dir)
    param, notes = rerun_plan(dataset, changes)
    saved_tsv = _truth(_read_params(dataset / BOMBCELL_DIRNAME / PARAMS_FILE), "saveAsTSV") \
        if "saveAsTSV" in param else True
    for note in notes:
        log(f"note: {note}")
    new = dataset / f"{RERUN_PREFIX}{os.getpid()}"
    log(f"running bombcell on {dataset} into {new.name} (the saved clustering, saved parameters"
        + (f", changed: {', '.join(f'{k}={_param_text(v)}' for k, v in check_changes(changes).items())}"
           if changes else "") + ")")
    import matplotlib
    matplotlib.use("Agg")
    with contextlib.redirect_stdout(sys.stderr):  # bombcell prints; our stdout stays ours
        import bombcell
        from bombcell.save_utils import save_quality_metrics_and_verify
        quality_metrics, param, _, unit_type_string = bombcell.run_bombcell(
            str(dataset), str(new), param)[:4]
        tsv_dir = new / "phy_tsv"
        if saved_tsv:  # bombcell's own TSV writer, into the new folder first
            ids = param.get("unique_templates", quality_metrics["phy_clusterID"])
            save_quality_metrics_and_verify(quality_metrics, unit_type_string, ids, str(new),
                                            dict(param, saveAsTSV=True), str(tsv_dir))
    try:  # from here on a cancel (SIGTERM) would leave the swap half done: finish it
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread (called as a library): no signals to mind
        pass
    install_rerun(dataset, new)
    log(RERUN_DONE)
    return dataset / BOMBCELL_DIRNAME


def install_rerun(dataset_dir, new):
    """Swap a finished re-run in: its phy TSVs into the dataset (one atomic rename each), then
    DATASET/bombcell -> DATASET/bombcell.previous and the new folder -> DATASET/bombcell."""
    import shutil
    dataset = dataset_path(dataset_dir)
    new = Path(new)
    tsv_dir = new / "phy_tsv"
    if tsv_dir.is_dir():
        for tsv in sorted(tsv_dir.glob("cluster_*.tsv")):
            os.replace(tsv, dataset / tsv.name)
        tsv_dir.rmdir()
    current, previous = dataset / BOMBCELL_DIRNAME, dataset / PREVIOUS_DIRNAME
    if previous.exists():
        shutil.rmtree(previous)
    if current.exists():
        os.replace(current, previous)
    try:
        os.replace(new, current)
    except OSError:
        if previous.exists() and not current.exists():
            os.replace(previous, current)
        raise


def _cmd_rerun(args):
    changes = check_changes(args.set or [])
    rerun_plan(args.dataset, changes)  # unreadable parameters: one line, before bombcell starts
    dataset = dataset_path(args.dataset)
    try:
        rerun_bombcell(dataset, changes, log=lambda line: print(line, flush=True))
    except BaseException as e:
        import shutil
        shutil.rmtree(dataset / f"{RERUN_PREFIX}{os.getpid()}", ignore_errors=True)
        if isinstance(e, ImportError):
            raise BombcellReasonError(f"bombcell cannot be imported in {sys.executable} ({e}); "
                                      f"pip install bombcell into this environment") from None
        if isinstance(e, (KeyboardInterrupt, SystemExit, BombcellReasonError)):
            raise
        raise BombcellReasonError(f"bombcell failed ({_one_line(e)}); the previous results "
                                  f"are untouched") from None
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# The TSV phy reads
# ------------------------------------------------------------------------------------------------

def _tsv_safe(text):
    # phylib reads the TSV with csv.reader and the locale's encoding: keep one line, plain ASCII.
    text = str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return text.encode("ascii", "replace").decode("ascii")


def write_reason_tsv(dataset_dir, reasons, path=None, column=COLUMN):
    """Write ``cluster_bc_classificationReason.tsv`` atomically: a temporary file in the same
    folder, flushed to disk, then renamed over the old one, so phy never reads half a file and a
    failed write leaves the previous file as it was.  (``path``/``column``: another file, for
    what-if exports.)"""
    import csv
    path = dataset_path(dataset_dir) / TSV_NAME if path is None else Path(path)

    def write(f):
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["cluster_id", column])
        for cluster_id in sorted(reasons):
            writer.writerow([int(cluster_id), _tsv_safe(reasons[cluster_id])])
    return write_atomically(path, write, newline="", encoding="ascii")


def write_atomically(path, write, newline=None, encoding="utf-8"):
    """Write ``path`` through ``write(file)`` into a temporary file in the same folder, flushed
    to disk, then renamed over ``path``: a reader never sees half a file, and a failed write
    leaves the previous file as it was (the temporary file is removed).  Returns the path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline=newline, encoding=encoding) as f:
            write(f)
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


def foreign_results_problem(result, dataset_dir, cluster_ids=None, bombcell_dir=None):
    """One line when bombcell's results are not this dataset's (copied from another sorting, or
    stale after Kilosort ran again), else None.

    bombcell's ``nSpikes`` is the number of spikes of that id in spike_clusters.npy (else
    spike_templates.npy).  phy's merges and splits give their clusters new ids and never reuse
    one, so a bombcell id that is still in the spike file holds the spikes bombcell counted:
    counts are compared on those ids only, and ids that vanished (parents of merges and splits)
    or appeared (their children) are curation, not a mismatch.  With removeDuplicateSpikes
    bombcell counted after removing duplicates: exact where it saved which spikes those were,
    else at most the file's count.  ``cluster_ids``: phy's clusters (default: the spike file's).
    """
    try:
        dedup = _truth(result.params, "removeDuplicateSpikes") \
            if "removeDuplicateSpikes" in result.params else False
    except BombcellReasonError:
        dedup = True  # undecidable: the lenient comparison
    counts, name = spike_counts(dataset_dir, bombcell_dir, remove_duplicates=dedup)
    exact = dedup is False or (counts is not None and _has_duplicates_record(
        dataset_dir, bombcell_dir, name))
    if cluster_ids is None:
        cluster_ids = np.flatnonzero(counts) if counts is not None else []
    cluster_ids = np.asarray(cluster_ids, dtype=np.int64)
    if len(cluster_ids) and not np.isin(cluster_ids, result.cluster_ids).any():
        return foreign_results_message(result.source, len(cluster_ids))
    if counts is None:
        return None
    ids = result.cluster_ids
    now = np.zeros(len(ids))
    inside = (ids >= 0) & (ids < len(counts))
    now[inside] = counts[ids[inside]]
    saved = np.asarray(result.metrics["nSpikes"], dtype=float)
    untouched = (now > 0) & ~np.isnan(saved)
    wrong = untouched & ((saved != now) if exact else (saved > now))
    if name == "spike_templates.npy":  # no curation without spike_clusters.npy: nothing vanishes
        wrong |= (now == 0) & (saved > 0)
    if not wrong.any():
        return None
    first = int(np.flatnonzero(wrong)[0])
    return (f"{result.source}: bombcell's nSpikes disagrees with {name} for {int(wrong.sum())} of "
            f"{int(untouched.sum())} clusters (cluster {int(ids[first])}: {format_number(saved[first])} "
            f"saved, {format_number(now[first])} now): these results belong to another sorting or "
            f"are stale (Kilosort ran again?); re-run bombcell on this dataset")


def dataset_reasons(dataset_dir, bombcell_dir=None):
    """(classification, reasons by cluster id, notes) for a dataset, with phy's clusters that
    bombcell has no row for marked UNCLASSIFIED."""
    result = classify_dataset(dataset_dir, bombcell_dir)
    reasons = result.reason_by_cluster()
    notes = list(result.notes)
    problem = foreign_results_problem(result, dataset_dir, bombcell_dir=bombcell_dir)
    if problem:
        raise BombcellReasonError(problem)
    phy_ids = phy_cluster_ids(dataset_dir)
    if phy_ids is not None:
        unknown = np.setdiff1d(phy_ids, result.cluster_ids)
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
    for i, rule in enumerate(result.rules):
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
    lines = ["| stage | name | criterion: the unit fails when | threshold parameter | enabled when |",
             "|---|---|---|---|---|"]
    for rule in RULES:
        stage = rule.stage + (f" {rule.route}" if rule.route else "")
        test = criterion_name(f"`{rule.metric}`", rule.op, "threshold", sep=" ")
        enabled = " and ".join(f"{flag}" if want else f"not {flag}" for flag, want in rule.enabled_when)
        extras = []
        if rule.skipped_where_nan:
            extras.append(f"only where `{rule.skipped_where_nan}` is not NaN")
        if rule.kept_when:
            flag, metric, value = rule.kept_when
            extras.append(f"passes where {flag} and `{metric}` == {value}")
        enabled = "; ".join(filter(None, [enabled or "always"] + extras))
        lines.append(f"| {stage} | {rule.short} | {test} | "
                     f"{('`' + rule.param + '`') if rule.param else '-'} | {enabled} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

# Exit statuses, the same in every subcommand.
EXIT_OK = 0
EXIT_INPUT = 1  # a dataset could not be explained (missing, unreadable, foreign or stale results,
#                 results bombcell itself cannot classify), or a cluster asked for does not exist
EXIT_USAGE = 2  # the command line itself is wrong (argparse's status)
EXIT_CODES = (f"exit status: {EXIT_OK} success; {EXIT_INPUT} a dataset could not be explained "
              f"(one line on stderr says why and how to fix it), a cluster asked for does not "
              f"exist, or --set names an unknown parameter or a bad value; {EXIT_USAGE} wrong "
              f"command line")


def _summary_line(result, notes):
    counts = ", ".join(f"{k} {v}" for k, v in label_counts(result.label).items())
    line = f"{len(result)} units: {counts}" + (f" ({len(notes)} note(s))" if notes else "")
    return line + (f"; {result.version_note}" if result.version_note else "")


def _cmd_export_whatif(args):
    """export --set/--out: the what-if reasons into FILE (column bc_whatIfReason), never into
    the dataset's reasons TSV."""
    folder = args.dataset[0]
    out = Path(args.out).expanduser()
    if out.resolve() == (dataset_path(folder) / TSV_NAME).resolve():
        raise BombcellReasonError(f"--out {out}: that is phy's reasons TSV; a what-if is written "
                                  f"elsewhere (it never replaces the real reasons)")
    args.dataset = folder
    result, reasons, notes = _whatif_reasons(args)
    try:
        path = write_reason_tsv(folder, reasons, path=out,
                                column=WHATIF_COLUMN if result.changes else COLUMN)
    except OSError as e:
        raise BombcellReasonError(f"{out}: cannot be written ({e.strerror or e})") from None
    print(f"{path}: {_summary_line(result, notes)}" + (f"; {whatif_header(result)}"
                                                       if result.changes else ""), flush=True)
    return EXIT_OK


def _cmd_export(args):
    if args.set and not args.out:
        print("phy-bc-reason export: error: --set needs --out FILE: a what-if never replaces "
              f"{TSV_NAME}", file=sys.stderr)
        return EXIT_USAGE
    if args.out and len(args.dataset) > 1:
        print("phy-bc-reason export: error: --out takes one dataset", file=sys.stderr)
        return EXIT_USAGE
    if args.out:
        return _cmd_export_whatif(args)
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
    return EXIT_INPUT if failed else EXIT_OK


def _whatif_reasons(args):
    """dataset_reasons, then the what-if of ``--set`` (checked before anything is printed or
    written), then ``--save-params``.  Returns (classification, reasons, notes)."""
    changes = check_changes(args.set or [])
    result, reasons, notes = dataset_reasons(args.dataset, args.bombcell_dir)
    if changes:
        result = result.what_if(changes)
        reasons.update(result.reason_by_cluster())
    if getattr(args, "save_params", None):
        if not result.changes:
            raise BombcellReasonError("--save-params: nothing to save; change parameters with --set")
        try:
            path = write_params_file(args.save_params, result.changes)
        except OSError as e:
            raise BombcellReasonError(f"{args.save_params}: cannot be written ({e.strerror or e})") from None
        print(f"wrote the changed parameters to {path}", file=sys.stderr)
    return result, reasons, notes


def _cmd_summary(args):
    result, _, notes = _whatif_reasons(args)
    summary = result.summary()
    if args.json:
        for criterion in summary["criteria"]:
            print(json.dumps(dict(criterion, what_if=summary["what_if"])))
        return EXIT_OK
    if result.changes:
        print(whatif_header(result))
    print(format_summary(summary))
    for note in notes:
        print(f"note: {note}")
    return EXIT_OK


def _curated(args):
    """(classification, the curator's labels) of ``args.dataset`` (a what-if with --set)."""
    result, _, _ = _whatif_reasons(args)
    return result, read_curator_labels(args.dataset)


def _cmd_concordance(args):
    result, labels = _curated(args)
    info = concordance(result, labels)
    if args.json:
        print(json.dumps(info))
        return EXIT_OK
    if result.changes:
        print(whatif_header(result))
    print(format_concordance(info))
    return EXIT_OK


def _cmd_suggest(args):
    result, labels = _curated(args)
    rows = suggest(result, labels, min_units_per_class=args.min_units)
    if args.json:
        for row in rows:
            print(json.dumps(suggestion_json(row)))
    else:
        if result.changes:
            print(whatif_header(result))
        print(format_suggestions(rows, args.min_units))
    if args.save_suggestions:
        changes = suggested_changes(rows)
        if changes:
            path = write_params_file(args.save_suggestions, changes)
            print(f"suggested parameters written to {path}", file=sys.stderr)
        else:
            print("no suggested change: nothing written", file=sys.stderr)
    return EXIT_OK


def _cmd_explain(args):
    result, reasons, notes = _whatif_reasons(args)
    if result.changes and not args.json:
        print(whatif_header(result))
    cluster_ids = args.cluster if args.cluster else sorted(reasons)
    missing = []
    for cluster_id in cluster_ids:
        if cluster_id not in reasons:  # neither phy nor bombcell knows it: a typo, not a re-run
            missing.append(cluster_id)
            print(f"phy-bc-reason: error: cluster {cluster_id}: no such cluster in {args.dataset} "
                  f"(clusters {_ids_range(reasons)})", file=sys.stderr)
            continue
        info = result.explain(cluster_id)
        if args.json:
            if info is None:  # a cluster made in phy after bombcell ran
                info = {"cluster_id": int(cluster_id), "label": None, "bombcell_label": None,
                        "reason": reasons[cluster_id], "criteria": [], "decisive": [], "notes": []}
            if result.changes:
                info["what_if"] = {k: _json_param(v) for k, v in result.changes.items()}
            print(json.dumps(info))
        elif args.cluster:
            print(format_explanation(info) if info else f"cluster {cluster_id}: {reasons[cluster_id]}")
            print()
        else:
            print(f"{cluster_id:>6}  {reasons[cluster_id]}")
    if not args.json:
        for note in notes:
            print(f"note: {note}")
        if not args.cluster and len(result):
            print(f"{_summary_line(result, notes)}; details: {_self_command()} explain "
                  f"{_quote(args.dataset)} --cluster {int(result.cluster_ids[0])}")
    return EXIT_INPUT if missing else EXIT_OK


def _ids_range(ids):
    ids = sorted(ids)
    return f"{ids[0]}-{ids[-1]}" if ids else "none"


def _quote(path):
    import shlex
    return shlex.quote(str(path))


def _self_command():
    """How to run this command again as printed: ``phy-bc-reason`` when that is on PATH and is
    this installation, else its full path, else ``python -m`` with this interpreter."""
    import shutil
    script = Path(sys.executable).parent / "phy-bc-reason"
    found = shutil.which("phy-bc-reason")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "phy-bc-reason"
    if script.exists():
        return _quote(script)
    return f"{_quote(sys.executable)} -m phy_bc_reason_plugin"


def _cmd_rules(args):
    print(spikeinterface_rules_markdown() if args.spikeinterface else rules_markdown())
    return 0


# -- enabling the plugin in phy_config.py ----------------------------------------------------

PLUGIN_NAME = "BombcellReasonPlugin"  # the class phy_config.py names
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


def _cmd_install(args):
    print(install_plugin(args.config_dir))
    return 0


def _cmd_demo(args):
    return _run_demo(args.demo_args)


def _run_demo(argv):
    """The demo takes its own options (``phy-bc-reason demo --help`` prints them)."""
    try:
        import phy_bc_reason_demo
    except ImportError as e:
        print(f"phy-bc-reason: error: the demo needs phy_bc_reason_demo.py, installed with the "
              f"package (pip install phy-bc-reason), not part of the drop-in file ({e})",
              file=sys.stderr)
        return EXIT_INPUT
    import importlib.util
    if importlib.util.find_spec("bombcell") is None:  # an extra ([demo]), not a requirement
        print("phy-bc-reason demo: it runs bombcell, which is not installed here; "
              "pip install 'phy-bc-reason[demo]'", file=sys.stderr)
        return EXIT_INPUT
    return phy_bc_reason_demo.main(argv, prog="phy-bc-reason demo")


def _whatif_options(p):
    p.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="what-if: classify with this parameter changed (repeatable; flags take "
                        "true/false).  Labels are bombcell's under the changed parameters")
    p.add_argument("--save-params", metavar="FILE",
                   help="with --set: write the changed parameters as JSON for bombcell's own run "
                        "(param.update(json.load(open(FILE))) before bombcell.run_bombcell)")


def build_parser():
    def sub_parser(name, help, description, examples, **kwargs):
        return sub.add_parser(name, help=help, description=description,
                              epilog="example:\n" + "\n".join(f"  {e}" for e in examples)
                              + "\n\n" + EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    parser = argparse.ArgumentParser(
        prog="phy-bc-reason",
        description="Why did bombcell label each unit GOOD, MUA, NOISE or NON-SOMA?  Reads "
                    "bombcell's results (DATASET/bombcell) and explains every label by the "
                    "criteria that decide it.",
        epilog="example:\n  phy-bc-reason explain path/to/kilosort_output --cluster 12\n\n"
               + EXIT_CODES + "\n\n'phy-bc-reason COMMAND --help' says more about each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub_parser(
        "export", f"write DATASET/{TSV_NAME} for each dataset folder",
        f"Write DATASET/{TSV_NAME} (the column phy shows) for each dataset folder, atomically. "
        f"Goes on past a dataset that cannot be explained, writes nothing for it, and exits "
        f"{EXIT_INPUT} at the end.",
        ["phy-bc-reason export rec1/kilosort4 rec2/kilosort4 -v"])
    p.add_argument("dataset", nargs="+", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DATASET/bombcell)")
    p.add_argument("-v", "--verbose", action="store_true", help="print notes about each dataset")
    _whatif_options(p)
    p.add_argument("--out", metavar="FILE",
                   help=f"write the reasons to FILE instead (required with --set; a what-if's "
                        f"column is {WHATIF_COLUMN})")
    p.set_defaults(func=_cmd_export)

    p = sub_parser(
        "explain", "print the reason of every unit, or all criteria of some",
        "Print the reason of every unit (one line each), or with --cluster every criterion of "
        "those clusters: value, threshold, status, margin, and which criteria decide the label.",
        ["phy-bc-reason explain path/to/kilosort_output",
         "phy-bc-reason explain path/to/kilosort_output --cluster 12 --cluster 40",
         "phy-bc-reason explain path/to/kilosort_output --json > reasons.jsonl"])
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DATASET/bombcell)")
    p.add_argument("--cluster", type=int, action="append", metavar="ID",
                   help="explain this cluster in full (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _whatif_options(p)
    p.set_defaults(func=_cmd_explain)

    p = sub_parser(
        "summary", "counts per label, and per criterion the units it fails and blocks",
        "Counts per label, and for every criterion: its threshold, the units failing it, its "
        "sole blockers (units that turn GOOD when that threshold alone is relaxed) and the "
        "metric's quantiles.  Thresholds that block the most units first.",
        ["phy-bc-reason summary path/to/kilosort_output",
         "phy-bc-reason summary path/to/kilosort_output --set maxRPVviolations=0.2 --json"])
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DATASET/bombcell)")
    p.add_argument("--json", action="store_true", help="one JSON object per criterion and line")
    _whatif_options(p)
    p.set_defaults(func=_cmd_summary)

    p = sub_parser(
        "concordance", "the curator's labels (cluster_group.tsv) against bombcell's",
        f"The curator's labels (phy's {GROUP_TSV}: good, mua, noise; unsorted and unlabelled "
        "clusters left out) against bombcell's: the confusion counts, the agreement rate, per "
        "criterion the units the curator kept that it fails and rejected that it passes, and the "
        "disagreeing clusters.  NON-SOMA GOOD counts as good, NON-SOMA MUA as mua, NON-SOMA as "
        "either.",
        ["phy-bc-reason concordance path/to/kilosort_output",
         "phy-bc-reason concordance path/to/kilosort_output --json"])
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DATASET/bombcell)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="against a what-if's labels (repeatable)")
    p.set_defaults(func=_cmd_concordance)

    p = sub_parser(
        "suggest", "thresholds that would agree better with the curator's labels",
        "bombcell 0.94's suggest_parameter_adjustments on the curator's labels (phy's "
        f"{GROUP_TSV}): per threshold parameter the suggested value and status, the current and "
        "suggested balanced accuracy, the bootstrap interval and the labelled counts.  Each "
        "threshold is swept alone within its stage; a value is suggested only with at least "
        "--min-units labelled units on each side, an improvement on held-out units and the "
        "current value outside the interval.",
        ["phy-bc-reason suggest path/to/kilosort_output",
         "phy-bc-reason suggest path/to/kilosort_output --json",
         "phy-bc-reason suggest path/to/kilosort_output --save-params suggested.json"])
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--bombcell-dir", help="bombcell results folder (default: DATASET/bombcell)")
    p.add_argument("--json", action="store_true", help="one JSON object per parameter and line")
    p.add_argument("--min-units", type=int, default=SUGGEST_DEFAULTS["min_units_per_class"],
                   metavar="N", help="labelled units needed on each side (bombcell's "
                                     "min_units_per_class, default %(default)s)")
    p.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="start from a what-if's parameters (repeatable)")
    p.add_argument("--save-params", metavar="FILE", dest="save_suggestions",
                   help="write the suggested changes as JSON for bombcell's own run "
                        "(param.update(json.load(open(FILE))) before bombcell.run_bombcell)")
    p.set_defaults(func=_cmd_suggest)

    p = sub_parser(
        "rerun", "run bombcell again on the saved clustering (what phy's Re-run bombcell does)",
        "Run bombcell again on DATASET's saved clustering with its saved parameters (changed by "
        "--set), into a new folder; on success its TSVs move into DATASET and DATASET/bombcell "
        f"becomes DATASET/{PREVIOUS_DIRNAME}.  A failed run changes nothing.  Needs bombcell in "
        "this Python environment.",
        ["phy-bc-reason rerun path/to/kilosort_output",
         "phy-bc-reason rerun path/to/kilosort_output --set maxRPVviolations=0.2"])
    p.add_argument("dataset", help="Kilosort/phy dataset folder (or its params.py)")
    p.add_argument("--set", action="append", metavar="PARAM=VALUE",
                   help="run with this parameter changed (repeatable)")
    p.set_defaults(func=_cmd_rerun)

    p = sub_parser("rules", "print the rule table (Markdown)",
                   "Print bombcell 0.94's classification rules, as this tool applies them, as a "
                   "Markdown table; with --spikeinterface, the rules of bombcell's SpikeInterface "
                   f"route (run_bombcell_qc: SpikeInterface {SPIKEINTERFACE_VERSION}'s "
                   "bombcell_label_units) with SpikeInterface's default thresholds.",
                   ["phy-bc-reason rules", "phy-bc-reason rules --spikeinterface"])
    p.add_argument("--spikeinterface", action="store_true",
                   help="the SpikeInterface route's rules (results of run_bombcell_qc)")
    p.set_defaults(func=_cmd_rules)

    p = sub_parser("install", "enable the plugin in ~/.phy/phy_config.py",
                   "Enable the phy plugin in phy_config.py (a marked block; a backup of the old "
                   "file is kept as phy_config.py.bak).  Idempotent.",
                   ["phy-bc-reason install", "phy-bc-reason install --config-dir /path/to/.phy"])
    p.add_argument("--config-dir", help="phy's configuration folder (default: ~/.phy)")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("demo", help="build a demo dataset, run bombcell on it, show the reasons "
                                    "(phy-bc-reason demo --help for its options)", add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        if argv[:1] == ["demo"]:  # all its options are the demo's, --help included
            return _run_demo(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BombcellReasonError as e:
        print(f"phy-bc-reason: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:  # e.g. `phy-bc-reason explain DIR | head`
        return EXIT_OK


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
# we put FIRST_COLUMNS first (id, the reason, fr, n_spikes, bc_nFailing, bc_unitType: what fits
# the cluster view of phy's default layout at 1920x1080), and leave the raw bombcell metric
# labels out unless the user chose to show them (see set_raw_metrics_shown).  ``bc_nFailing`` is
# a second cluster metric (a number, so phy sorts and filters it as one).
#
# Events and APIs used: controller ``controller_ready`` and ``gui_ready``; supervisor ``cluster``
# (UpdateInfo: description, history, added, descendants) and ``select`` (the dock view), and
# ``save_clustering`` (connected last=True, so it runs after phy's own ``on_save_clustering``);
# GUI ``close`` and ``show`` (first open: ``gui.resizeDocks`` on the cluster view's and our
# dock); view ``close_view``; ``controller.cluster_metrics``, ``controller.view_creator``,
# ``supervisor.columns``.  phy's tables are touched only in _rebuild_tables
# (``get_current_sort``, ``ClusterView._reset_table``: what phy's ``Supervisor.label`` uses to
# add a column, ``reset``/``select``), _refresh_tables (``change``), the tooltip
# (``table_view``, the native Qt table of phy 2.1: ``indexAt``, ``viewport``) and, in phy 2.0,
# the table page's header (``pre_build`` event, ``builder.headers``: _prepare_html_table).
# ``Actions(gui, menu=..., submenu=...)`` with ``alias``/``prompt`` for the ``:bc`` snippet,
# ``gui.state`` (the plugin's choices, saved in phy's state.json), ``gui.status_message`` and
# the "phy" logger (phy.log + status bar).
# Every function phy calls is wrapped: an exception is logged and shown, never raised into phy.

VIEW_NAME = "BombcellReasonView"
UNIT_TYPE_COLUMN = "bc_unitType"
N_FAILING_COLUMN = "bc_nFailing"
# The cluster view's first columns.  In phy's default layout at 1920x1080 the cluster view is
# ~470 px wide: id, the short reason, phy's fr and n_spikes fit; the rest is a scroll away.
FIRST_COLUMNS = ("id", COLUMN, "fr", "n_spikes", N_FAILING_COLUMN, UNIT_TYPE_COLUMN)
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


def _ids_text(ids):
    return ", ".join(str(i) for i in sorted({int(i) for i in ids}))


def _parents_text(parents, label_of):
    """``0 (MUA), 9 (GOOD)``: the parents with the labels they had."""
    return ", ".join(f"{c} ({label_of(c)})" for c in sorted({int(i) for i in parents}))


def merged_reason(parents, label_of=lambda c: "?"):
    return unclassified_reason(f"merged from {_parents_text(parents, label_of)}; re-run bombcell")


def split_reason(parents, label_of=lambda c: "?"):
    return unclassified_reason(f"split from {_parents_text(parents, label_of)}; re-run bombcell")


# The column when the dataset has no bombcell folder at all: quiet, the status bar and the view
# say the rest.  Any other problem: short too, the full message is in the status bar and view.
NO_RESULTS_REASON = "no bombcell results"
UNUSABLE_RESULTS_REASON = unclassified_reason("bombcell results unusable")
FOREIGN_RESULTS_REASON = unclassified_reason("bombcell results of another sorting")

# The dock view shows up to this many selected clusters side by side; more are counted, not shown.
_MAX_CLUSTERS_IN_VIEW = 4


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

    def __init__(self, classification=None, error=None, previous=None, dataset_dir=None):
        self.classification = classification
        self.error = error
        self.dataset_dir = dataset_dir  # where check_clusters counts spikes (None: it does not)
        self._base = classification.reason_by_cluster() if classification is not None else {}
        # cluster id made after bombcell ran -> its UNCLASSIFIED text
        self._origin = recorded_origins(previous, self._base)
        self._html = {}  # cluster id -> cached HTML of the dock view
        self._info = {}  # cluster id -> cached Classification.explain
        self._n_failing = None  # cluster id -> number of failing criteria, built on first use
        self.no_results = False  # the dataset has no bombcell folder: set by the plugin
        self.foreign = False  # the results are another sorting's (or stale): set by check_clusters

    @classmethod
    def load(cls, dataset_dir, previous=None):
        """Classify a dataset; any failure becomes the book's ``error``, never an exception."""
        try:
            return cls(classify_dataset(dataset_dir), previous=previous, dataset_dir=dataset_dir)
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
        """Turn results of another dataset or sorting into an error: none of phy's clusters has
        a bombcell row, or bombcell's spike counts disagree with the dataset's on clusters that
        curation left alone (see foreign_results_problem).  ``prune``: forget origins (read
        from an old TSV) of clusters that do not exist."""
        cluster_ids = [int(c) for c in cluster_ids]
        if prune:
            existing = set(cluster_ids)
            self._origin = {c: t for c, t in self._origin.items() if c in existing}
        if not self.ok or self.classification is None:
            return
        if self.dataset_dir is not None:
            try:
                problem = foreign_results_problem(self.classification, self.dataset_dir, cluster_ids)
            except Exception as e:  # the check must never stop phy; say it could not run
                _report_exception("checking that bombcell's results are this dataset's", e)
                problem = None
        elif cluster_ids and not any(c in self._base for c in cluster_ids):
            problem = foreign_results_message(self.classification.source, len(cluster_ids))
        else:
            problem = None
        if problem:
            self.error = problem
            self.foreign = True
            self._html.clear()

    def reason(self, cluster_id):
        if self.error is not None:
            if self.no_results:
                return NO_RESULTS_REASON
            return FOREIGN_RESULTS_REASON if self.foreign else UNUSABLE_RESULTS_REASON
        text = self._base.get(cluster_id)
        if text is None:
            text = self._origin.get(cluster_id, NO_ROW_REASON)
        return text

    def label_of(self, cluster_id):
        """bombcell's label of a cluster as the classifier gives it, or UNCLASSIFIED."""
        unit = self.classification.row(cluster_id) if self.ok and self.classification else None
        if unit is None:
            return UNCLASSIFIED
        return self.classification.label[unit] or NO_LABEL

    def n_failing(self, cluster_id):
        """How many criteria the cluster fails (the bc_nFailing column); None without a row."""
        if self.error is not None:
            return None
        if self._n_failing is None:
            c = self.classification
            self._n_failing = (dict(zip(c.cluster_ids.tolist(), c.n_failing.tolist()))
                               if self.ok and c is not None else {})
        return self._n_failing.get(int(cluster_id))

    def full_reason(self, cluster_id):
        """The reason with full criterion names (the column's tooltip)."""
        if self.error is not None:
            return unclassified_reason(self.error)
        full = self.classification.full_reason(cluster_id) if cluster_id in self._base else None
        return full or self.reason(cluster_id)

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
            made = merged_reason if merge else split_reason
            self._origin[new] = made(from_, self.label_of)
            self._html.pop(new, None)

    # -- the dock view ----------------------------------------------------------------------------

    def html(self, cluster_ids):
        """HTML of the dock view: one cluster in full, or 2-4 side by side (cached per cluster:
        a selection is a join)."""
        cluster_ids = [int(c) for c in cluster_ids]
        if not cluster_ids:
            return _html_page("<p class='dim'>Select a cluster to see why bombcell labelled it.</p>")
        if self.error is not None:
            return _html_page(_problem_html(self.error, self.no_results))
        if len(cluster_ids) == 1:
            cluster_id = cluster_ids[0]
            part = self._html.get(cluster_id)
            if part is None:
                info = self.info(cluster_id)
                part = self._html[cluster_id] = (
                    _explanation_html(info) if info is not None
                    else _unclassified_html(cluster_id, self.reason(cluster_id)))
            return _html_page(part)
        shown = cluster_ids[:_MAX_CLUSTERS_IN_VIEW]
        return _html_page(_comparison_html(
            shown, [self.info(c) for c in shown], [self.reason(c) for c in shown],
            len(cluster_ids) - len(shown)))

    def info(self, cluster_id):
        """``Classification.explain`` of a cluster (None without a bombcell row), cached."""
        if self.error is not None or cluster_id not in self._base:
            return None
        if cluster_id not in self._info:
            self._info[cluster_id] = self.classification.explain(cluster_id)
        return self._info[cluster_id]


WHATIF_PREFIX = "WHAT-IF "  # starts every classified row of the column during a what-if


class _WhatIfBook(ReasonBook):
    """The book phy shows during a what-if: the what-if classification's reasons, each row
    starting with "WHAT-IF ", the view with a banner naming the changes.  Clusters without a
    bombcell row keep the real book's texts."""

    def __init__(self, whatif, real_book):
        super().__init__(classification=whatif)
        self.real_book = real_book
        self.adopt_origins(real_book)

    def reason(self, cluster_id):
        text = super().reason(cluster_id)
        return WHATIF_PREFIX + text if int(cluster_id) in self._base else text

    def html(self, cluster_ids):
        page = super().html(cluster_ids)
        banner = (f"<p style='color:#e0b040'><b>WHAT-IF</b> (not bombcell's saved labels): "
                  f"{_esc(whatif_changes_text(self.classification))}; :bcreset to go back</p>")
        return page.replace("<body>", "<body>" + banner, 1)


class _WhatIfLogic:
    """The plugin's what-if, summary, metric view and re-run (a part of _PluginLogic).

    During a what-if ``self.book`` is a _WhatIfBook, so the column, the views and the tooltips
    show it; ``self.real_book`` is the saved classification's, which phy's save writes."""

    def _init_whatif(self):
        self._real_book = None
        self.metric_views = []
        self.summary_views = []
        self.run = None

    @property
    def real_book(self):
        return self._real_book if getattr(self, "_real_book", None) is not None else self.book

    @property
    def whatif_changes(self):
        return dict(self.book.classification.changes) if self._real_book is not None else {}

    def shown_classification(self):
        return self.book.classification if self.book.ok else None

    def _register_whatif_views(self, controller):
        controller.view_creator[METRIC_VIEW_NAME] = self._create_metric_view
        controller.view_creator[SUMMARY_VIEW_NAME] = self._create_summary_view

    def _create_metric_view(self):
        _define_phy_classes()
        return sys.modules[__name__].BombcellMetricView(self)

    def _create_summary_view(self):
        _define_phy_classes()
        return sys.modules[__name__].BombcellSummaryView(self)

    def _create_whatif_actions(self, actions):
        actions.separator()
        actions.add(self._action_bcset, name="what-if: set a parameter", alias="bcset",
                    prompt=True, n_args=2,
                    docstring="What-if: classify as if PARAM were VALUE (cumulative; negative "
                              "values as m0.01). Example: `maxRPVviolations 0.3`")
        actions.add(self._action_bcreset, name="what-if: back to the saved parameters",
                    alias="bcreset")
        actions.add(self._action_save_whatif, name="what-if: save the changed parameters",
                    alias="bcsave")
        actions.separator()
        actions.add(self._action_summary, name="bombcell summary", alias="bcsum")
        actions.add(self._action_metric_view, name="bombcell metric view", alias="bcplot")
        actions.separator()
        actions.add(self._action_rerun, name="re-run bombcell", alias="bcrun")
        actions.add(self._action_cancel_rerun, name="cancel the bombcell re-run", alias="bccancel")

    @_guarded("the :bcset snippet")
    def _action_bcset(self, param, value):
        """What-if: classify as if PARAM were VALUE (cumulative).  Example: `maxRPVviolations 0.3`"""
        self.set_whatif({str(param): _snippet_value(value)})

    @_guarded("the :bcreset snippet")
    def _action_bcreset(self):
        """Back to the saved parameters: the real labels and reasons."""
        self.reset_whatif()

    @_guarded("Save what-if parameters")
    def _action_save_whatif(self):
        """Write the what-if's changed parameters as JSON for bombcell's own run."""
        self.save_whatif_params()

    @_guarded("Bombcell summary")
    def _action_summary(self):
        """Counts per label; per criterion the units failing it and its sole blockers."""
        self.show_summary()

    @_guarded("Bombcell metric view")
    def _action_metric_view(self):
        """The distribution of the selected cluster's deciding metric, with its threshold."""
        self._show_dock(METRIC_VIEW_NAME)

    @_guarded("Re-run bombcell")
    def _action_rerun(self):
        """Run bombcell again on the saved clustering (in a separate process) and reload."""
        self.start_rerun()

    @_guarded("Cancel the bombcell re-run")
    def _action_cancel_rerun(self):
        """Stop a running re-run: the previous results stay."""
        self.cancel_rerun()

    # -- what-if ----------------------------------------------------------------------------------

    def set_whatif(self, changes):
        """Show the labels and reasons as if ``changes`` were bombcell's parameters (on top of
        the current what-if).  A bad parameter or value: one line, nothing changes."""
        real = self.real_book
        if not real.ok:
            self.say(f"bombcell what-if: no bombcell results ({real.error})", logging.WARNING)
            return None
        try:
            result = self.book.classification.what_if(changes)
        except BombcellReasonError as e:
            self.say(f"bombcell what-if: {e}", logging.WARNING)
            return None
        if result is real.classification:
            return self.reset_whatif()
        self._real_book = real
        self.book = _WhatIfBook(result, real)
        self._whatif_redraw()
        counts = ", ".join(f"{k} {v}" for k, v in label_counts(result.label).items())
        real_counts = ", ".join(f"{k} {v}" for k, v in label_counts(real.classification.label).items())
        self.say(f"WHAT-IF {whatif_changes_text(result)}: {counts} (saved: {real_counts}); "
                 f":bcreset to go back, :bcsave to keep the parameters for bombcell, :bcrun to "
                 f"re-run bombcell with them")
        return result

    def reset_whatif(self):
        """Back to the saved parameters (exactly the book that was shown before the what-if)."""
        if self._real_book is None:
            self.say("bombcell what-if: none active")
            return None
        self.book, self._real_book = self._real_book, None
        self._whatif_redraw()
        self.say(f"what-if ended: {self.summary()}")
        return self.book.classification

    def _whatif_redraw(self):
        self._refresh_tables()
        selected = self.controller.supervisor.selected
        for view in self.gui.list_views(VIEW_NAME) if self.gui is not None else ():
            view.show_selection(selected)
        self._redraw_whatif_views()

    def _redraw_whatif_views(self):
        for view in list(self.metric_views):
            view.plot()
        for view in list(self.summary_views):
            view.refresh()
        if self.concordance_views:  # against the labels now shown
            self.update_concordance()

    def save_whatif_params(self, path=None):
        changes = self.whatif_changes
        if not changes:
            self.say("bombcell what-if: no changed parameters to save (:bcset PARAM VALUE first)",
                     logging.WARNING)
            return None
        path = write_params_file(path or self.dataset_dir / WHATIF_PARAMS_NAME, changes)
        self.say(f"what-if parameters written to {path}: param.update(json.load(open(...))) before "
                 f"bombcell.run_bombcell, or Re-run bombcell now (it applies them)")
        return path

    # -- summary and metric view --------------------------------------------------------------

    def show_summary(self):
        view = self._show_dock(SUMMARY_VIEW_NAME)
        result = self.shown_classification()
        if result is not None:
            top = result.summary()["criteria"][0]
            self.say(f"bombcell summary: {self.summary()}; most blocking: {top['criterion']} "
                     f"({top['n_sole_blocker']} unit(s) would be GOOD without it)")
        return view

    def _show_dock(self, name):
        views = self.gui.list_views(name)
        view = views[0] if views else self.gui.create_and_add_view(name)
        dock = getattr(view, "dock", None)
        if dock is not None:
            dock.show()
            dock.raise_()
        return view

    # -- re-run -----------------------------------------------------------------------------------

    def start_rerun(self):
        """Run bombcell on the saved clustering in a child process (with the what-if's changes
        when one is active).  Refused while phy has unsaved changes or a run is going."""
        if self.run is not None and self.run.running:
            self.say("bombcell re-run: already running (Bombcell > Cancel the bombcell re-run)",
                     logging.WARNING)
            return None
        supervisor = self.controller.supervisor
        if supervisor.is_dirty():
            self.say("bombcell re-run refused: the clustering has unsaved changes; save it first "
                     "(Ctrl+S), so that bombcell runs on what you see", logging.WARNING)
            return None
        if not (self.dataset_dir / BOMBCELL_DIRNAME / PARAMS_FILE).exists():
            self.say(f"bombcell re-run: no saved bombcell parameters in "
                     f"{self.dataset_dir / BOMBCELL_DIRNAME}; run bombcell once first", logging.WARNING)
            return None
        _define_phy_classes()
        changes = self.whatif_changes
        self.run = sys.modules[__name__]._BombcellRun(self, changes)
        self.run.start()
        self.say("bombcell re-run started (separate process" + (
            f", with the what-if {whatif_changes_text(self.book.classification)}" if changes else
            ", saved parameters") + "); phy stays usable")
        return self.run

    def cancel_rerun(self):
        if self.run is None or not self.run.running:
            self.say("bombcell re-run: none running")
            return
        self.run.cancel()
        self.say("bombcell re-run: cancelling; the previous results stay")

    def rerun_finished(self, run, ok):
        if run is not self.run:
            return
        if not ok:
            run.cleanup()
            why = "cancelled" if run.cancelled else (run.lines[-1] if run.lines else "no output")
            self.say(f"bombcell re-run failed ({why[:200]}); previous results and "
                     f"{TSV_NAME} untouched", logging.WARNING)
            return
        if self._real_book is not None:  # the re-run applied the what-if: it is real now
            self.book, self._real_book = self._real_book, None
        # One refresh of each table (phy 2.1 sizes every cell at each change): bombcell's new
        # labels go into phy's memory first, then into the rows reload() refreshes.
        self._extra_rows = self._reload_bombcell_labels()
        try:
            self.reload()
        finally:
            self._extra_rows = None
        notes = [line[len("note: "):] for line in run.lines if line.startswith("note: ")]
        self.say("bombcell re-run done: " + self.summary() + (f"; {notes[0]}" if notes else ""))

    def _reload_bombcell_labels(self):
        """phy keeps bombcell's cluster_*.tsv labels in memory and writes them back on save:
        take the new ones (silently, outside the undo stack).  Returns {cluster_id: {field:
        value}} for the tables."""
        supervisor = self.controller.supervisor
        meta = supervisor.cluster_meta
        new = {}
        for field in meta.fields:
            path = self.dataset_dir / f"cluster_{field}.tsv"
            if field == COLUMN or not path.exists() or not field.startswith(("bc_",)) \
                    and field not in self.real_book.metric_columns():
                continue
            for cluster_id, value in read_cluster_tsv(path).items():  # ids written as 12.0
                try:
                    value = float(value) if field != UNIT_TYPE_COLUMN else value
                except ValueError:
                    pass
                new.setdefault(cluster_id, {})[field] = value
        if new:
            meta.from_dict(new)
        return new


# -- Bombcell vs my labels (the curator's labels against bombcell's, in phy) ---------------------
# The curator's labels are ``supervisor.cluster_meta``'s ``group`` field; phy 2.1 and 2.0b5 both
# announce a label change as the supervisor's ``cluster`` event with ``up.description ==
# "metadata_group"`` (ClusterMeta.set; undo/redo too), a merge or split as "merge"/"assign".  The
# view recomputes on those, debounced: the concordance (~3 ms for 2,000 units) in the GUI thread,
# the suggestions (bombcell's method, ~0.5 s for 2,000 labelled units) in a worker thread whose
# result is shown only if no newer labelling came in meanwhile.

CONCORDANCE_VIEW_NAME = "BombcellConcordanceView"
CONCORDANCE_DEBOUNCE_MS = 300  # labelling several clusters in a row recomputes once


def _curator_groups(supervisor):
    """The curator's labels now: {cluster_id: good/mua/noise} from cluster_meta's group field."""
    meta = supervisor.cluster_meta
    return curator_labels({int(c): meta.get("group", c) for c in supervisor.clustering.cluster_ids})


def concordance_html(info, rows, computing=False, min_units=SUGGEST_DEFAULTS["min_units_per_class"]):
    """The *Bombcell vs my labels* view: agreement, confusion counts, disagreements (links
    ``cluster:ID``), suggestions with *Try* (``try:PARAM``) and *Save suggestions* (``save:``)."""
    header = ""
    if info["what_if"]:
        header = ("<p style='color:#e0b040'><b>WHAT-IF " + _esc(", ".join(
            f"{k}={v}" for k, v in info["what_if"].items())) + "</b> (<a href='reset:'>back</a>)</p>")
    n = info["n_labelled"]
    if not n:
        return _html_page(header + "<p>No cluster labelled good, mua or noise yet (that bombcell "
                          "has a row for). Label clusters (alt+g, alt+m, alt+n): this view "
                          "compares your labels with bombcell's as you go.</p>")
    seen = sorted({b for row in info["confusion"].values() for b in row},
                  key=lambda b: (b not in AGREEING_GROUPS, b))
    cells = "".join(f"<th>{_esc(_short_label(b))}</th>" for b in seen)
    body = [header, f"<p><b>{info['n_agree']} of {n}</b> labelled units agree with bombcell "
                    f"({100 * info['agreement']:.0f}%)</p>",
            f"<table cellspacing=0 cellpadding=2><tr><th align=left>you</th>{cells}</tr>"]
    for g, row in info["confusion"].items():
        body.append(f"<tr><td>{g}</td>" + "".join(
            f"<td align=right>{row.get(b, 0) or '·'}</td>" for b in seen) + "</tr>")
    body.append("</table>")
    dis = info["disagreements"]
    if dis:
        body.append(f"<p><b>{len(dis)} disagreement(s)</b> (click to select): " + ", ".join(
            f"<a href='cluster:{d['cluster_id']}'>{d['cluster_id']}</a> {d['curator']}/"
            f"{_esc(_short_label(d['bombcell']))}" for d in dis) + "</p>")
    body.append("<p><b>Suggested thresholds</b> (bombcell's method)</p>")
    if rows is None:
        body.append("<p>computing…</p>" if computing else "<p>-</p>")
    else:
        suggested = [r for r in rows if r["status"] == "suggested"]
        for r in suggested:
            body.append(f"<p>{r['parameter']}: {r['current']:g} &rarr; <b>{r['suggested']:g}</b> "
                        f"(accuracy {r['accuracy_current']:.2f} &rarr; "
                        f"{r['accuracy_suggested']:.2f}) <a href='try:{r['parameter']}'>Try</a></p>")
        if suggested or info["what_if"]:
            body.append("<p><a href='save:'>Save suggestions</a>" + (" (with the what-if's "
                        "changes)" if info["what_if"] else "") + "</p>")
        needed = labels_needed(rows, min_units)
        if not suggested:
            body.append("<p>none" + (": too few labels for some thresholds" if needed else
                                     ": the thresholds fit your labels") + "</p>")
        others = [r for r in rows if r["status"] not in ("suggested", "too few labels")]
        if others:
            body.append("<p style='color:#999'>" + "; ".join(
                f"{r['parameter']} {_esc(r['status'])}" for r in others) + "</p>")
        if needed:
            body.append(f"<p style='color:#999'>too few labels (each threshold needs {min_units} "
                        f"on both sides): " + "; ".join(_esc(t) for t in needed) + "</p>")
    return _html_page("".join(body))


class _ConcordanceLogic:
    """The plugin's *Bombcell vs my labels* view and actions (a part of _PluginLogic)."""

    def _init_concordance(self):
        self.concordance_views = []
        self.concordance_info = None  # concordance() of the labels now
        self.suggestions = None  # suggest() rows of the labels now (None while computing)
        self._concordance_generation = 0
        self._suggest_worker = None
        # bombcell's min_units_per_class: labelled units needed on each side of a threshold
        self.suggest_min_units = SUGGEST_DEFAULTS["min_units_per_class"]

    def _register_concordance_view(self, controller):
        controller.view_creator[CONCORDANCE_VIEW_NAME] = self._create_concordance_view

    def _create_concordance_view(self):
        _define_phy_classes()
        return sys.modules[__name__].BombcellConcordanceView(self)

    def _create_concordance_actions(self, actions):
        actions.separator()
        actions.add(self._action_concordance, name="bombcell vs my labels", alias="bcvs")
        actions.add(self._action_try_suggestion, name="try a suggested threshold", alias="bctry",
                    prompt=True, n_args=1,
                    docstring="What-if with the suggested value of PARAM. Example: `maxRPVviolations`")
        actions.add(self._action_save_suggestions, name="save the suggested thresholds",
                    alias="bcsug")

    @_guarded("Bombcell vs my labels")
    def _action_concordance(self):
        """The curator's labels against bombcell's: disagreements and suggested thresholds."""
        self._show_dock(CONCORDANCE_VIEW_NAME)

    @_guarded("the :bctry snippet")
    def _action_try_suggestion(self, param):
        """What-if with a suggested threshold.  Example: `maxRPVviolations`"""
        self.try_suggestion(str(param))

    @_guarded("Save suggested thresholds")
    def _action_save_suggestions(self):
        """Write the suggested thresholds as JSON for bombcell's own run."""
        self.save_suggestions()

    def _connect_concordance(self, supervisor):
        self._connect(self._on_cluster_for_concordance, "cluster", supervisor)

    @_guarded("following your labels")
    def _on_cluster_for_concordance(self, sender, up):
        if self.concordance_views:
            self.schedule_concordance()

    def schedule_concordance(self):
        """Recompute after CONCORDANCE_DEBOUNCE_MS, once for a burst of label changes."""
        from phy.gui.qt import QTimer
        self._concordance_generation += 1
        generation = self._concordance_generation
        QTimer.singleShot(CONCORDANCE_DEBOUNCE_MS,
                          lambda: generation == self._concordance_generation
                          and self.update_concordance())

    @_guarded("comparing your labels with bombcell's")
    def update_concordance(self):
        """The concordance now; the suggestions in a worker thread (see the section comment)."""
        result = self.shown_classification()
        if result is None or self.controller is None:
            self.concordance_info, self.suggestions = None, None
            self._redraw_concordance_views()
            return
        labels = _curator_groups(self.controller.supervisor)
        self.concordance_info = concordance(result, labels)
        if result.route != "bombcell":  # suggest re-runs bombcell's rule table (see suggest)
            self.suggestions = []
            self._redraw_concordance_views()
            return
        self.suggestions = None
        self._concordance_generation += 1
        generation = self._concordance_generation
        import concurrent.futures
        if self._suggest_worker is None:
            self._suggest_worker = concurrent.futures.ThreadPoolExecutor(1)
        future = self._suggest_worker.submit(suggest, result, labels, self.suggest_min_units)
        self._redraw_concordance_views(computing=True)
        self._poll_suggestions(future, generation)

    @_guarded("suggesting thresholds")
    def _poll_suggestions(self, future, generation):
        from phy.gui.qt import QTimer
        if generation != self._concordance_generation:
            return  # newer labels: their own computation will show
        if not future.done():
            QTimer.singleShot(50, lambda: self._poll_suggestions(future, generation))
            return
        try:
            self.suggestions = future.result()
        except Exception as e:
            _report_exception("suggesting thresholds", e, self.gui)
            self.suggestions = []
        self._redraw_concordance_views()

    def _redraw_concordance_views(self, computing=False):
        for view in list(self.concordance_views):
            view.show_info(self.concordance_info, self.suggestions, computing,
                           self.suggest_min_units)

    def try_suggestion(self, param):
        """The suggestion for ``param`` as a what-if (:bcset), so the view shows who moves."""
        value = suggested_changes(self.suggestions or []).get(param)
        if value is None:
            self.say(f"bombcell vs my labels: no suggested value for {param}", logging.WARNING)
            return None
        return self.set_whatif({param: value})

    def save_suggestions(self, path=None):
        """The what-if's changes (a tried suggestion among them) and the thresholds still
        suggested on top of it, with the what-if's writer."""
        changes = dict(self.whatif_changes, **suggested_changes(self.suggestions or []))
        if not changes:
            self.say("bombcell vs my labels: no suggested threshold to save", logging.WARNING)
            return None
        path = write_params_file(path or self.dataset_dir / SUGGEST_PARAMS_NAME, changes)
        self.say(f"suggested parameters written to {path}: param.update(json.load(open(...))) "
                 f"before bombcell.run_bombcell")
        return path

    def _close_concordance(self):
        self._concordance_generation += 1  # pending timers and results: dropped
        self.concordance_views = []
        if self._suggest_worker is not None:
            self._suggest_worker.shutdown(wait=False)
            self._suggest_worker = None


# -- HTML (QTextBrowser's rich-text subset: tables, inline styles, a document stylesheet) --------
# Written for the view's width in phy's default layout (~260 px at 1920x1080; fits from 230 px
# up, tested): every line may wrap (long criterion names break at their spaces), only the short
# "0.23 > 0.1" cells do not, so the view never scrolls sideways nor asks the dock for more room.

_LABEL_COLORS = {"GOOD": "#86d16d", "MUA": "#e0b040", "NOISE": "#a0a0a0", UNCLASSIFIED: "#e07070"}
# Row styles: criteria deciding the label are red; any other status gets its own style, and a
# status without one (a new one) a neutral amber, never red.
_DECISIVE_STYLE = "background-color:#5a1d1d; color:#ffc0c0"
_STATUS_STYLES = {"fail": "color:#e0b040", "pass": "", "nan": "color:#777", "disabled": "color:#666"}
_OTHER_STATUS_STYLE = "color:#d8c080"
_CSS = """
body { background-color: #000; color: #ddd; font-size: 9pt; }
h3 { margin: 2px 0 2px 0; }
td, th { padding: 1px 2px 1px 2px; }
th { color: #aaa; text-align: left; font-weight: normal; }
.dim { color: #888; }
.full { color: #999; font-size: 8pt; font-weight: normal; line-height: 125%; }
.num { text-align: right; white-space: nowrap; }
.v { text-align: right; white-space: nowrap; font-size: 8pt; }
.head { color: #9cf; font-weight: bold; padding-top: 6px; }
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


def _row_style(status, decisive):
    if decisive:
        return _DECISIVE_STYLE
    return _STATUS_STYLES.get(status, _OTHER_STATUS_STYLE)


def _full_name(c):
    """``fractionRPVs_estimatedTauR > maxRPVviolations`` (spaces let it wrap)."""
    return criterion_name(c["metric"], c["op"], c["param"], sep=" ")


def _stage_text(stage):
    base, _, route = stage.partition(" ")
    names = {**ROUTE_NAMES, **SI_GROUP_NAMES}
    return f"{base}, {names[route]}" if route in names else stage


def _explanation_html(info):
    """One cluster: label, reason, then every criterion (deciding ones first, then the other
    failing ones, then the rest), each failing one with its full names, stage and margin."""
    label = info["label"] or NO_LABEL
    saved = info["bombcell_label"]
    out = [f"<h3>cluster {info['cluster_id']} &nbsp;"
           f"<span style='color:{_label_color(label)}'>{_esc(label)}</span></h3>",
           f"<p>{_esc(info['reason'])}<br><span class='dim'>bombcell's saved label: "
           f"{_esc(saved or NO_LABEL) if saved is not None else 'not saved'}</span></p>",
           "<table width='98%' cellspacing='0'>"]
    heads = {"decisive": "decides the label", "fail": "also fails, does not decide the label",
             "rest": "the other criteria"}
    current = None
    for c in ordered_criteria(info):
        decisive = c["decisive"]
        # A status other than fail (e.g. a failure bombcell keeps) goes with the rest, in its
        # own colour and with its name.
        group = "decisive" if decisive else ("fail" if c["status"] == "fail" else "rest")
        if group != current:
            out.append(f"<tr><td colspan='3' class='head'>{heads[group]}</td></tr>")
            current = group
        style = _row_style(c["status"], decisive)
        mark = "&#9733;" if decisive else ""
        name = _esc(criterion_name(c["short"], c["op"]))
        name = f"<b>{name}</b>" if group != "rest" else name
        compare = _esc(comparison_text(c["op"], c["value"], c["threshold"], c["status"]))
        status = "" if c["status"] in _STATUS_STYLES else f" {_esc(c['status'])}"
        out.append(f"<tr style='{style}'><td width='4%'>{mark}</td><td width='56%'>{name}</td>"
                   f"<td width='40%' class='num'>{compare}{status}</td></tr>")
        if group != "rest":
            margin = "" if c["margin"] is None else f" &middot; margin {_esc(_fmt_json(c['margin']))}"
            out.append(f"<tr style='{style}'><td></td><td colspan='2' class='full'>"
                       f"{_esc(_full_name(c))} &middot; {_esc(_stage_text(c['stage']))}{margin}"
                       f"</td></tr>")
    out.append("</table>")
    out.append("<p class='dim'>&#9733; red: decides the label &middot; margin: distance on the "
               "passing side</p>")
    if info["notes"]:
        out.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in info["notes"]) + "</ul>")
    return "".join(out)


def _comparison_html(cluster_ids, infos, reasons, n_more):
    """2-4 clusters side by side: one column per cluster; for every criterion that fails in any
    of them (deciding ones first), a title line (short name and threshold) across the columns,
    then each cluster's value; then each cluster's reason.  Narrow: no name column."""
    rows = {}  # criterion name -> decides the label of any of the clusters
    for info in infos:
        for c in info["criteria"] if info else ():
            if c["status"] not in ("pass", "nan", "disabled"):
                rows[c["name"]] = rows.get(c["name"], False) or c["decisive"]
    criteria = {c["name"]: c for info in infos if info for c in info["criteria"]}
    names = list(criteria)  # the rule table's order (each result has its own table)
    order = sorted(rows, key=lambda name: (not rows[name], names.index(name)))
    n = len(cluster_ids)
    colors = [_label_color(i["label"] if i else UNCLASSIFIED) for i in infos]
    # Cluster ids coloured by label; the labels themselves open each reason below.
    out = ["<table width='98%' cellspacing='0'><tr>" + "".join(
        f"<th class='v' style='color:{col}'>{c}</th>" for c, col in zip(cluster_ids, colors))
        + "</tr>"]
    for name in order:
        metric, op, short = criteria[name]["metric"], criteria[name]["op"], criteria[name]["short"]
        thresholds, cells = [], []
        for info in infos:
            c = next((c for c in info["criteria"] if c["name"] == name), None) if info else None
            if c is None:
                cells.append("<td class='v dim'>&ndash;</td>")
                continue
            if op == "isnan":
                value = format_number(_as_float(c["value"]))
            else:
                value, threshold = comparison_numbers(c["value"], c["threshold"])
                thresholds.append(threshold)
            cells.append(f"<td class='v' style='{_row_style(c['status'], c['decisive'])}'>"
                         f"{_esc(value)}</td>")
        full = criterion_name(metric, op, None if op == "isnan" else max(thresholds, key=len), " ")
        out.append(f"<tr><td colspan='{n}' class='head'>{_esc(short)} "
                   f"<br><span class='full'>{_esc(full)}</span></td></tr>"
                   f"<tr>{''.join(cells)}</tr>")
    out.append("</table>")
    out.append("<p class='dim'>" + ("No criterion fails for these clusters." if not order else
                                    "red: decides the label; every other criterion passes") + "</p>")
    out.extend(f"<p><b>{c}</b> {_esc(r)}</p>" for c, r in zip(cluster_ids, reasons))
    if n_more:
        out.append(f"<p class='dim'>+{n_more} more selected clusters not shown</p>")
    return "".join(out)


def _short_label(label):
    return {"NON-SOMA GOOD": "NS GOOD", "NON-SOMA MUA": "NS MUA", UNCLASSIFIED: "?"}.get(
        label, label or NO_LABEL)


def _unclassified_html(cluster_id, reason):
    hint = ("bombcell only judged the clusters that existed when it ran. Save, re-run bombcell "
            "on this dataset, then use Bombcell &gt; Reload bombcell results.")
    return (f"<h3>cluster {cluster_id} &nbsp;<span style='color:{_label_color(UNCLASSIFIED)}'>"
            f"{UNCLASSIFIED}</span></h3><p>{_esc(reason)}</p><p class='dim'>{hint}</p>")


def _problem_html(error, no_results):
    """The view when bombcell's results cannot be used: what is wrong and how to fix it."""
    run = ("<p>To explain the labels, run bombcell on this dataset (in Python: "
           "<code>import bombcell as bc; param = bc.get_default_parameters(ks_dir); "
           "bc.run_bombcell(ks_dir, ks_dir / 'bombcell', param)</code>), then use Bombcell &gt; "
           "Reload bombcell results. phy itself works as usual.</p>")
    if no_results:
        return f"<h3>No bombcell results</h3><p class='dim'>{_esc(error)}</p>{run}"
    return (f"<h3 style='color:{_label_color(UNCLASSIFIED)}'>bombcell results unusable</h3>"
            f"<p>{_esc(error)}</p>{run}")


# Widths (px) of the cluster view and of the reason view on the first open: the cluster view
# shows id, the reason, fr and n_spikes; the reason view's HTML fits ~230 px and more.  Qt
# stops short of these (the views between reach their minimum widths): ~520 and ~260 px.
FIRST_OPEN_WIDTHS = (580, 270)
FIRST_OPEN_SIZING_SECONDS = 5
# Not Alt+B (the Bombcell menu's mnemonic) nor any of phy's own shortcuts.
SHOW_CRITERIA_SHORTCUT = "ctrl+alt+b"


# -- the plugin -------------------------------------------------------------------------------


class _PluginLogic(_WhatIfLogic, _ConcordanceLogic):
    """Everything ``BombcellReasonPlugin`` does; the phy class adds only ``IPlugin`` (phy is
    imported lazily, see ``_define_phy_classes``)."""

    def attach_to_controller(self, controller):
        """Called by phy after the model is loaded and before the supervisor is created."""
        self.controller = controller
        controller.bombcell_reason = self  # for the IPython view, other plugins and tests
        self.gui = None
        self.view = None
        self.actions = None
        self.shown_raw_metrics = []
        self._raw_metric_columns = []
        self._startup_message = None
        self._reason_failed = False
        self.book = ReasonBook(error="bombcell reasons not loaded yet")
        self._init_whatif()
        self._init_concordance()
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
        self.book = self._load_book(previous)
        if self.book.ok:  # a problem is said once, in the status bar, when the GUI is ready
            logger.debug("bombcell reasons: read %s", self.book.classification.source)

        # Our column first among the metrics, so that it follows the id column.
        metrics = controller.cluster_metrics
        others = {k: v for k, v in metrics.items() if k != COLUMN}
        others.pop(N_FAILING_COLUMN, None)
        metrics.clear()
        metrics[COLUMN] = self.reason
        metrics[N_FAILING_COLUMN] = self.n_failing
        metrics.update(others)

        # In View > Add view.  Shown by default: added once in _on_gui_ready (phy's first start
        # copies its own default state.json, whose view_count would ignore default_views).
        controller.view_creator[VIEW_NAME] = self._create_view
        self._register_whatif_views(controller)
        self._register_concordance_view(controller)

    def _load_book(self, previous=None):
        book = ReasonBook.load(self.dataset_dir, previous=previous)
        book.no_results = not book.ok and not (self.dataset_dir / BOMBCELL_DIRNAME).exists()
        return book

    # -- the columns ------------------------------------------------------------------------------

    def reason(self, cluster_id):
        """The column's value (phy calls this for every row it builds)."""
        try:
            return self.book.reason(cluster_id)
        except Exception as e:
            if not self._reason_failed:  # once, not once per row
                self._reason_failed = True
                _report_exception("computing the reason column", e, self.gui)
            return unclassified_reason(f"plugin error: {_one_line(e)}")

    def n_failing(self, cluster_id):
        """The bc_nFailing column: how many criteria fail (blank without a bombcell row)."""
        try:
            return self.book.n_failing(cluster_id)
        except Exception as e:
            if not self._reason_failed:
                self._reason_failed = True
                _report_exception("computing the bc_nFailing column", e, self.gui)
            return None

    # -- controller events ------------------------------------------------------------------------

    @_guarded("setting up the cluster view")
    def _on_controller_ready(self, sender):
        supervisor = self.controller.supervisor
        self.book.check_clusters(supervisor.clustering.cluster_ids, prune=True)
        # Column order (see FIRST_COLUMNS), then phy's other columns and the other labels.
        first = [c for c in FIRST_COLUMNS if c in supervisor.columns]
        supervisor.columns[:] = first + [c for c in supervisor.columns if c not in first]
        # The raw metric columns are hidden by leaving them out of the views (see
        # set_raw_metrics_shown), decided before phy builds the tables.
        metrics = self.book.metric_columns()
        self._raw_metric_columns = [c for c in supervisor.columns if c in metrics]
        state = self._saved_state()
        shown = state.get("raw_metric_columns")
        if not isinstance(shown, list):  # older state: one switch for all
            shown = list(self._raw_metric_columns) if state.get("show_raw_metrics") is True else []
        self.shown_raw_metrics = [c for c in self._raw_metric_columns if c in shown]
        supervisor.columns[:] = [c for c in supervisor.columns
                                 if c not in metrics or c in self.shown_raw_metrics]
        self._connect(self._on_cluster, "cluster", supervisor)
        self._connect_concordance(supervisor)
        self._connect(self._on_save_clustering, "save_clustering", supervisor)
        self._connect(self._on_table_pre_build, "pre_build", None)  # every table (phy 2.0)
        self._write_tsv_if_stale()

    @_guarded("preparing phy's table")
    def _on_table_pre_build(self, sender):
        _prepare_html_table(sender, self._full_reasons_json)

    def _full_reasons_json(self):
        """{cluster id: reason with full criterion names} as JSON, once per book (phy 2.0)."""
        import json
        book = self.book
        if getattr(self, "_full_reasons", (None,))[0] is not book:
            ids = [int(c) for c in (book.classification.cluster_ids if book.ok else ())]
            text = json.dumps({c: book.full_reason(c) for c in ids})
            self._full_reasons = (book, text.replace("</", "<\\/"))  # safe inside <script>
        return self._full_reasons[1]

    @_guarded("following a clustering change")
    def _on_cluster(self, sender, up):
        self.book.record(up)
        if self.real_book is not self.book:  # a what-if: the real book learns it too
            self.real_book.record(up)

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
            self._connect(self._on_first_show, "show", gui)
        if self.book.ok or gui.list_views(VIEW_NAME):
            state["view_added_once"] = True
        state["raw_metric_columns"] = list(self.shown_raw_metrics)
        gui.state[PLUGIN_NAME] = state
        self._install_tooltips()
        self.say(self._startup_message or self.summary(),
                 logging.INFO if self.book.ok else logging.WARNING)

    @_guarded("sizing the views on the first open")
    def _on_first_show(self, sender):
        """On the first open with the plugin (phy's saved layout knows nothing of the reason
        view), after phy restored its layout: widths that fit the column and the view, set
        again when the window is resized (maximised) in the first seconds."""
        from phylib.utils import unconnect
        from phy.gui.qt import QTimer
        unconnect(self._on_first_show)
        self._sizer = _define_phy_classes()[3](self.gui, self._size_docks)
        QTimer.singleShot(0, self._size_docks)
        QTimer.singleShot(int(FIRST_OPEN_SIZING_SECONDS * 1000), self._stop_sizing)

    def _stop_sizing(self):
        sizer, self._sizer = getattr(self, "_sizer", None), None
        try:
            if sizer is not None:
                sizer.stop()
        except RuntimeError:  # the GUI (and the sizer with it) was closed already
            pass

    @_guarded("sizing the views on the first open")
    def _size_docks(self):
        from phy.gui.qt import Qt
        gui = self.gui
        if gui is None or getattr(gui, "_closed", False) or not gui.isVisible():
            return
        docks = [(getattr(v, "dock", None), width) for views, width in (
            (gui.list_views("ClusterView"), FIRST_OPEN_WIDTHS[0]),
            (gui.list_views(VIEW_NAME), FIRST_OPEN_WIDTHS[1])) for v in views[:1]]
        # One dock at a time, twice: Qt moves each separator only part of the way when the
        # views between have little room to give.
        for dock, width in [(d, w) for d, w in docks if d is not None] * 2:
            gui.resizeDocks([dock], [width], Qt.Horizontal)

    @_guarded("closing")
    def _on_gui_close(self, sender):
        state = self.gui.state.get(PLUGIN_NAME, None) or {}
        state["raw_metric_columns"] = list(self.shown_raw_metrics)
        self.gui.state[PLUGIN_NAME] = state
        # The GUI's handlers go; the controller's stay (a controller may get another GUI).
        from phylib.utils import unconnect
        unconnect(self._on_gui_close, self._on_table_pre_build)
        self._stop_sizing()
        self._close_concordance()
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
        if not book.ok and book.no_results:
            return (f"bombcell reasons: no bombcell results folder {self.dataset_dir / BOMBCELL_DIRNAME}; "
                    f"run bombcell on this dataset, then Bombcell > Reload bombcell results")
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
        book = self.real_book  # never a what-if's reasons
        if not book.ok:
            self.say(f"bombcell reasons: {TSV_NAME} not written: {book.error}", logging.WARNING)
            return None
        path = write_reason_tsv(self.dataset_dir, book.reasons(self._cluster_ids()))
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
        """New values of our columns in both tables (``Table.change``, rows by id)."""
        supervisor = self.controller.supervisor
        extra = getattr(self, "_extra_rows", None) or {}  # bombcell's labels after a re-run
        rows = [dict(extra.get(c, {}), id=c, **{COLUMN: self.reason(c),
                                                  N_FAILING_COLUMN: self.n_failing(c)})
                for c in self._cluster_ids()]
        for view in (supervisor.cluster_view, supervisor.similarity_view):
            view.change(rows)
            _set_html_full_reasons(view, self._full_reasons_json)

    def _install_tooltips(self):
        """The reason with full criterion names as the tooltip of the column's cells (phy 2.1's
        native Qt table: ``table_view`` and the row under the mouse)."""
        cls = _define_phy_classes()[2]
        supervisor = self.controller.supervisor
        self._tooltips = [cls(self, table) for table in (supervisor.cluster_view,
                                                          supervisor.similarity_view)
                          if hasattr(table, "table_view")]  # phy 2.0: a title (_prepare_html_table)

    def tooltip(self, table, pos):
        """Text of the tooltip at ``pos`` (viewport coordinates) of a table, or None."""
        index = table.table_view.indexAt(pos)
        if not index.isValid() or table.columns[index.column()] != COLUMN:
            return None
        cluster_id = index.sibling(index.row(), table.columns.index("id")).data()
        return None if cluster_id is None else self.book.full_reason(int(cluster_id))

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
        import functools
        self.actions = actions = Actions(gui, name="Bombcell", menu="&Bombcell",
                                         insert_menu_before="&Help")
        # Alt+B opens the menu (its mnemonic): the view gets a shortcut of its own, which
        # tests/test_phy_plugin.py checks against every action and menu of phy's GUI.
        actions.add(self._action_show_criteria, name="show_criteria_of_selected_cluster",
                    shortcut=SHOW_CRITERIA_SHORTCUT, alias="bcs")
        actions.add(self._action_select, name="select_cluster_and_show_criteria", alias="bc",
                    prompt=True, n_args=1)
        actions.separator()
        actions.add(self._action_export, name="export_reasons_TSV_now", alias="bce")
        actions.add(self._action_reload, name="reload_bombcell_results", alias="bcr")
        submenu = "Raw bombcell metric columns"
        actions.add(self._action_show_all_metrics, name="show_all_raw_metric_columns",
                    alias="bcm", submenu=submenu)
        actions.add(self._action_hide_all_metrics, name="hide_all_raw_metric_columns",
                    alias="bch", submenu=submenu)
        for metric in self._raw_metric_columns:
            name = f"raw_metric_column_{metric}"
            actions.add(functools.partial(self._action_toggle_metric, metric), name=name,
                        alias=f"bcm_{metric}", submenu=submenu, checkable=True,
                        checked=metric in self.shown_raw_metrics, show_shortcut=False,
                        docstring=f"Show or hide the {metric} column (from bombcell's "
                                  f"cluster_{metric}.tsv)")
            actions.get(name).setText(metric)
        self._create_whatif_actions(actions)
        self._create_concordance_actions(actions)

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

    @_guarded("Show all raw metric columns")
    def _action_show_all_metrics(self):
        """Show every cluster_<metric>.tsv column that bombcell writes for phy."""
        self.set_raw_metrics_shown(self._raw_metric_columns)

    @_guarded("Hide all raw metric columns")
    def _action_hide_all_metrics(self):
        """Hide every raw bombcell metric column."""
        self.set_raw_metrics_shown([])

    @_guarded("Show/hide a raw metric column")
    def _action_toggle_metric(self, metric, checked):
        shown = [c for c in self.shown_raw_metrics if c != metric] + ([metric] if checked else [])
        self.set_raw_metrics_shown(shown)

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
        changes = self.whatif_changes
        if changes:  # reload the real results, then show the same what-if on them
            self.book, self._real_book = self._real_book, None
        old = self.book
        book = self._load_book()
        book.adopt_origins(old)
        book.check_clusters(self._cluster_ids())
        self.book = book
        self._refresh_tables()
        for view in self.gui.list_views(VIEW_NAME) if self.gui is not None else ():
            view.show_selection(self.controller.supervisor.selected)
        if book.ok:
            self._startup_message = None
            self._write_tsv_if_stale()
            self.say(f"reloaded: {changes_text(old, book, self._cluster_ids())}; {self.summary()}")
        else:
            self.say(f"reload: bombcell reasons unavailable: {book.error}", logging.WARNING)
        if changes and book.ok:
            self.set_whatif(changes)
        self._redraw_whatif_views()

    def set_raw_metrics_shown(self, shown):
        """Show exactly the raw bombcell metric columns in ``shown`` (remembered in phy's GUI
        state).  Hidden columns are left out of the views, not just narrowed: phy 2.1's table
        sizes every cell of every column to its contents in Python, so ~20 fewer columns halve
        the time phy takes to open 3,000 clusters.  (Sorting or filtering by a metric needs it
        shown.)"""
        raw = self._raw_metric_columns
        shown = [c for c in raw if c in set(shown)]
        supervisor = self.controller.supervisor
        columns = [c for c in supervisor.columns if c not in raw] + shown
        changed = columns != list(supervisor.columns)
        supervisor.columns[:] = columns
        self.shown_raw_metrics = shown
        if self.gui is not None:
            state = self.gui.state.get(PLUGIN_NAME, None) or {}
            state["raw_metric_columns"] = list(shown)
            self.gui.state[PLUGIN_NAME] = state
        for metric in raw:
            action = self.actions.get(f"raw_metric_column_{metric}") if self.actions else None
            if action is not None and action.isChecked() != (metric in shown):
                action.blockSignals(True)
                action.setChecked(metric in shown)
                action.blockSignals(False)
        if changed:
            self._rebuild_tables()
        self.say(f"bombcell reasons: {len(shown)} of {len(raw)} raw bombcell metric columns shown")

    def set_show_raw_metrics(self, show):
        """Show or hide all the raw bombcell metric columns."""
        self.set_raw_metrics_shown(self._raw_metric_columns if show else [])


def changes_text(old, new, cluster_ids, limit=6):
    """What a reload changed: ``3 units changed label: 12 MUA->GOOD, ...; 5 reasons changed``."""
    changed = [(c, old.label_of(c), new.label_of(c)) for c in (int(c) for c in cluster_ids)
               if old.label_of(c) != new.label_of(c)]
    reasons = sum(old.reason(c) != new.reason(c) for c in (int(c) for c in cluster_ids))
    if not changed:
        text = "no unit changed label"
    else:
        listed = ", ".join(f"{c} {a}->{b}" for c, a, b in changed[:limit])
        more = f", ... (+{len(changed) - limit})" if len(changed) > limit else ""
        text = f"{len(changed)} unit{'s' if len(changed) != 1 else ''} changed label: {listed}{more}"
    other = reasons - len(changed)
    return text + (f"; {other} other reason{'s' if other != 1 else ''} changed" if other > 0 else "")


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


# phy 2.0's HTML table is laid out by the browser: squeezed into the view, every cell of every
# column wraps at its spaces, and the reason would take 3-6 lines in a ~40 px column.  On one
# line it is ~250 px: id, the reason, fr and n_spikes still fit the cluster view (as in phy 2.1).
# The tooltip with the full criterion names is the cell's ``title``, set when the mouse comes
# over it from a map {cluster id: full reason} in the page (a new cluster's cell: its text).
_HTML_MARK = "/* phy-bc-reason */"
_HTML_STYLE = "<style>%s #table td.%s { white-space: nowrap; }</style>" % (_HTML_MARK, COLUMN)
_HTML_TOOLTIP_SCRIPT = """<script>%s
var bcFullReasons = %%s;
document.addEventListener("mouseover", function (e) {
  var cell = e.target.closest ? e.target.closest("td.%s") : null;
  if (cell) cell.title = bcFullReasons[getId(cell)] || cell.textContent;
});
</script>""" % (_HTML_MARK, COLUMN)


def _prepare_html_table(view, full_reasons_json):
    """phy 2.0, before phy (re)builds a table page (its ``pre_build`` event, which phy 2.1's Qt
    table emits too): our style and tooltip script in the page's header, replacing those of the
    previous build.  ``full_reasons_json()`` gives the map."""
    if not _html_table(view) or COLUMN not in (getattr(view, "columns", None) or ()):
        return
    headers = view.builder.headers
    headers[:] = [h for h in headers if _HTML_MARK not in h]
    headers += [_HTML_STYLE, _HTML_TOOLTIP_SCRIPT % full_reasons_json()]


def _set_html_full_reasons(view, full_reasons_json):
    """phy 2.0: a new map of full reasons in a built page (after a reload)."""
    if _html_table(view):
        view.eval_js("bcFullReasons = %s;" % full_reasons_json())


# -- the metric view, the summary and the re-run, as phy shows them ----------------------------
# phy APIs used here, the same in phy 2.0b5 and 2.1 (tests run in both): ``ManualClusteringView``
# (phy/cluster/views/base.py, as phy's HistogramView) with ``HistogramVisual``, ``LineVisual`` and
# ``TextVisual`` on its stacked canvas, ``selected_cluster_color``, its ``status``/dock status and
# view menu (``Actions.add(view_submenu=...)``); ``supervisor.is_dirty()`` (unsaved changes);
# ``cluster_meta.from_dict`` (bombcell's labels after a re-run, outside the undo stack); Qt's
# ``QProcess`` for the child process, so that phy's event loop only reads its output.

METRIC_VIEW_NAME = "BombcellMetricView"
SUMMARY_VIEW_NAME = "BombcellSummaryView"
_FAIL_COLOR, _PASS_COLOR, _THRESHOLD_COLOR = (0.85, 0.3, 0.3, 1.0), (0.55, 0.55, 0.55, 1.0), (1.0, 1.0, 1.0, 1.0)


def default_rule_index(result, cluster_ids, previous=None):
    """The criterion the metric view shows for a selection: the first selected cluster's deciding
    criterion, else its first failing one, else ``previous``, else the criterion that blocks the
    most units."""
    for cluster_id in list(cluster_ids)[:1]:
        unit = result.row(cluster_id)
        if unit is None:
            continue
        for mask in (result.decisive[:, unit], result.fails[:, unit]):
            if mask.any():
                return int(np.flatnonzero(mask)[0])
    if previous is not None:
        return previous
    blockers = sole_blockers(result).sum(axis=1) + result.fails.sum(axis=1) * 1e-6
    return int(np.argmax(blockers))


def metric_plot(result, rule_index, cluster_ids, n_bins=60):
    """What the metric view draws for one criterion: the histogram of its metric over every
    labelled unit (failing units apart, values beyond the 1st/99th percentile in the edge bins),
    the threshold and the selected clusters' values, and the dock status line."""
    rule = RULES[rule_index]
    labelled = ~np.isnan(result.codes)
    values = result.values[rule_index, labelled]
    fails = result.fails[rule_index, labelled]
    finite = np.isfinite(values)
    threshold = float(result.thresholds[rule_index])
    enabled = bool((result.status[rule_index] != _DISABLED).any())
    selected = []
    for cluster_id in cluster_ids:
        unit = result.row(cluster_id)
        if unit is not None:
            selected.append((int(cluster_id), float(result.values[rule_index, unit]),
                             STATUSES[result.status[rule_index, unit]]))
    if finite.any():
        lo, hi = np.quantile(values[finite], [0.01, 0.99])
    else:
        lo, hi = 0.0, 1.0
    marks = [threshold] if np.isfinite(threshold) and rule.op != "isnan" else []
    marks += [v for _, v, _ in selected if np.isfinite(v)]
    lo, hi = min([lo] + marks), max([hi] + marks)
    if hi <= lo:
        lo, hi = lo - max(1.0, abs(lo) * 0.1), hi + max(1.0, abs(hi) * 0.1)
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    clipped = np.clip(values[finite], lo, hi)
    hist_fail, edges = np.histogram(clipped[fails[finite]], bins=n_bins, range=(lo, hi))
    hist_pass, _ = np.histogram(clipped[~fails[finite]], bins=n_bins, range=(lo, hi))
    crit = rule.name if rule.op == "isnan" else f"{rule.metric} {rule.op} {rule.param} = {format_number(threshold)}"
    parts = [crit + ("" if enabled else " (off)")]
    parts += [f"cluster {c}: {format_number(v)} ({s})" for c, v, s in selected[:2]]
    if result.changes:
        parts.append("WHAT-IF")
    return {"rule": rule, "lo": float(lo), "hi": float(hi), "hist_fail": hist_fail,
            "hist_pass": hist_pass, "ylim": float(max(1, (hist_fail + hist_pass).max())),
            "threshold": threshold if marks[:1] == [threshold] else None,
            "selected": selected, "n_nan": int((~finite).sum()), "status": "; ".join(parts)}


def summary_html(result):
    """The *Bombcell summary* as HTML for the summary view (the CLI's table, monospace)."""
    header = whatif_header(result)
    text = format_summary(result.summary())
    body = (f"<p style='color:#e0b040'><b>{_esc(header)}</b></p>" if header else "")
    return _html_page(body + f"<pre style='font-size:9pt'>{_esc(text)}</pre>")


def rerun_command(dataset_dir, changes=None):
    """The child process of phy's *Re-run bombcell*: this file run as a script (bombcell is never
    imported in phy's own process)."""
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "rerun", str(dataset_dir)]
    for key, value in (changes or {}).items():
        cmd += ["--set", f"{key}={_param_text(value)}"]
    return cmd


def _snippet_value(value):
    """A value typed in a phy snippet.  phy's snippet parser reads "-" as a range (``1-5``), so a
    negative value is typed with a leading ``m``: ``m0.01`` is -0.01, ``minf`` is -inf."""
    if isinstance(value, str) and value[:1] == "m" and value[1:].replace(".", "", 1).isdigit() \
            or value == "minf":
        return "-" + value[1:]
    return value


def _init_text_view(view, plugin):
    """What the plugin's text dock views (QTextBrowser) share: black like phy's views,
    read-only, links handled by the view rather than followed."""
    view.plugin = plugin
    view.setReadOnly(True)
    view.setOpenLinks(False)
    view.setStyleSheet("QTextBrowser { background-color: black; color: #ddd; border: 0; }")


class _NarrowDockHints:
    """Size hints for a text dock view (mixed in before QTextBrowser): about what the reason
    view gets in phy's default layout at 1920x1080 (FIRST_OPEN_WIDTHS).  The HTML fits or wraps
    to it, so a dock neither grows on new content nor pushes the window past the screen."""

    def sizeHint(self):
        from PyQt5.QtCore import QSize
        return QSize(FIRST_OPEN_WIDTHS[1], 400)

    def minimumSizeHint(self):
        from PyQt5.QtCore import QSize
        return QSize(120, 80)


def _define_whatif_classes(module):
    """The phy/Qt classes of the what-if, summary and re-run features (called by
    _define_phy_classes): ``BombcellMetricView``, ``BombcellSummaryView``, ``_BombcellRun``."""
    from functools import partial

    from phy.cluster.views.base import ManualClusteringView
    from phy.plot.visuals import HistogramVisual, LineVisual, TextVisual
    from phy.utils.color import selected_cluster_color
    from PyQt5.QtCore import QProcess, QProcessEnvironment
    from PyQt5.QtWidgets import QTextBrowser

    class BombcellMetricView(ManualClusteringView):
        """The distribution of one bombcell metric over all units, failing units in red, with
        the threshold (white) and the selected clusters (their selection colours).  Follows the
        selection: the first selected cluster's deciding criterion, unless one is picked in the
        view's menu."""
        _default_position = "right"
        n_bins = 60
        _state_attrs = ("n_bins",)

        def __init__(self, plugin):
            super().__init__()
            self.plugin = plugin
            self.state_attrs += self._state_attrs
            self.rule_index = None  # what is drawn
            self.pinned = None  # a criterion picked in the menu (None: follow the selection)
            self.data = None
            self.canvas.set_layout(layout="stacked", n_plots=1)
            self.canvas.enable_axes()
            self.hist_visual = HistogramVisual()
            self.canvas.add_visual(self.hist_visual)
            self.line_visual = LineVisual()
            self.canvas.add_visual(self.line_visual)
            self.text_visual = TextVisual(color=(1.0, 1.0, 1.0, 1.0))
            self.canvas.add_visual(self.text_visual)

        def attach(self, gui):
            super().attach(gui)
            self.actions.add(self.follow_selection, name="follow the selection")
            self.actions.separator()
            for i, rule in enumerate(RULES):
                if rule.op == "isnan":
                    continue
                self.actions.add(partial(self.set_criterion, i), name=f"show {rule.name}",
                                 alias=f"_bcmetric{i}", view_submenu="Criterion",
                                 docstring=f"Show {rule.metric} and {rule.param}", show_shortcut=False)
            self.plugin.metric_views.append(self)
            self.on_select(cluster_ids=list(self.plugin.controller.supervisor.selected))

        def on_select(self, cluster_ids=None, **kwargs):
            self.cluster_ids = list(cluster_ids or ())
            try:
                self.plot()
            except Exception as e:  # a view must never break phy's selection
                _report_exception("drawing the Bombcell metric view", e, self.plugin.gui)

        def follow_selection(self):
            """Show the selected cluster's deciding criterion (the default)."""
            self.pinned = None
            self.plot()

        def set_criterion(self, rule_index):
            """Show this criterion whatever the selection."""
            self.pinned = int(rule_index)
            self.plot()

        def plot(self, **kwargs):
            result = self.plugin.shown_classification()
            if result is None:
                self.data = None
                return
            if self.pinned is not None:
                self.rule_index = self.pinned
            else:
                self.rule_index = default_rule_index(result, self.cluster_ids, self.rule_index)
            data = self.data = metric_plot(result, self.rule_index, self.cluster_ids, self.n_bins)
            lo, hi, ylim = data["lo"], data["hi"], data["ylim"]
            self.data_bounds = (lo, 0, hi, ylim)
            self.canvas.stacked.n_boxes = 1
            self.hist_visual.reset_batch()
            self.hist_visual.add_batch_data(hist=data["hist_pass"], ylim=ylim, color=_PASS_COLOR,
                                            box_index=0)
            self.hist_visual.add_batch_data(hist=data["hist_fail"], ylim=ylim, color=_FAIL_COLOR,
                                            box_index=0)
            lines, colors = [], []
            if data["threshold"] is not None:
                lines.append([data["threshold"], 0, data["threshold"], ylim])
                colors.append(_THRESHOLD_COLOR)
            for k, (_, value, _) in enumerate(data["selected"]):
                if np.isfinite(value):
                    lines.append([value, 0, value, ylim * 0.9])
                    colors.append(tuple(selected_cluster_color(k)))
            self.line_visual.reset_batch()
            if lines:
                self.line_visual.add_batch_data(pos=np.array(lines, dtype=float),
                                                color=np.array(colors), data_bounds=self.data_bounds,
                                                box_index=0)
            else:  # an empty batch: a line of no length, out of sight
                self.line_visual.add_batch_data(pos=np.zeros((1, 4)), color=(0, 0, 0, 0),
                                                box_index=0)
            rule = data["rule"]
            title = f"{rule.metric}" + (f"  ({data['n_nan']} NaN not shown)" if data["n_nan"] else "")
            if self.plugin.shown_classification().changes:
                title += "  WHAT-IF"
            self.text_visual.reset_batch()
            self.text_visual.add_batch_data(text=[title], pos=[(-0.97, 0.97)], anchor=[(1, -1)],
                                            box_index=0)
            self.canvas.update_visual(self.hist_visual)
            self.canvas.update_visual(self.line_visual)
            self.canvas.update_visual(self.text_visual)
            self._update_axes()
            self.canvas.update()
            self.update_status()

        @property
        def status(self):
            return self.data["status"] if self.data else "no bombcell results"

        def on_close_view(self, *args):
            if self in self.plugin.metric_views:
                self.plugin.metric_views.remove(self)

    class BombcellSummaryView(QTextBrowser):
        """Counts per label, and per criterion the units failing it and its sole blockers."""

        def __init__(self, plugin):
            super().__init__()
            _init_text_view(self, plugin)
            self.setLineWrapMode(QTextBrowser.NoWrap)

        def attach(self, gui):
            gui.add_view(self, position="right")
            self.plugin.summary_views.append(self)
            self.refresh()

        def refresh(self):
            result = self.plugin.shown_classification()
            if result is None:
                self.setHtml(_html_page(f"<p>{_esc(self.plugin.summary())}</p>"))
                return
            self.setHtml(summary_html(result))
            dock = getattr(self, "dock", None)
            if dock is not None:
                dock.set_status("WHAT-IF: " + whatif_changes_text(result) if result.changes
                                else "saved parameters")

    class _BombcellRun:
        """bombcell in a child process (QProcess: phy's event loop only reads its output),
        progress in the status bar, reload on success; see rerun_bombcell."""

        def __init__(self, plugin, changes):
            self.plugin = plugin
            self.changes = dict(changes)
            self.dataset_dir = plugin.dataset_dir
            self.process = QProcess()
            self.process.setProcessChannelMode(QProcess.MergedChannels)
            env = QProcessEnvironment.systemEnvironment()
            env.insert("PYTHONIOENCODING", "utf-8")
            env.insert("MPLBACKEND", "Agg")
            self.process.setProcessEnvironment(env)
            self.process.readyRead.connect(self._on_output)
            self.process.finished.connect(self._on_finished)
            self.lines = []
            self.pid = None
            self.cancelled = False

        def start(self):
            cmd = rerun_command(self.dataset_dir, self.changes)
            self.process.start(cmd[0], cmd[1:])
            self.pid = int(self.process.processId() or 0) or None

        @property
        def running(self):
            return self.process.state() != QProcess.NotRunning

        def cancel(self):
            self.cancelled = True
            self.process.terminate()  # the child ignores it while it swaps folders (install_rerun)

        def _on_output(self):
            try:
                text = bytes(self.process.readAll()).decode("utf-8", "replace")
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                if lines:
                    self.lines = (self.lines + lines)[-200:]
                    self.plugin.say(f"bombcell re-run: {lines[-1][:150]}")
            except Exception as e:
                _report_exception("reading bombcell's output", e, self.plugin.gui)

        def _on_finished(self, exit_code, exit_status=None):
            try:
                self._on_output()
                self.plugin.rerun_finished(self, exit_code == 0 and RERUN_DONE in self.lines
                                           and not self.cancelled)
            except Exception as e:
                _report_exception("finishing the bombcell re-run", e, self.plugin.gui)

        def cleanup(self):
            """Remove the new folder of a failed or cancelled run (the child cannot when killed)."""
            import shutil
            if self.pid:
                shutil.rmtree(Path(self.dataset_dir) / f"{RERUN_PREFIX}{self.pid}", ignore_errors=True)

    for cls in (BombcellMetricView, BombcellSummaryView, _BombcellRun):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
    module.BombcellMetricView = BombcellMetricView
    module.BombcellSummaryView = BombcellSummaryView
    module._BombcellRun = _BombcellRun


def _define_concordance_classes(module):
    """The phy/Qt class of *Bombcell vs my labels*: ``BombcellConcordanceView`` (a QTextBrowser,
    links handled by ``anchorClicked``)."""
    from PyQt5.QtWidgets import QTextBrowser

    class BombcellConcordanceView(_NarrowDockHints, QTextBrowser):
        """The curator's labels against bombcell's: agreement, disagreements (click to select),
        suggested thresholds (Try: a what-if; Save suggestions)."""

        def __init__(self, plugin):
            super().__init__()
            _init_text_view(self, plugin)  # links are handled here (on_link), never followed
            self.document().setDefaultStyleSheet("a { color: #8cf; }")  # readable on black
            self.anchorClicked.connect(self.on_link)

        def attach(self, gui):
            gui.add_view(self, position="right")
            # A tab beside the reason view: a new column of docks would push phy's window past
            # a 1920 px screen (each dock's title bar has a minimum width).
            reason_docks = [getattr(v, "dock", None) for v in gui.list_views(VIEW_NAME)]
            dock = getattr(self, "dock", None)
            if reason_docks and reason_docks[0] is not None and dock is not None:
                gui.tabifyDockWidget(reason_docks[0], dock)
                dock.show()
                dock.raise_()
            from phylib.utils import connect
            connect(self.on_close_view, event="close_view", sender=self)
            self.plugin.concordance_views.append(self)
            self.plugin.update_concordance()

        def show_info(self, info, rows, computing=False, min_units=20):
            if info is None:
                self.setHtml(_html_page(f"<p>{_esc(self.plugin.summary())}</p>"))
                return
            self.setHtml(concordance_html(info, rows, computing, min_units))
            dock = getattr(self, "dock", None)
            if dock is not None:
                dock.set_status(f"{info['n_agree']}/{info['n_labelled']} agree")

        def on_link(self, url):
            kind, _, value = url.toString().partition(":")
            try:
                if kind == "cluster":
                    self.plugin.controller.supervisor.select([int(value)])
                elif kind == "try":
                    self.plugin.try_suggestion(value)
                elif kind == "save":
                    self.plugin.save_suggestions()
                elif kind == "reset":
                    self.plugin.reset_whatif()
            except Exception as e:
                _report_exception("the Bombcell vs my labels view", e, self.plugin.gui)

        def on_close_view(self, view, gui):
            from phylib.utils import unconnect
            unconnect(self.on_close_view)
            if self in self.plugin.concordance_views:
                self.plugin.concordance_views.remove(self)

    module.BombcellConcordanceView = BombcellConcordanceView


def _define_phy_classes():
    """Create (once) the classes that need phy and Qt, register the plugin with phy, and return
    ``(BombcellReasonPlugin, BombcellReasonView, ReasonTooltip, FirstOpenSizer)``."""
    module = sys.modules[__name__]
    existing = module.__dict__.get("_PHY_CLASSES")
    if existing is not None:
        return existing

    from phy import IPlugin
    from phylib.utils import connect, unconnect
    from PyQt5.QtCore import QEvent, QObject, QTimer
    from PyQt5.QtWidgets import QTextBrowser, QToolTip

    class BombcellReasonPlugin(_PluginLogic, IPlugin):
        """phy plugin: why bombcell labelled each cluster GOOD/MUA/NOISE/NON-SOMA.

        Adds the ``bc_classificationReason`` column to the cluster and similarity views, the
        ``BombcellReasonView`` dock view, and a Bombcell menu (ctrl+alt+b, snippet ``:bc ID``).
        """

    class FirstOpenSizer(QObject):
        """Calls ``size_docks`` after each resize of the GUI window, until stopped."""

        def __init__(self, gui, size_docks):
            super().__init__(gui)
            self.gui, self.size_docks = gui, size_docks
            gui.installEventFilter(self)

        def eventFilter(self, obj, event):
            if obj is self.gui and event.type() == QEvent.Resize:
                QTimer.singleShot(0, self.size_docks)
            return False

        def stop(self):
            self.gui.removeEventFilter(self)

    class ReasonTooltip(QObject):
        """Shows the full reason as the tooltip of a reason cell of a phy table."""

        def __init__(self, plugin, table):
            super().__init__(table)
            self.plugin, self.table = plugin, table
            table.table_view.viewport().installEventFilter(self)

        def eventFilter(self, obj, event):
            if event.type() != QEvent.ToolTip:
                return False
            try:
                text = self.plugin.tooltip(self.table, event.pos())
            except Exception as e:
                _report_exception("showing the reason tooltip", e)
                return False
            if text:
                QToolTip.showText(event.globalPos(), text, obj)
                return True
            return False

    class BombcellReasonView(_NarrowDockHints, QTextBrowser):
        """Dock view: label, bombcell's own label, reason and every criterion of the selection."""

        def __init__(self, plugin):
            super().__init__()
            _init_text_view(self, plugin)
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
            if dock is not None:  # a few characters: a long status would widen the dock
                dock.set_status(f"{cluster_ids[0]}: {self.plugin.book.label_of(int(cluster_ids[0]))}"
                                if len(cluster_ids) == 1 else f"{len(cluster_ids)} clusters")

        def on_close_view(self, view, gui):
            self.detach()

        def detach(self):
            unconnect(self.on_select, self.on_close_view)
            if self.plugin.view is self:
                self.plugin.view = None

    for cls in (BombcellReasonPlugin, BombcellReasonView, ReasonTooltip, FirstOpenSizer):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
    module.BombcellReasonPlugin = BombcellReasonPlugin
    module.BombcellReasonView = BombcellReasonView
    _define_whatif_classes(module)
    _define_concordance_classes(module)
    module.ReasonTooltip = ReasonTooltip
    module._PHY_CLASSES = (BombcellReasonPlugin, BombcellReasonView, ReasonTooltip, FirstOpenSizer)
    return module._PHY_CLASSES


def __getattr__(name):  # PEP 562: the phy classes on first use, without importing phy earlier
    if name in ("BombcellReasonPlugin", "BombcellReasonView", "BombcellMetricView",
                "BombcellSummaryView", "_BombcellRun"):
        _define_phy_classes()
        return sys.modules[__name__].__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# phy is already imported when phy itself loads this module (phy_config.py, a plugin folder):
# create and register the plugin class now so that phy finds it by name.
if "phy" in sys.modules:
    try:
        _define_phy_classes()
    except Exception as _e:  # never break phy's start or its config file
        _report_exception("registering the phy plugin", _e)


if __name__ == "__main__":
    sys.exit(main())

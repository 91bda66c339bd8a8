"""The reason texts users read, pinned to expectations written by hand from bombcell's rules.

Every other test of the column compares it with the engine's own output (wiring); these do not
ask the engine anything.  Each unit below passes every criterion except the ones it changes, and
its expected label, column text and the criteria the dock view lists under "decides the label"
are written out by hand, following bombcell 0.94's ``get_quality_unit_type`` (the precedence
NOISE > MUA > GOOD, then the non-somatic override of units that are not NOISE) and the wording
of the column: ``LABEL: <first deciding criterion by its short name> <value> <op> <threshold>``
and ``+N`` for the N other deciding criteria, the first one taken in the order noise tests,
MUA tests, the main-peak route, the shape route (each in the rule table's order); numbers with
three significant digits, more only where fewer would hide how value and threshold compare.

The results go through bombcell's own savers, and bombcell's own classifier labels them (the
hand-written labels are checked against it), then through ``export`` into the TSV phy reads.
"""
import html
import re

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from bombcell_tables import DEFAULTS, bombcell_labels, write_results

# Every parameter the classifier reads, by hand (bombcell 0.94's defaults, with drift and distance
# metrics switched on so that their tests appear too).
PARAMS = dict(
    DEFAULTS,  # bombcell's other keys; every classification parameter is set below
    maxNPeaks=2, maxNTroughs=1, minWvDuration=100, maxWvDuration=1150, maxWvBaselineFraction=0.3,
    maxScndPeakToTroughRatio_noise=0.8, minSpatialDecaySlope=-0.008, minSpatialDecaySlopeExp=0.01,
    maxSpatialDecaySlopeExp=0.1, maxPercSpikesMissing=20, minNumSpikes=300, maxRPVviolations=0.1,
    minPresenceRatio=0.7, minAmplitude=40, minSNR=5, maxDrift=100, isoDmin=20, lratioMax=0.3,
    minTroughToPeak2Ratio_nonSomatic=5, minWidthFirstPeak_nonSomatic=4,
    minWidthMainTrough_nonSomatic=5, maxPeak1ToPeak2Ratio_nonSomatic=3,
    maxMainPeakToTroughRatio_nonSomatic=0.8,
    extractRaw=True, computeSpatialDecay=True, spDecayLinFit=True, computeDrift=True,
    computeDistanceMetrics=True, splitGoodAndMua_NonSomatic=False, keepUncertainRPVUnits=False,
)
VARIANTS = {
    "plain": PARAMS,
    "split": dict(PARAMS, splitGoodAndMua_NonSomatic=True),
    "keep uncertain RPV": dict(PARAMS, keepUncertainRPVUnits=True),
}

# A unit that passes every criterion above, and is somatic (3 of the 4 shape tests pass).
PASSING = dict(
    nPeaks=1, nTroughs=1, waveformDuration_peakTrough=500, waveformBaselineFlatness=0.1,
    scndPeakToTroughRatio=0.2, spatialDecaySlope=-0.002, percentageSpikesMissing_gaussian=5,
    nSpikes=1000, fractionRPVs_estimatedTauR=0.01, RPV_status=1, presenceRatio=0.95,
    rawAmplitude=80, signalToNoiseRatio=10, maxDriftEstimate=10, isolationDistance=50, Lratio=0.05,
    troughToPeak2Ratio=10, mainPeak_before_width=10, mainTrough_width=10, peak1ToPeak2Ratio=1,
    mainPeakToTroughRatio=0.3,
)
NAN = float("nan")
ROUTE_A = dict(troughToPeak2Ratio=3, mainPeak_before_width=2, mainTrough_width=3,
               peak1ToPeak2Ratio=4)  # all four shape tests fail
ROUTE_B = dict(mainPeakToTroughRatio=1.2)
ALL_NAN = {k: NAN for k in PASSING if k not in ("nSpikes", "RPV_status")}

# Full criterion names as the view prints them under each deciding criterion.
N_PEAKS_NAN = "nPeaks is NaN"
N_TROUGHS = "nTroughs > maxNTroughs"
MAX_DURATION = "waveformDuration_peakTrough > maxWvDuration"
FLATNESS = "waveformBaselineFlatness > maxWvBaselineFraction"
SPATIAL_DECAY = "spatialDecaySlope < minSpatialDecaySlope"
MISSING = "percentageSpikesMissing_gaussian > maxPercSpikesMissing"
N_SPIKES = "nSpikes < minNumSpikes"
RPV = "fractionRPVs_estimatedTauR > maxRPVviolations"
PRESENCE = "presenceRatio < minPresenceRatio"
AMPLITUDE = "rawAmplitude < minAmplitude"
DRIFT = "maxDriftEstimate > maxDrift"
ISOLATION = "isolationDistance < isoDmin"
L_RATIO = "Lratio > lratioMax"
SHAPE = ["troughToPeak2Ratio < minTroughToPeak2Ratio_nonSomatic",
         "mainPeak_before_width < minWidthFirstPeak_nonSomatic",
         "mainTrough_width < minWidthMainTrough_nonSomatic",
         "peak1ToPeak2Ratio > maxPeak1ToPeak2Ratio_nonSomatic"]
MAIN_PEAK = "mainPeakToTroughRatio > maxMainPeakToTroughRatio_nonSomatic"

# (variant, what the unit changes from PASSING, label, column text, deciding criteria in the
# view's order: the rule table's).
CASES = [
    ("plain", {}, "GOOD", "GOOD: passed all thresholds", []),
    # NOISE
    ("plain", dict(nTroughs=3), "NOISE", "NOISE: # troughs 3 > 1", [N_TROUGHS]),
    ("plain", dict(nTroughs=3, waveformBaselineFlatness=0.5), "NOISE",
     "NOISE: # troughs 3 > 1 +1", [N_TROUGHS, FLATNESS]),  # the first deciding one, not the last
    ("plain", dict(waveformBaselineFlatness=0.5, spatialDecaySlope=-0.02), "NOISE",
     "NOISE: baseline flatness 0.5 > 0.3 +1", [FLATNESS, SPATIAL_DECAY]),
    ("plain", dict(ALL_NAN, nSpikes=30), "NOISE", "NOISE: # peaks is NaN", [N_PEAKS_NAN]),
    ("plain", dict(nTroughs=3, fractionRPVs_estimatedTauR=0.5), "NOISE", "NOISE: # troughs 3 > 1",
     [N_TROUGHS]),  # NOISE takes precedence: the MUA failure does not decide
    ("plain", dict(ROUTE_B, nTroughs=3), "NOISE", "NOISE: # troughs 3 > 1", [N_TROUGHS]),
    ("plain", dict(waveformDuration_peakTrough=1150.5), "NOISE",
     "NOISE: waveform duration 1150.5 > 1150", [MAX_DURATION]),  # 3 digits would say 1150 > 1150
    ("plain", dict(waveformDuration_peakTrough=1150), "GOOD", "GOOD: passed all thresholds", []),
    # MUA
    ("plain", dict(fractionRPVs_estimatedTauR=0.23), "MUA", "MUA: fraction RPVs 0.23 > 0.1", [RPV]),
    ("plain", dict(fractionRPVs_estimatedTauR=0.23456), "MUA", "MUA: fraction RPVs 0.235 > 0.1",
     [RPV]),
    ("plain", dict(fractionRPVs_estimatedTauR=0.10004), "MUA", "MUA: fraction RPVs 0.10004 > 0.1",
     [RPV]),
    ("plain", dict(percentageSpikesMissing_gaussian=20.04), "MUA",
     "MUA: % spikes missing 20.04 > 20", [MISSING]),
    ("plain", dict(presenceRatio=0.69996), "MUA", "MUA: presence ratio 0.69996 < 0.7", [PRESENCE]),
    ("plain", dict(percentageSpikesMissing_gaussian=30, presenceRatio=0.5), "MUA",
     "MUA: % spikes missing 30 > 20 +1", [MISSING, PRESENCE]),
    ("plain", dict(nSpikes=250), "MUA", "MUA: # spikes 250 < 300", [N_SPIKES]),
    ("plain", dict(rawAmplitude=30), "MUA", "MUA: amplitude 30 < 40", [AMPLITUDE]),
    ("plain", dict(maxDriftEstimate=150, Lratio=0.5, isolationDistance=12), "MUA",
     "MUA: max. drift 150 > 100 +2", [DRIFT, ISOLATION, L_RATIO]),
    # NaN values pass; the SNR test is skipped where rawAmplitude is NaN
    ("plain", dict(waveformBaselineFlatness=NAN, presenceRatio=NAN, nTroughs=NAN), "GOOD",
     "GOOD: passed all thresholds", []),
    ("plain", dict(rawAmplitude=NAN, signalToNoiseRatio=2), "GOOD", "GOOD: passed all thresholds",
     []),
    # non-somatic: the main-peak route, the shape route (all four), both, and 3 of 4 (somatic)
    ("plain", ROUTE_B, "NON-SOMA", "NON-SOMA: main peak/trough 1.2 > 0.8", [MAIN_PEAK]),
    ("plain", ROUTE_A, "NON-SOMA", "NON-SOMA: trough/peak2 3 < 5 +3", SHAPE),
    ("plain", dict(ROUTE_A, **ROUTE_B), "NON-SOMA", "NON-SOMA: main peak/trough 1.2 > 0.8 +4",
     SHAPE + [MAIN_PEAK]),  # the single main-peak test named before the four shape tests
    ("plain", dict(ROUTE_A, troughToPeak2Ratio=10), "GOOD", "GOOD: passed all thresholds", []),
    ("plain", dict(ROUTE_A, mainTrough_width=5), "GOOD", "GOOD: passed all thresholds", []),
    ("plain", dict(ROUTE_B, fractionRPVs_estimatedTauR=0.23), "NON-SOMA",
     "NON-SOMA: main peak/trough 1.2 > 0.8", [MAIN_PEAK]),  # the label hides the MUA failure
    # no spikes: no label
    ("plain", dict(ALL_NAN, nSpikes=0), "", "NO LABEL: no spikes", []),
    # split mode
    ("split", {}, "GOOD", "GOOD: passed all thresholds", []),
    ("split", dict(nTroughs=3), "NOISE", "NOISE: # troughs 3 > 1", [N_TROUGHS]),
    ("split", dict(nSpikes=250), "MUA", "MUA: # spikes 250 < 300", [N_SPIKES]),
    ("split", ROUTE_B, "NON-SOMA GOOD", "NON-SOMA GOOD: main peak/trough 1.2 > 0.8", [MAIN_PEAK]),
    ("split", ROUTE_A, "NON-SOMA GOOD", "NON-SOMA GOOD: trough/peak2 3 < 5 +3", SHAPE),
    ("split", dict(ROUTE_B, fractionRPVs_estimatedTauR=0.23), "NON-SOMA MUA",
     "NON-SOMA MUA: fraction RPVs 0.23 > 0.1 +1", [RPV, MAIN_PEAK]),  # its MUA failure first
    ("split", dict(ROUTE_A, nSpikes=250), "NON-SOMA MUA", "NON-SOMA MUA: # spikes 250 < 300 +4",
     [N_SPIKES] + SHAPE),
    ("split", dict(ROUTE_A, nTroughs=3), "NOISE", "NOISE: # troughs 3 > 1", [N_TROUGHS]),
    # keepUncertainRPVUnits: an uncertain RPV estimate (RPV_status 0) keeps the unit
    ("keep uncertain RPV", {}, "GOOD", "GOOD: passed all thresholds", []),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0), "GOOD",
     "GOOD: fraction RPVs kept (uncertain)", []),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=1), "MUA",
     "MUA: fraction RPVs 0.23 > 0.1", [RPV]),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0, presenceRatio=0.5),
     "MUA", "MUA: presence ratio 0.5 < 0.7", [PRESENCE]),
    ("plain", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0), "MUA",
     "MUA: fraction RPVs 0.23 > 0.1", [RPV]),  # only with keepUncertainRPVUnits
]


def _cases(variant):
    return [c for c in CASES if c[0] == variant]


def _table(variant):
    cases = _cases(variant)
    return {k: [dict(PASSING, **c[1])[k] for c in cases] for k in PASSING}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    """One dataset per parameter variant, one unit per case (cluster id = case index), written by
    bombcell's savers with bombcell's own labels, then exported."""
    variant = request.param
    folder = tmp_path_factory.mktemp(variant.replace(" ", "_"))
    write_results(folder, params=VARIANTS[variant], metrics=_table(variant))
    pr.export(folder)
    return variant, folder


def test_every_label_and_both_routes_are_pinned():
    labels = {c[2] for c in CASES}
    assert labels == {"GOOD", "MUA", "NOISE", "NON-SOMA", "NON-SOMA GOOD", "NON-SOMA MUA", ""}
    deciding = [name for c in CASES for name in c[4]]
    assert MAIN_PEAK in deciding and all(name in deciding for name in SHAPE)


def test_hand_written_labels_are_bombcells(exported):
    variant, _ = exported
    labels = bombcell_labels(VARIANTS[variant], _table(variant))
    assert list(labels) == [c[2] for c in _cases(variant)]


def test_column_texts_are_the_hand_written_ones(exported):
    variant, folder = exported
    written = pr.read_cluster_tsv(folder / pr.TSV_NAME)
    expected = {i: c[3] for i, c in enumerate(_cases(variant))}
    assert written == expected
    result = pr.classify_dataset(folder)
    assert result.label.tolist() == [c[2] for c in _cases(variant)]


def _deciding_in_view(page):
    """The full names the view lists in its "decides the label" group, in its order."""
    if "decides the label</td>" not in page:
        return []
    group = page.split("decides the label</td>", 1)[1]
    group = re.split(r"class='head'|</table>", group, maxsplit=1)[0]
    return [html.unescape(name) for name in re.findall(r"class='full'>(.*?) &middot;", group)]


def test_view_lists_the_hand_written_deciding_criteria(exported):
    variant, folder = exported
    book = pr.ReasonBook(pr.classify_dataset(folder))
    for i, case in enumerate(_cases(variant)):
        page = book.html([i])
        assert _deciding_in_view(page) == case[4], case
        assert html.escape(case[3], quote=False) in page, case


def test_a_saved_label_that_differs_is_said_after_the_reason():
    metrics = {k: [v] for k, v in dict(PASSING, fractionRPVs_estimatedTauR=0.23).items()}
    result = pr.Classification(PARAMS, {k: np.asarray(v, dtype=float) for k, v in metrics.items()},
                               [7], bombcell_label=["GOOD"])
    assert result.reason.tolist() == ["MUA: fraction RPVs 0.23 > 0.1 (bombcell saved GOOD)"]


@pytest.mark.parametrize("op, value, threshold, status, text", [
    (">", 0.23, 0.1, "fail", "0.23 > 0.1"),
    ("<", 250, 300, "fail", "250 < 300"),
    (">", 0.05, 0.1, "pass", "0.05 \u2264 0.1"),  # the relation that holds
    ("<", 0.95, 0.7, "pass", "0.95 \u2265 0.7"),
    (">", 0.1, 0.1, "pass", "0.1 \u2264 0.1"),  # at the threshold: passes
    (">", 0.10004, 0.1, "fail", "0.10004 > 0.1"),
    (">", None, 0.3, "nan", "NaN (passes)"),
    ("<", 2, 5, "nan", "2 (not tested)"),  # SNR where rawAmplitude is NaN
    (">", 150, 100, "disabled", "off"),
    ("<", None, None, "disabled", "off"),
    ("isnan", None, None, "fail", "NaN"),
    ("isnan", 1, None, "pass", "not NaN"),
    (">", 0.23, 0.1, "kept", "0.23 > 0.1"),
    (">", "inf", 0.8, "fail", "inf > 0.8"),
])
def test_view_comparison_texts(op, value, threshold, status, text):
    """What the view shows next to each criterion, written by hand."""
    assert pr.comparison_text(op, value, threshold, status) == text


def _classify(variant, units, saved=None):
    metrics = {k: np.asarray([dict(PASSING, **u)[k] for u in units], dtype=float) for k in PASSING}
    return pr.Classification(VARIANTS[variant], metrics, list(range(len(units))), saved)


@pytest.mark.parametrize("variant, unit, tooltip", [
    ("plain", {}, "GOOD: passed all thresholds"),
    ("plain", dict(ALL_NAN, nSpikes=0),
     "NO LABEL: unit has no spikes (nSpikes = 0); bombcell leaves it unlabelled"),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0),
     "GOOD: fractionRPVs_estimatedTauR>maxRPVviolations (0.23 > 0.1) kept: uncertain RPV "
     "estimate, kept by keepUncertainRPVUnits"),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0, nSpikes=0),
     "NO LABEL: unit has no spikes (nSpikes = 0); bombcell leaves it unlabelled"),
    ("plain", dict(nTroughs=3, waveformBaselineFlatness=0.5),
     "NOISE: nTroughs>maxNTroughs (3 > 1); waveformBaselineFlatness>maxWvBaselineFraction "
     "(0.5 > 0.3)"),
    ("plain", dict(ALL_NAN, nSpikes=30), "NOISE: nPeaks is NaN"),
    ("plain", dict(ROUTE_A, **ROUTE_B),
     "NON-SOMA: troughToPeak2Ratio<minTroughToPeak2Ratio_nonSomatic (3 < 5); "
     "mainPeak_before_width<minWidthFirstPeak_nonSomatic (2 < 4); "
     "mainTrough_width<minWidthMainTrough_nonSomatic (3 < 5); "
     "peak1ToPeak2Ratio>maxPeak1ToPeak2Ratio_nonSomatic (4 > 3); "
     "mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic (1.2 > 0.8)"),
])
def test_tooltip_names_every_deciding_criterion_in_full(variant, unit, tooltip):
    assert _classify(variant, [unit]).full_reason(0) == tooltip


def _row(mark, stage, short, name, value, threshold, status, margin):
    return (f"  {mark} {stage:13} {short:18} {name:57} {value:>9} {threshold:>10} {status:8} "
            f"{margin:>9}")


def test_explain_table_of_one_cluster():
    """``phy-bc-reason explain --cluster``: deciding criteria first (*), then the rest by status
    (fail, kept, nan, pass, disabled), each group in the rule table's order."""
    result = _classify("plain", [dict(percentageSpikesMissing_gaussian=30, presenceRatio=0.5),
                                 dict(ALL_NAN, nSpikes=0)], saved=["MUA", ""])
    lines = result.explain_text(0).splitlines()
    assert lines[:3] == [
        "cluster 0: MUA: % spikes missing 30 > 20 +1",
        "  label: MUA   bombcell's saved label: MUA",
        "    stage         name               criterion: fails when" + " " * 36
        + "     value  threshold status      margin"]
    assert lines[3:7] == [
        _row("*", "mua", "% spikes missing", "percentageSpikesMissing_gaussian>maxPercSpikesMissing",
             "30", "20", "fail", "-10"),
        _row("*", "mua", "presence ratio", "presenceRatio<minPresenceRatio", "0.5", "0.7", "fail",
             "-0.2"),
        _row(" ", "noise", "# peaks", "nPeaks is NaN", "1", "-", "pass", "-"),
        _row(" ", "noise", "# peaks", "nPeaks>maxNPeaks", "1", "2", "pass", "1")]
    assert lines[-3:] == [
        _row(" ", "noise", "spatial decay", "spatialDecaySlope<minSpatialDecaySlopeExp", "-0.002",
             "0.01", "disabled", "-"),
        _row(" ", "noise", "spatial decay", "spatialDecaySlope>maxSpatialDecaySlopeExp", "-0.002",
             "0.1", "disabled", "-"),
        "  * decides the label.  margin: distance on the passing side (negative: fails)"]
    assert len(lines) == 3 + len(pr.RULES) + 1
    empty = result.explain_text(1).splitlines()
    assert empty[:2] == ["cluster 1: NO LABEL: no spikes",
                         "  label: NO LABEL   bombcell's saved label: NO LABEL"]
    assert _row(" ", "noise", "# peaks", "nPeaks is NaN", "NaN", "-", "fail", "-") in empty
    assert "  note: no spikes (nSpikes = 0): bombcell gives empty units no label, whatever their " \
           "metrics" in empty
    assert _classify("plain", [{}]).explain_text(0).splitlines()[1] == \
        "  label: GOOD   bombcell's saved label: not saved"
    assert result.explain_text(5) == f"cluster 5: {pr.NO_ROW_REASON}"


def test_label_counts_in_the_order_curators_read_them():
    labels = ["NOISE", "", "GOOD", "NON-SOMA MUA", "MUA", "NON-SOMA", "NON-SOMA GOOD", "GOOD", None]
    assert list(pr.label_counts(labels).items()) == [
        ("GOOD", 2), ("MUA", 1), ("NOISE", 1), ("NON-SOMA", 1), ("NON-SOMA GOOD", 1),
        ("NON-SOMA MUA", 1), ("NO LABEL", 2)]
    assert pr.label_counts([]) == {}


INF = float("inf")
SAVED_DIFFERS = ("bombcell saved the label {!r}, but its classifier gives {!r} for the saved "
                 "parameters and metrics: they changed after the run, or came from another "
                 "bombcell version")


@pytest.mark.parametrize("variant, unit, saved, notes", [
    ("plain", {}, "GOOD", []),
    ("plain", dict(ALL_NAN, nSpikes=0), None,
     ["no spikes (nSpikes = 0): bombcell gives empty units no label, whatever their metrics"]),
    ("plain", dict(ALL_NAN, nSpikes=30), None,
     ["nPeaks is NaN: bombcell could not compute waveform metrics (units with fewer than 50 "
      "spikes get NaN metrics) and counts that as NOISE",
      "also fails, without deciding the label: nSpikes<minNumSpikes (30 < 300) (NOISE takes "
      "precedence over MUA)"]),
    ("plain", dict(waveformBaselineFlatness=NAN, presenceRatio=NAN, nTroughs=NAN), None,
     ["NaN values pass these tests, as in bombcell: nTroughs>maxNTroughs, "
      "waveformBaselineFlatness>maxWvBaselineFraction",
      "NaN values pass these MUA tests, as in bombcell: presenceRatio<minPresenceRatio"]),
    ("plain", dict(rawAmplitude=NAN, signalToNoiseRatio=2), None,
     ["signalToNoiseRatio<minSNR not tested: bombcell skips it where rawAmplitude is NaN",
      "NaN values pass these MUA tests, as in bombcell: rawAmplitude<minAmplitude"]),
    ("plain", dict(spatialDecaySlope=INF), None,
     ["spatialDecaySlope is inf: bombcell does not clean inf, so it passes "
      "spatialDecaySlope<minSpatialDecaySlope"]),
    ("plain", dict(scndPeakToTroughRatio=INF), None,
     ["scndPeakToTroughRatio is inf: bombcell does not clean inf, so it fails "
      "scndPeakToTroughRatio>maxScndPeakToTroughRatio_noise"]),
    ("plain", dict(ROUTE_B, fractionRPVs_estimatedTauR=0.23), None,
     ["also fails, without deciding the label: fractionRPVs_estimatedTauR>maxRPVviolations "
      "(0.23 > 0.1) (the NON-SOMA label hides MUA failures when splitGoodAndMua_NonSomatic is "
      "off)"]),
    ("plain", dict(nTroughs=3, fractionRPVs_estimatedTauR=0.5), None,
     ["also fails, without deciding the label: fractionRPVs_estimatedTauR>maxRPVviolations "
      "(0.5 > 0.1) (NOISE takes precedence over MUA)"]),
    ("plain", dict(ROUTE_A, nTroughs=3), None,
     ["non-somatic tests are not applied to NOISE units"]),
    ("plain", dict(ROUTE_B, nTroughs=3), None,
     ["non-somatic tests are not applied to NOISE units"]),
    ("plain", dict(ROUTE_A, mainTrough_width=10, nTroughs=3), None, []),
    ("plain", dict(ROUTE_A, mainTrough_width=10), None,
     ["3 of 4 shape-route tests fail: the shape route makes a unit non-somatic only when all "
      "four fail"]),
    ("plain", dict(troughToPeak2Ratio=3), None,
     ["1 of 4 shape-route tests fail: the shape route makes a unit non-somatic only when all "
      "four fail"]),
    ("plain", ROUTE_A, None, []),
    ("keep uncertain RPV", dict(fractionRPVs_estimatedTauR=0.23, RPV_status=0), None,
     ["fractionRPVs_estimatedTauR>maxRPVviolations (0.23 > 0.1) would fail, but the RPV "
      "estimate is uncertain (RPV_status 0), kept by keepUncertainRPVUnits: bombcell lets the "
      "unit pass this test"]),
    ("plain", dict(fractionRPVs_estimatedTauR=0.23), "GOOD", [SAVED_DIFFERS.format("GOOD", "MUA")]),
    ("plain", {}, "", [SAVED_DIFFERS.format("(none)", "GOOD")]),
    ("plain", dict(ALL_NAN, nSpikes=0), "NOISE",
     ["no spikes (nSpikes = 0): bombcell gives empty units no label, whatever their metrics",
      SAVED_DIFFERS.format("NOISE", "(none)")]),
])
def test_notes_of_one_unit(variant, unit, saved, notes):
    """The notes the view, ``explain --cluster`` and load_reasons give, written by hand."""
    result = _classify(variant, [unit], saved=None if saved is None else [saved])
    assert result.unit_notes(0) == notes


@pytest.mark.parametrize("x, digits, text", [
    (None, 3, "None"), ("inf", 3, "inf"), (NAN, 3, "NaN"), (INF, 3, "inf"), (-INF, 3, "-inf"),
    (3.0, 3, "3"), (-12, 3, "-12"), (0.23456, 3, "0.235"), (45.67, 3, "45.7"), (123.456, 3, "123"),
    (1234.5, 3, "1234"), (1100.5, 3, "1100"), (1.234e-7, 3, "1.23e-07"), (0.23456, 4, "0.2346"),
    (0.1 + 0.2, None, "0.30000000000000004"),
])
def test_number_texts(x, digits, text):
    assert pr.format_number(x, digits) == text


def test_number_text_default_digits():
    assert pr.format_number(0.23456) == "0.235"


def test_parameters_named_in_messages_and_odd_keys():
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.complete_params({"max_n_peaks": 2})
    assert str(error.value).startswith("parameters: written by bombcell 0.31 or older")
    params, _ = pr.complete_params({**PARAMS, "n_peaks": 1, 5: "an int key"})
    assert params["maxNPeaks"] == 2
    assert pr.newer_bombcell_names([5, "nPeaks", "newOne", " spaced "]) == ["newOne"]

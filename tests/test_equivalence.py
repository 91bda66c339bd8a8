"""Property tests: our rule table against the real ``bombcell.get_quality_unit_type``.

Hypothesis draws parameter sets (every flag on and off, thresholds moved, NaN thresholds,
parameters missing as in older bombcell runs) and a seed; numpy then builds a metric table of
many units around those thresholds, with NaN, +-inf, values exactly at the threshold and empty
units.  For every table we check, against bombcell itself:

1. the label of every unit;
2. the verdict of every single criterion on every unit (each criterion isolated in its own
   bombcell call: all other thresholds set to NaN, which passes every comparison);
3. that the decisive criteria really decide the label: passing all of them changes bombcell's
   label, and keeping any one of them failing (all other decisive ones passed) keeps its part of
   the label.
"""
import contextlib
import io
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import phy_bc_reason_plugin as pr
from bombcell_tables import DEFAULTS, DESIGNS, FLAGS, THRESHOLDS, metric_table

with contextlib.redirect_stdout(io.StringIO()):  # bombcell prints on import
    import bombcell

# Under mutation testing (mutmut sets MUTANT_UNDER_TEST) every mutant reruns these tests: a tenth
# of the examples, drawn the same way every time, so that a mutant's verdict is reproducible.
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def examples(n):
    return dict(max_examples=max(n // 10, 5) if UNDER_MUTMUT else n, derandomize=UNDER_MUTMUT,
                deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bombcell_labels(params, metrics):
    """bombcell's own string labels, quietly (it prints and warns about filled parameters)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, labels = bombcell.get_quality_unit_type(dict(params), {k: v.copy() for k, v in metrics.items()})
    return np.asarray(labels, dtype=object)


# Flags as users' saved parameters hold them: bombcell reads them with `if param[flag]` (NaN is
# on, None off) and combines computeSpatialDecay & spDecayLinFit bitwise (2 & True == 0).
FLAG_VALUES = (True, False, 0, 1, 2, float("nan"), None)
# Thresholds of rules that are switched off are never read by bombcell: anything goes there.
ODD_THRESHOLDS = ("n/a", "none", "5", [1.0], [1.0, 2.0], None)


def _rule_on(params, rule):
    """Whether bombcell reads ``rule``'s threshold (None when it cannot even decide)."""
    try:
        return pr.rule_enabled(rule, pr.complete_params(params)[0])
    except pr.BombcellReasonError:
        return None


@st.composite
def param_sets(draw, odd=True):
    params = dict(DEFAULTS)
    for flag in FLAGS:
        if odd and draw(st.integers(0, 7)) == 0:
            params[flag] = draw(st.sampled_from(FLAG_VALUES))
        else:
            params[flag] = draw(st.booleans())
    for key in THRESHOLDS:
        how = draw(st.sampled_from(["default", "default", "moved", "nan", "zero"]))
        if how == "moved":
            params[key] = DEFAULTS[key] * draw(st.sampled_from([0.5, 0.9, 1.1, 2.0, -1.0]))
        elif how == "nan":
            params[key] = float("nan")
        elif how == "zero":
            params[key] = 0
    # Older runs lack the parameters bombcell has back-compatibility defaults for; MATLAB-era
    # sets carry spikeWidth, which scales the shape-route widths bombcell fills in.
    for key in pr.BACKCOMPAT_DEFAULTS:
        if draw(st.integers(0, 9)) == 0:
            params.pop(key, None)
    if draw(st.booleans()):
        params["spikeWidth"] = draw(st.sampled_from([61, 30, 90, 150, float("nan"), 0]))
        params["standardSpikeWidth"] = draw(st.sampled_from([61, 30, 0]))
    if odd:
        # Odd thresholds: mostly on rules that are off (harmless to bombcell), sometimes on
        # rules that are on (bombcell raises, or broadcasts a one-element list).
        for rule in pr.RULES:
            if rule.param and draw(st.integers(0, 5)) == 0:
                on = _rule_on(params, rule)
                if on is False or draw(st.integers(0, 3)) == 0:
                    params[rule.param] = draw(st.sampled_from(ODD_THRESHOLDS))
        if draw(st.integers(0, 9)) == 0:
            params["spikeWidth"] = "61"
    return params


def ours_or_refusal(params, metrics):
    """Our labels, or the one-line refusal (BombcellReasonError) as a string."""
    try:
        complete, _ = pr.complete_params(params)
        return pr.Classification(complete, metrics, np.arange(len(metrics["nSpikes"])))
    except pr.BombcellReasonError as e:
        assert "\n" not in str(e)
        return str(e)


def bombcell_or_error(params, metrics):
    try:
        return bombcell_labels(params, metrics)
    except (TypeError, ValueError, KeyError, IndexError) as e:  # UFuncTypeError is a TypeError
        return e


def probe_verdicts(params, metrics, rule_index):
    """bombcell's verdict on one criterion for every unit, the criterion isolated: all other
    thresholds NaN (a NaN threshold passes every comparison), and for a shape-route criterion the
    three others forced to fail, since the shape route only counts when all four fail."""
    rule = pr.RULES[rule_index]
    probe = {k: np.asarray(v, dtype=float).copy() for k, v in metrics.items()}
    p = pr.complete_params(params)[0]
    for other in pr.RULES:
        if other.param and other is not rule:
            p[other.param] = float("nan")
    if rule.metric != "nPeaks":
        probe["nPeaks"] = np.zeros(len(probe["nPeaks"]))  # NaN nPeaks alone would make NOISE
    elif rule.op == ">":
        probe["nPeaks"] = np.nan_to_num(probe["nPeaks"], nan=-np.inf)  # NaN and -inf both pass ">"
    if rule.metric != "nSpikes":
        probe["nSpikes"] = np.full(len(probe["nSpikes"]), np.nan)  # not empty, passes "<"
    if rule.route == "A":
        for other in pr.RULES:
            if other.route == "A" and other is not rule:
                probe[other.metric] = np.zeros(len(probe[other.metric]))
                p[other.param] = np.inf if other.op == "<" else -np.inf
    labels = bombcell_labels(p, probe)
    expected_on_fail = {"noise": {"NOISE"}, "mua": {"MUA"},
                        "non-somatic": {"NON-SOMA", "NON-SOMA GOOD"}}[rule.stage]
    return np.isin(labels, list(expected_on_fail))


# A value that passes every enabled rule on a metric, leaving other metrics as they are.
def _passing_value(metric):
    ops = {r.op for r in pr.RULES if r.metric == metric}
    if ops == {"<"}:
        return np.inf
    if ops <= {">", "isnan"}:
        return -np.inf
    return np.nan


def _groups(decisive_rules):
    """Decisive criteria in groups that decide together: the shape route is one group."""
    shape = [i for i in decisive_rules if pr.RULES[i].route == "A"]
    return [[i] for i in decisive_rules if pr.RULES[i].route != "A"] + ([shape] if shape else [])


def _part_kept(label, rule, split):
    """The label a unit keeps when only ``rule``'s part of its label still fails."""
    if label == "NON-SOMA MUA":
        return "MUA" if rule.stage == "mua" else "NON-SOMA GOOD"
    return label


@settings(**examples(300))
# n_units != 2: bombcell compares a two-element list threshold unit by unit on two units (we refuse
# list thresholds of more than one value, in one line).
@given(params=param_sets(), seed=st.integers(0, 2**32 - 1),
       n_units=st.integers(1, 120).filter(lambda n: n != 2))
def test_labels_and_criteria_equal_bombcell(params, seed, n_units):
    metrics = metric_table(params, seed, n_units)
    ours, theirs = ours_or_refusal(params, metrics), bombcell_or_error(params, metrics)
    if isinstance(theirs, Exception) or isinstance(ours, str):
        # bombcell itself cannot classify: we refuse, in one line naming a parameter
        assert isinstance(theirs, Exception) and isinstance(ours, str), (ours, theirs)
        assert any(k in ours for k in params), ours
        return
    assert ours.label.tolist() == theirs.tolist()
    for i, rule in enumerate(pr.RULES):  # the status/margin invariant, on every unit
        margins = np.array([c["margin"] for c in (ours.criteria(u, only=np.arange(len(pr.RULES)) == i)[0]
                                                  for u in range(min(n_units, 20)))], dtype=object)
        statuses = ours.status[i, :min(n_units, 20)]
        for status, margin in zip(statuses, margins):
            if margin is None or isinstance(margin, str):
                continue
            assert not (status == pr.STATUSES.index("pass") and margin < 0), rule.name
            assert not (status == pr.STATUSES.index("fail") and margin > 0), rule.name

    counted = metrics["nSpikes"] != 0  # bombcell says nothing about empty units' nSpikes test
    for i, rule in enumerate(pr.RULES):
        verdicts = probe_verdicts(params, metrics, i)
        if rule.metric == "nSpikes":
            assert (ours.fails[i] == verdicts)[counted].all(), rule.name
        else:
            assert (ours.fails[i] == verdicts).all(), rule.name


@settings(**examples(60))
@given(params=param_sets(), seed=st.integers(0, 2**32 - 1),
       n_units=st.integers(1, 60).filter(lambda n: n != 2))
def test_decisive_criteria_decide_the_label(params, seed, n_units):
    metrics = metric_table(params, seed, n_units)
    ours = ours_or_refusal(params, metrics)
    if isinstance(ours, str):
        return
    for unit in range(n_units):
        label = ours.label[unit]
        decisive = np.flatnonzero(ours.decisive[:, unit]).tolist()
        if label in ("", "GOOD"):
            assert decisive == []
            continue
        assert decisive, (unit, label)
        one = {k: np.asarray(v, dtype=float)[unit:unit + 1].copy() for k, v in metrics.items()}

        def with_passed(rule_indices, keep=()):
            row = {k: v.copy() for k, v in one.items()}
            kept_metrics = {pr.RULES[i].metric for i in keep}
            for i in rule_indices:
                if pr.RULES[i].metric not in kept_metrics:
                    row[pr.RULES[i].metric][:] = _passing_value(pr.RULES[i].metric)
            return bombcell_labels(params, row)[0]

        assert with_passed(decisive) != label, (unit, label, decisive)
        for group in _groups(decisive):
            others = [i for i in decisive if i not in group]
            assert with_passed(others, keep=group) == _part_kept(label, pr.RULES[group[0]], ours.split), \
                (unit, label, [pr.RULES[i].name for i in group])


@pytest.mark.parametrize("key", pr.CLASSIFICATION_PARAMS)
def test_missing_parameter_handled_like_bombcell(key):
    params = dict(DEFAULTS)
    params.pop(key)
    metrics = metric_table(DEFAULTS, 0, 50)
    try:
        expected = bombcell_labels(params, metrics)
    except KeyError:
        with pytest.raises(pr.BombcellReasonError, match=key):
            pr.complete_params(params)
        return
    complete, notes = pr.complete_params(params)
    assert any(key in note for note in notes)
    assert pr.Classification(complete, metrics, np.arange(50)).label.tolist() == expected.tolist()


def test_backcompat_defaults_are_bombcells():
    from bombcell import default_parameters as dp
    assert pr.BACKCOMPAT_DEFAULTS == dp._BACKCOMPAT_DEFAULTS
    assert set(pr.CLASSIFICATION_PARAMS) == set(dp._CLASSIFICATION_KEYS)
    assert pr.SHAPE_ROUTE_PARAMS == tuple(dp._NON_SOMATIC_GROUP) or \
        set(pr.SHAPE_ROUTE_PARAMS) == set(dp._NON_SOMATIC_GROUP)


@pytest.mark.parametrize("split", [False, True])
def test_generated_tables_give_every_label_a_fair_share(split, record_property):
    """The generator behind the property tests: every label >= 10% of the units (bombcell's own
    labels), so precedence, the split and the decisive criteria see thousands of units."""
    params = dict(DEFAULTS, splitGoodAndMua_NonSomatic=split)
    labels = bombcell_labels(params, metric_table(params, 0, 5000))
    wanted = (["GOOD", "MUA", "NOISE"]
              + (["NON-SOMA GOOD", "NON-SOMA MUA"] if split else ["NON-SOMA"]))
    share = {k: float(np.mean(labels == k)) for k in wanted}
    record_property("label_share", share)
    print(f"split={split}: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    assert min(share.values()) >= 0.10, share


def test_flags_and_odd_thresholds_like_bombcell():
    """The cases of issue 8, one by one: bombcell's label or one line, never a traceback."""
    metrics = metric_table(DEFAULTS, 7, 400)
    cases = [dict(keepUncertainRPVUnits=float("nan")), dict(splitGoodAndMua_NonSomatic=float("nan")),
             dict(extractRaw=float("nan")), dict(computeDrift=None), dict(computeDistanceMetrics=2),
             dict(computeSpatialDecay=2, spDecayLinFit=True), dict(computeSpatialDecay=float("nan")),
             dict(spDecayLinFit=None), dict(minSNR="n/a", extractRaw=False),
             dict(maxDrift="none", computeDrift=False), dict(isoDmin=[1, 2], computeDistanceMetrics=0),
             dict(minSNR="n/a", extractRaw=True), dict(maxNPeaks="2"), dict(maxNPeaks=[2]),
             dict(minWidthFirstPeak_nonSomatic=4, spikeWidth="61", standardSpikeWidth=61)]
    for change in cases:
        params = dict(DEFAULTS, **change)
        if "spikeWidth" in change:
            for key in pr.SHAPE_ROUTE_PARAMS[1:]:
                params.pop(key, None)
        ours, theirs = ours_or_refusal(params, metrics), bombcell_or_error(params, metrics)
        if isinstance(theirs, Exception):
            assert isinstance(ours, str) and any(k in ours for k in change), (change, ours)
        else:
            assert not isinstance(ours, str), (change, ours)
            assert ours.label.tolist() == theirs.tolist(), change
    # NaN split flag: bombcell's "NON-SOMA MUA", not "NON-SOMA"
    params = dict(DEFAULTS, splitGoodAndMua_NonSomatic=float("nan"))
    assert "NON-SOMA MUA" in ours_or_refusal(params, metrics).label.tolist()


def test_kept_status_never_contradicts_its_margin():
    params = dict(DEFAULTS, keepUncertainRPVUnits=True)
    metrics = metric_table(params, 3, 300, designs=("good",))
    metrics["fractionRPVs_estimatedTauR"][:] = 0.5
    metrics["RPV_status"][:] = 0
    ours = ours_or_refusal(params, metrics)
    assert ours.label.tolist() == bombcell_labels(params, metrics).tolist()
    rpv = [i for i, r in enumerate(pr.RULES) if r.metric == "fractionRPVs_estimatedTauR"][0]
    unit = int(np.flatnonzero(ours.label == "GOOD")[0])
    crit = ours.criteria(unit)[rpv]
    assert crit["status"] == "kept" and crit["margin"] < 0
    assert ours.reason[unit].startswith("GOOD") and "kept" in ours.reason[unit]
    assert any("keepUncertainRPVUnits" in n for n in ours.unit_notes(unit))

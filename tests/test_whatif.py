"""What-if thresholds and sole blockers against the real ``bombcell.get_quality_unit_type``.

Hypothesis draws a saved parameter set (as test_equivalence.py does), a metric table around its
thresholds and a set of changes (thresholds moved or relaxed to +-inf, flags switched).  Then:

1. ``Classification.what_if(changes)`` labels every unit as bombcell does when it classifies
   with the changed parameters;
2. the sole blockers of every criterion are exactly the units bombcell labels GOOD when that one
   threshold is relaxed (``relaxed_value``) and were not GOOD before.
"""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import phy_bc_reason_plugin as pr
from bombcell_tables import DEFAULTS, bombcell_labels, metric_table, write_results
from test_equivalence import param_sets

THRESHOLD_PARAMS = [k for k in pr.SETTABLE_PARAMS if k not in pr.FLAG_PARAMS]


@st.composite
def change_sets(draw):
    changes = {}
    for key in draw(st.lists(st.sampled_from(pr.SETTABLE_PARAMS), min_size=1, max_size=5,
                             unique=True)):
        if key in pr.FLAG_PARAMS:
            changes[key] = draw(st.booleans())
        else:
            base = float(DEFAULTS[key])
            changes[key] = draw(st.sampled_from(
                [base * 0.5, base * 2.0, base * 1.1, -base, 0.0, np.inf, -np.inf]))
    return changes


def classify(params, metrics):
    complete, _ = pr.complete_params(params)
    return pr.Classification(complete, metrics, np.arange(len(metrics["nSpikes"])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=param_sets(odd=False), changes=change_sets(), seed=st.integers(0, 2**32 - 1),
       n_units=st.integers(1, 100))
def test_what_if_labels_equal_bombcell_with_the_changed_parameters(params, changes, seed, n_units):
    metrics = metric_table(params, seed, n_units)
    try:
        real = classify(params, metrics)
    except pr.BombcellReasonError:
        return  # saved parameters bombcell itself cannot classify: test_equivalence's business
    ours = real.what_if(changes)
    changed = dict(real.params, **changes)  # what bombcell reads: the completed saved set, changed
    assert ours.label.tolist() == bombcell_labels(changed, metrics).tolist()
    # The same as classifying the changed parameters from scratch, reasons included.
    fresh = pr.Classification(changed, metrics, real.cluster_ids)
    assert ours.reason.tolist() == fresh.reason.tolist()
    assert (ours.fails == fresh.fails).all() and (ours.decisive == fresh.decisive).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=param_sets(odd=False), seed=st.integers(0, 2**32 - 1), n_units=st.integers(1, 100))
def test_sole_blockers_equal_bombcell_relabelling_with_one_threshold_relaxed(params, seed, n_units):
    metrics = metric_table(params, seed, n_units)
    try:
        ours = classify(params, metrics)
    except pr.BombcellReasonError:
        return
    blockers = pr.sole_blockers(ours)
    before = bombcell_labels(ours.params, metrics)
    assert before.tolist() == ours.label.tolist()
    for i, rule in enumerate(pr.RULES):
        if rule.op == "isnan":
            assert not blockers[i].any()
            continue
        after = bombcell_labels(dict(ours.params, **{rule.param: pr.relaxed_value(rule)}), metrics)
        freed = (after == "GOOD") & (before != "GOOD")
        assert blockers[i].tolist() == freed.tolist(), rule.name


def test_route_a_units_are_freed_by_any_of_the_four_shape_tests():
    metrics = metric_table(DEFAULTS, 3, 300, designs=("route A",))
    result = classify(DEFAULTS, metrics)
    route_a = (result.label == "NON-SOMA") & result.fails[pr.IS_ROUTE_A].all(axis=0) \
        & ~result.fails[pr.IS_MUA | pr.IS_NOISE | pr.IS_ROUTE_B].any(axis=0)
    assert route_a.sum() > 10
    blockers = pr.sole_blockers(result)
    for i in np.flatnonzero(pr.IS_ROUTE_A):
        assert blockers[i, route_a].all()
    summary = result.summary()
    shape = [c for c in summary["criteria"] if c["stage"] == "non-somatic A"]
    assert all(c["n_sole_blocker"] >= route_a.sum() for c in shape)


def test_summary_fields_order_and_counts():
    metrics = metric_table(DEFAULTS, 5, 400)
    result = classify(DEFAULTS, metrics)
    summary = result.summary()
    assert summary["n_units"] == 400 and summary["what_if"] == {}
    assert sum(summary["labels"].values()) == 400
    criteria = summary["criteria"]
    assert len(criteria) == len(pr.RULES)
    for c in criteria:
        for key in ("stage", "metric", "op", "param", "threshold", "n_fail", "n_sole_blocker",
                    "n_decisive", "enabled", "quantiles"):
            assert key in c
        assert set(c["quantiles"]) == {"min", "q05", "q25", "median", "q75", "q95", "max"}
    order = [(-(c["n_sole_blocker"] or 0), -c["n_fail"]) for c in criteria]
    assert order == sorted(order)  # the thresholds blocking the most units first
    rpv = next(c for c in criteria if c["param"] == "maxRPVviolations")
    labelled = ~np.isnan(result.codes)
    i = [r.param for r in pr.RULES].index("maxRPVviolations")
    assert rpv["n_fail"] == int(result.fails[i, labelled].sum())
    values = result.values[i, labelled]
    assert rpv["quantiles"]["median"] == pytest.approx(np.nanmedian(values))
    json.dumps(summary)  # JSON-able as it is


def test_what_if_reads_no_file_and_changes_add_up(tmp_path):
    write_results(tmp_path, n_units=200, seed=2)
    real = pr.classify_dataset(tmp_path)
    for path in (tmp_path / "bombcell").iterdir():  # nothing left to read
        path.unlink()
    a = real.what_if({"maxRPVviolations": 0.5})
    ab = a.what_if({"minNumSpikes": "50"})
    assert ab.changes == {"maxRPVviolations": 0.5, "minNumSpikes": 50.0}
    assert ab.real is real and a.real is real
    assert ab.label.tolist() == real.what_if({"maxRPVviolations": 0.5, "minNumSpikes": 50}).label.tolist()
    # Back to the saved values: the real classification itself.
    assert ab.what_if({"maxRPVviolations": real.params["maxRPVviolations"],
                       "minNumSpikes": real.params["minNumSpikes"]}) is real
    assert real.changes == {} and pr.whatif_header(real) == ""
    header = pr.whatif_header(ab)
    assert header.startswith("WHAT-IF") and "maxRPVviolations=0.5 (saved 0.1)" in header
    assert not ab.label_differs.any()  # a what-if differs from bombcell's saved labels on purpose


@pytest.mark.parametrize("changes, message", [
    ({"maxRPVviolatons": 0.5}, "unknown parameter 'maxRPVviolatons' (did you mean maxRPVviolations?)"),
    ({"maxRPVviolations": "abc"}, "bad value for threshold maxRPVviolations: 'abc'"),
    ({"maxRPVviolations": float("nan")}, "bad value for threshold maxRPVviolations: NaN"),
    ({"maxRPVviolations": True}, "bad value for threshold maxRPVviolations"),
    ({"computeDrift": "maybe"}, "bad value for flag computeDrift: 'maybe'"),
    ({"computeDrift": 2}, "bad value for flag computeDrift: 2"),
    (["maxRPVviolations"], "expected PARAM=VALUE"),
])
def test_bad_changes_are_one_line_naming_the_parameter(changes, message):
    with pytest.raises(pr.BombcellReasonError) as e:
        pr.check_changes(changes)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_changes_parse_text_as_the_cli_gives_it():
    assert pr.check_changes(["maxRPVviolations=0.5", "computeDrift=true", "minNumSpikes=inf",
                             "extractRaw=off"]) == {
        "maxRPVviolations": 0.5, "computeDrift": True, "minNumSpikes": np.inf, "extractRaw": False}


def test_params_file_is_what_bombcell_takes(tmp_path):
    path = pr.write_params_file(tmp_path / "p.json", {"maxRPVviolations": 0.5, "minNumSpikes": np.inf,
                                                      "computeDrift": True})
    loaded = json.loads(path.read_text())
    assert loaded == {"maxRPVviolations": 0.5, "minNumSpikes": np.inf, "computeDrift": True}
    # bombcell classifies with the saved parameters updated from the file as with the what-if
    metrics = metric_table(DEFAULTS, 9, 150)
    real = classify(DEFAULTS, metrics)
    ours = real.what_if(loaded)
    assert ours.label.tolist() == bombcell_labels(dict(real.params, **loaded), metrics).tolist()

"""The SpikeInterface route against the real ``spikeinterface.curation.bombcell_label_units``.

Hypothesis draws a seed (and a unit count, split on/off, string or integer unit ids); numpy then
draws a threshold dictionary (sections absent or empty, sides None or NaN, ``abs``, extra
non-somatic metrics, metrics not in the table) and a metric table around those thresholds (values
exactly at a bound, NaN, +-inf, both signs).  The table is written as run_bombcell_qc writes its
results, and the plugin reads it back from the files.  For every table, against SpikeInterface:

1. the label of every unit, and the saved label read back;
2. the verdict of every criterion (one side of one metric) on every unit, each in its own
   SpikeInterface call: alone in its section (non-somatic width and ratio sides with a partner
   group that always holds);
3. that the deciding criteria decide: disabling all of them changes SpikeInterface's label, and
   disabling every other failing criterion keeps it.
"""
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import phy_bc_reason_plugin as pr
import spikeinterface_data as sid

si = sid.spikeinterface_or_skip()


def classify_like_run_bombcell_qc(tmp, metrics, thresholds, split):
    """Write run_bombcell_qc's files for this table (+ export_to_phy's id map where the ids are
    strings), classify them with the plugin.  Returns (result, SI labels in table order, phy id
    of each table row)."""
    dataset = Path(tmp) / "phy"
    labels = sid.si_labels(metrics, thresholds, split)
    sid.write_si_results(dataset / "bombcell", metrics, labels, thresholds, split)
    if isinstance(metrics.index[0], str):
        sid.write_unit_id_map(dataset, metrics.index)
        phy_ids = np.arange(len(metrics))
    else:
        phy_ids = metrics.index.to_numpy()
    return pr.classify_dataset(dataset), labels, phy_ids


def probe(metrics, rule, forced=None):
    """SpikeInterface's verdict on one criterion alone: True where it fails."""
    sides = {"greater": None, "less": None, "abs": rule.abs}
    sides[rule.param.rsplit(".", 1)[1]] = rule.threshold
    section = {rule.metric: sides}
    table = metrics
    if forced:  # a partner group that always holds (its column replaced by a failing value)
        name, value, partner_sides = forced
        table = metrics.copy()
        table[name] = value
        section[name] = partner_sides
    labels = sid.si_labels(table, {rule.stage: section}, split=False)
    return labels == {"noise": "noise", "mua": "mua"}.get(rule.stage, "non_soma")


def partner(rule):
    if rule.route == "width":  # ratio group holds: peak_before_to_trough_ratio 1 > less 0
        return "peak_before_to_trough_ratio", 1.0, {"greater": None, "less": 0.0}
    if rule.route == "ratio":  # width group holds: trough_width 0 < greater 1
        return "trough_width", 0.0, {"greater": 1.0, "less": None}
    return None


# 150 tables of 20-120 units: at least 3,000 units in every run (7,305 in a measured one).
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_units=st.integers(20, 120), split=st.booleans(),
       string_ids=st.booleans())
def test_labels_and_criteria_equal_spikeinterface(seed, n_units, split, string_ids):
    rng = np.random.default_rng(seed)
    thresholds = sid.random_thresholds(rng)
    metrics = sid.random_metrics(rng, thresholds, n_units, string_ids=string_ids)
    with tempfile.TemporaryDirectory() as tmp:
        result, theirs, phy_ids = classify_like_run_bombcell_qc(tmp, metrics, thresholds, split)
    assert result.cluster_ids.tolist() == phy_ids.tolist()
    expected = [pr.SI_LABEL_NAMES[label] for label in theirs]
    assert result.label.tolist() == expected
    assert result.bombcell_label.tolist() == expected and not result.label_differs.any()
    for i, rule in enumerate(result.rules):
        verdict = probe(metrics, rule, partner(rule))
        assert result.fails[i].tolist() == verdict.tolist(), rule.name


def _with_disabled(thresholds, rules):
    """The thresholds with these criteria's sides set to None."""
    changed = json.loads(json.dumps(thresholds))
    for rule in rules:
        section, metric, side = rule.param.rsplit(".", 2)
        changed[section][metric][side] = None
    return changed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_units=st.integers(1, 80), split=st.booleans())
def test_deciding_criteria_decide_the_label(seed, n_units, split):
    rng = np.random.default_rng(seed)
    thresholds = sid.random_thresholds(rng)
    metrics = sid.random_metrics(rng, thresholds, n_units)
    with tempfile.TemporaryDirectory() as tmp:
        result, theirs, _ = classify_like_run_bombcell_qc(tmp, metrics, thresholds, split)
    rules = result.rules
    # Units grouped by (deciding criteria, other failing criteria): one SI call per group.
    groups = {}
    for unit in range(n_units):
        decisive = tuple(np.flatnonzero(result.decisive[:, unit]))
        others = tuple(np.flatnonzero(result.fails[:, unit] & ~result.decisive[:, unit]))
        groups.setdefault((decisive, others), []).append(unit)
        assert (result.label[unit] == "GOOD") == (not decisive), (unit, result.label[unit])
        assert set(decisive) <= set(np.flatnonzero(result.fails[:, unit]))
    for (decisive, others), units in groups.items():
        table = metrics.iloc[units]
        if decisive:
            changed = sid.si_labels(table, _with_disabled(thresholds, [rules[i] for i in decisive]),
                                    split)
            assert (changed != theirs[units]).all(), [rules[i].name for i in decisive]
        if others:
            kept = sid.si_labels(table, _with_disabled(thresholds, [rules[i] for i in others]),
                                 split)
            assert (kept == theirs[units]).all(), [rules[i].name for i in others]


@pytest.mark.parametrize("split", [False, True])
def test_generated_tables_give_every_label_a_share(split, record_property):
    """The generator behind the property tests gives every label (SpikeInterface's own) a
    share, so precedence, the split and the non-somatic groups see many units."""
    labels = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        thresholds = sid.random_thresholds(rng)
        labels += sid.si_labels(sid.random_metrics(rng, thresholds, 80), thresholds, split).tolist()
    wanted = ["good", "mua", "noise"] + (["non_soma_good", "non_soma_mua"] if split else ["non_soma"])
    share = {k: labels.count(k) / len(labels) for k in wanted}
    record_property("label_share", share)
    print(f"split={split}: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    assert min(share.values()) >= 0.02, share


def test_rules_follow_this_spikeinterface():
    """The constants the rules are built from are SpikeInterface 0.105.3's."""
    from spikeinterface.curation import bombcell_curation as bc
    assert pr.SPIKEINTERFACE_VERSION == si.__version__ == sid.SI_VERSION
    assert pr.SI_DEFAULT_THRESHOLDS == bc.bombcell_get_default_thresholds()
    assert set(pr.SI_NAN_FAILS_MUA) == bc._NAN_MEANS_FAIL_METRICS
    groups = {"width": bc._NON_SOMATIC_WIDTH_GROUP, "ratio": bc._NON_SOMATIC_RATIO_GROUP,
              "main peak": bc._NON_SOMATIC_MAIN_PEAK_GROUP}
    for name, metrics in groups.items():
        assert {m for m, g in pr.SI_GROUPS.items() if g == name} == metrics


def test_narrow_csv_passed_column_contradicts_the_labels(tmp_path):
    """Why the plugin never reads labeling_results_narrow.csv: its "passed" ignores abs and
    fails NaN in every stage, so a GOOD unit can have a failed row (as the issue says)."""
    import pandas as pd
    from spikeinterface.curation import save_bombcell_results
    thresholds = {"mua": {"amplitude_median": {"greater": 30, "less": None, "abs": True},
                          "snr": {"greater": 5, "less": None}}}
    metrics = pd.DataFrame({"amplitude_median": [-80.0], "snr": [np.nan]}, index=[0])
    labels = sid.si_labels(metrics, thresholds, split=False)
    assert labels.tolist() == ["good"]
    save_bombcell_results(metrics, labels, thresholds, tmp_path, save_wide=False)
    narrow = pd.read_csv(tmp_path / "labeling_results_narrow.csv")
    assert not narrow["passed"].any()
    result, _, _ = classify_like_run_bombcell_qc(tmp_path / "x", metrics, thresholds, False)
    assert result.label.tolist() == ["GOOD"]
    assert result.reason[0] == "GOOD: passed all thresholds"


# -- reading: refusals in one line, ids ----------------------------------------------------------

def _folder(tmp_path, thresholds=None, config=None, string_ids=False, id_map=True):
    rng = np.random.default_rng(1)
    thresholds = thresholds or pr.SI_DEFAULT_THRESHOLDS
    metrics = sid.random_metrics(rng, thresholds, 20, string_ids=string_ids)
    dataset = tmp_path / "phy"
    labels = sid.si_labels(metrics, thresholds, False)
    sid.write_si_results(dataset / "bombcell", metrics, labels, thresholds, False)
    if config is not None:
        (dataset / "bombcell" / pr.SI_CONFIG).write_text(json.dumps(config))
    if string_ids and id_map:
        sid.write_unit_id_map(dataset, metrics.index)
    return dataset


@pytest.mark.parametrize("thresholds, fragment", [
    ({"noise": {}, "extra": {}}, "unknown section 'extra'"),
    ({"mua": {"snr": {"greater": "5"}}}, "mua.snr: '5' is not a number"),
    ({"mua": {"snr": {"greater": 5, "lower": 1}}}, "mua.snr: not an object of greater/less/abs"),
    ({"mua": {"snr": {"greater": 5, "abs": "yes"}}}, "mua.snr.abs"),
    ({"mua": {"snr": {"greater": True}}}, "mua.snr: True is not a number"),
    ({"mua": [1, 2]}, "section 'mua' is not a JSON object"),
])
def test_unknown_thresholds_structure_refused_in_one_line(tmp_path, thresholds, fragment):
    dataset = _folder(tmp_path)
    (dataset / "bombcell" / pr.SI_THRESHOLDS).write_text(json.dumps(thresholds))
    with pytest.raises(pr.BombcellReasonError) as e:
        pr.classify_dataset(dataset)
    message = str(e.value)
    assert "\n" not in message and fragment in message and pr.SI_THRESHOLDS in message
    assert pr.SPIKEINTERFACE_VERSION in message


def test_config_and_json_problems_in_one_line(tmp_path):
    dataset = _folder(tmp_path, config={"split_non_somatic": "no"})
    with pytest.raises(pr.BombcellReasonError, match=pr.SI_CONFIG):
        pr.classify_dataset(dataset)
    (dataset / "bombcell" / pr.SI_THRESHOLDS).write_text("{not json")
    with pytest.raises(pr.BombcellReasonError, match="not JSON"):
        pr.classify_dataset(dataset)


def test_dropped_thresholds_and_missing_config_are_notes(tmp_path):
    thresholds = json.loads(json.dumps(pr.SI_DEFAULT_THRESHOLDS))
    thresholds["mua"]["never_computed_metric"] = {"greater": 1, "less": None}
    dataset = _folder(tmp_path, thresholds=thresholds)
    (dataset / "bombcell" / pr.SI_CONFIG).unlink()
    result = pr.classify_dataset(dataset)
    assert any("mua.never_computed_metric" in n for n in result.notes)
    assert any(pr.SI_CONFIG in n and "split_non_somatic taken as False" in n for n in result.notes)
    assert all(r.metric != "never_computed_metric" for r in result.rules)


def test_string_ids_need_export_to_phys_map(tmp_path):
    dataset = _folder(tmp_path, string_ids=True, id_map=False)
    with pytest.raises(pr.BombcellReasonError) as e:
        pr.classify_dataset(dataset)
    assert "\n" not in str(e.value) and pr.SI_UNIT_ID_MAP in str(e.value)
    wide = (dataset / "bombcell" / pr.SI_WIDE_CSV).read_text().splitlines()
    sid.write_unit_id_map(dataset, [line.split(",")[0] for line in wide[1:]])
    assert len(pr.classify_dataset(dataset)) == 20


def test_units_left_out_by_export_to_phy_are_noted(tmp_path):
    """export_to_phy leaves out empty units: their rows have no phy cluster."""
    dataset = _folder(tmp_path, string_ids=True, id_map=False)
    wide = (dataset / "bombcell" / pr.SI_WIDE_CSV).read_text().splitlines()
    sid.write_unit_id_map(dataset, [line.split(",")[0] for line in wide[2:]])  # first one out
    result = pr.classify_dataset(dataset)
    assert len(result) == 19 and result.cluster_ids.tolist() == list(range(19))
    assert any("not in cluster_si_unit_ids.tsv" in n for n in result.notes)


def test_reading_needs_neither_spikeinterface_nor_pandas(tmp_path):
    dataset = _folder(tmp_path)
    code = ("import sys, phy_bc_reason_plugin as pr; r = pr.classify_dataset(sys.argv[1]); "
            "print(len(r), 'spikeinterface' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(dataset)], capture_output=True,
                         text=True, cwd=Path(pr.__file__).parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20", "False", "False"]


# -- the rule table ------------------------------------------------------------------------------

def test_readme_rule_table_is_what_rules_spikeinterface_prints(capsys):
    assert pr.main(["rules", "--spikeinterface"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == pr.spikeinterface_rules_markdown()
    readme = (Path(pr.__file__).parent / "README.md").read_text()
    assert printed in readme
    for rule in pr.spikeinterface_rules(pr.SI_DEFAULT_THRESHOLDS)[0]:
        assert rule.param in printed


def test_no_criterion_at_all_leaves_every_unit_good(tmp_path):
    """Every side switched off (or every section empty): no rule, SpikeInterface says good."""
    thresholds = {"noise": {"snr": {"greater": None, "less": float("nan")}}, "mua": {},
                  "non-somatic": {"trough_width": {"greater": None}}}
    result = pr.classify_dataset(_folder(tmp_path, thresholds=thresholds))
    assert result.rules == () and set(result.label) == {"GOOD"}
    assert set(result.reason) == {"GOOD: passed all thresholds"} and not result.label_differs.any()
    assert result.n_failing.tolist() == [0] * len(result)


def test_what_if_and_summary_refused_in_one_line(tmp_path):
    """What-ifs and sole blockers re-run bombcell's own table: refused on the SI route."""
    result = pr.classify_dataset(_folder(tmp_path))
    for call in (lambda: result.what_if({"maxRPVviolations": 0.5}), result.summary):
        with pytest.raises(pr.BombcellReasonError) as e:
            call()
        assert "\n" not in str(e.value) and "SpikeInterface route" in str(e.value)

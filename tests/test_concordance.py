"""Concordance and suggested thresholds (the curator's labels against bombcell's), checked
against bombcell 0.94's own suggest_parameter_adjustments on generated datasets."""
import contextlib
import io
import json
import warnings

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from bombcell_tables import DEFAULTS, bombcell_labels, metric_table, write_results

CURATOR = {"GOOD": "good", "NON-SOMA GOOD": "good", "NON-SOMA": "good", "MUA": "mua",
           "NON-SOMA MUA": "mua", "NOISE": "noise"}
MANUAL_NAMES = {"good": "Good", "mua": "MUA", "noise": "Noise"}


def write_group_tsv(dataset, labels):
    lines = ["cluster_id\tgroup"] + [f"{c}\t{g}" for c, g in sorted(labels.items())]
    (dataset / pr.GROUP_TSV).write_text("\n".join(lines) + "\n")


def bombcell_suggest(result, labels, **options):
    """bombcell's own suggest_parameter_adjustments(..., return_details=True) rows, on the same
    labels (in cluster-id order), metrics and parameters."""
    import pandas as pd
    from bombcell.manual_analysis import suggest_parameter_adjustments
    ids = sorted(c for c in labels if result.row(c) is not None)
    merged = pd.DataFrame({"unit_id": ids,
                           "manual_type_name": [MANUAL_NAMES[labels[c]] for c in ids],
                           "Bombcell_unit_type": [result.label[result.row(c)] for c in ids]})
    merged["Bombcell_unit_type_normalized"] = merged["Bombcell_unit_type"]  # only printed
    table = pd.DataFrame({k: np.asarray(v, dtype=float) for k, v in result.metrics.items()})
    table["phy_clusterID"] = result.cluster_ids
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, details = suggest_parameter_adjustments(merged, table, dict(result.params),
                                                   return_details=True, **options)
    return [{k: row[k] for k in pr.SUGGEST_COLUMNS} for row in details.to_dict("records")]


def same(a, b):
    """Equal values, NaN equal to NaN (bombcell's rows hold NaN where nothing was computed)."""
    nan = [isinstance(x, float) and np.isnan(x) for x in (a, b)]
    return nan[0] and nan[1] or (not any(nan) and a == b)


def assert_same_rows(ours, theirs):
    assert [r["parameter"] for r in ours] == [r["parameter"] for r in theirs]
    for o, t in zip(ours, theirs):
        for key in pr.SUGGEST_COLUMNS:
            assert same(o[key], t[key]), (o["parameter"], key, o[key], t[key])
    statuses = {r["status"] for r in ours}
    return statuses


def moved_dataset(tmp_path, metric, low, high, n_units=400, seed=1, params=None):
    """Units that pass every test but one metric spread uniformly over [low, high]."""
    params = dict(DEFAULTS if params is None else params)
    metrics = metric_table(params, seed, n_units, designs=("good",))
    metrics[metric] = np.random.default_rng(seed).uniform(low, high, n_units)
    metrics["RPV_status"] = np.ones(n_units)  # no uncertain-RPV forgiveness: bombcell's sweep ignores it
    write_results(tmp_path, params, metrics)
    return pr.classify_dataset(tmp_path), params, metrics


def labels_under(result, params, metrics, changes):
    """The curator's labels: bombcell's own labels under moved thresholds."""
    moved = bombcell_labels(dict(params, **changes), metrics)
    return {int(c): CURATOR[b] for c, b in zip(result.cluster_ids, moved) if b}


@pytest.mark.parametrize("param, metric, low, high, moved", [
    ("maxRPVviolations", "fractionRPVs_estimatedTauR", 0.0, 0.6, 0.3),
    ("minPresenceRatio", "presenceRatio", 0.0, 1.0, 0.4),
    ("maxWvBaselineFraction", "waveformBaselineFlatness", 0.0, 0.8, 0.5),
])
def test_finds_the_moved_threshold_as_bombcell_does(tmp_path, param, metric, low, high, moved):
    result, params, metrics = moved_dataset(tmp_path, metric, low, high)
    labels = labels_under(result, params, metrics, {param: moved})
    ours = pr.suggest(result, labels)
    assert_same_rows(ours, bombcell_suggest(result, labels))
    row = next(r for r in ours if r["parameter"] == param)
    assert row["status"] == "suggested"
    assert abs(row["suggested"] - moved) < 0.05 * (high - low)
    assert pr.suggested_changes(ours) == {param: row["suggested"]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_labels_give_bombcells_rows(tmp_path, seed):
    result, params, metrics = moved_dataset(tmp_path, "fractionRPVs_estimatedTauR", 0, 0.6,
                                            seed=seed)
    labels = labels_under(result, params, metrics, {"maxRPVviolations": 0.3})
    rng = np.random.default_rng(seed)
    for c in rng.choice(sorted(labels), len(labels) // 5, replace=False):
        labels[int(c)] = str(rng.choice(pr.CURATOR_GROUPS))
    assert_same_rows(pr.suggest(result, labels), bombcell_suggest(result, labels))


@pytest.mark.parametrize("seed", range(4))
def test_generated_tables_and_random_labels_give_bombcells_rows(tmp_path, seed):
    """Metrics around every threshold (NaN, inf, ties), labels at random, several options."""
    write_results(tmp_path, DEFAULTS, n_units=300, seed=seed)
    result = pr.classify_dataset(tmp_path)
    rng = np.random.default_rng(seed)
    labels = {int(c): str(g) for c, g in zip(result.cluster_ids,
                                             rng.choice(pr.CURATOR_GROUPS, len(result)))}
    options = {"min_units_per_class": 5, "n_bootstrap": 50, "random_seed": seed}
    assert_same_rows(pr.suggest(result, labels, **options),
                     bombcell_suggest(result, labels, **options))


def test_too_few_labels_says_how_many_more_of_which_class(tmp_path):
    result, params, metrics = moved_dataset(tmp_path, "fractionRPVs_estimatedTauR", 0, 0.6)
    labels = labels_under(result, params, metrics, {"maxRPVviolations": 0.3})
    few = dict(list(sorted(labels.items()))[:30])
    ours = pr.suggest(result, few)
    assert_same_rows(ours, bombcell_suggest(result, few))
    assert all(r["status"] == "too few labels" for r in ours)
    assert pr.suggested_changes(ours) == {}
    rpv = next(r for r in ours if r["parameter"] == "maxRPVviolations")
    needed = dict(t.split(": ", 1) for t in pr.labels_needed(ours))
    expected = " and ".join([f"{20 - rpv['n_pass']} more good"] * (rpv["n_pass"] < 20)
                            + [f"{20 - rpv['n_fail']} more mua"] * (rpv["n_fail"] < 20))
    assert needed["maxRPVviolations"] == expected
    # noise criteria: no unit is labelled noise
    assert needed["maxNPeaks"].endswith("20 more noise")


def test_concordance_counts(tmp_path):
    write_results(tmp_path, DEFAULTS, n_units=120, seed=3)
    result = pr.classify_dataset(tmp_path)
    rng = np.random.default_rng(0)
    groups = rng.choice(["good", "mua", "noise", "unsorted"], len(result))
    write_group_tsv(tmp_path, dict(zip(result.cluster_ids.tolist(), groups)))
    labels = pr.read_curator_labels(tmp_path)
    assert "unsorted" not in labels.values()
    assert len(labels) == int((groups != "unsorted").sum())
    info = pr.concordance(result, labels)
    assert sum(sum(row.values()) for row in info["confusion"].values()) == info["n_labelled"]
    for g in pr.CURATOR_GROUPS:
        mine = [result.label[result.row(c)] or pr.NO_LABEL for c, x in labels.items() if x == g]
        assert info["confusion"][g] == {b: mine.count(b) for b in set(mine)}
    agree = sum(g in pr.AGREEING_GROUPS.get(result.label[result.row(c)], ())
                for c, g in labels.items())
    assert info["n_agree"] == agree
    assert {d["cluster_id"] for d in info["disagreements"]} == {
        c for c, g in labels.items()
        if g not in pr.AGREEING_GROUPS.get(result.label[result.row(c)], ())}
    rpv = next(c for c in info["criteria"] if c["parameter"] == "maxRPVviolations")
    i = next(i for i, r in enumerate(pr.RULES) if r.param == "maxRPVviolations")
    assert rpv["kept_but_fails"] == sum(result.fails[i, result.row(c)]
                                        for c, g in labels.items() if g == "good")
    assert rpv["rejected_but_passes"] == sum(not result.fails[i, result.row(c)]
                                             for c, g in labels.items() if g == "mua")


def test_cli_concordance_and_suggest(tmp_path, capsys):
    result, params, metrics = moved_dataset(tmp_path, "fractionRPVs_estimatedTauR", 0, 0.6)
    labels = labels_under(result, params, metrics, {"maxRPVviolations": 0.3})
    write_group_tsv(tmp_path, labels)
    assert pr.main(["concordance", tmp_path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads(json.dumps(pr.concordance(result, labels)))
    assert set(info["confusion"]) == {"good", "mua", "noise"}
    assert pr.main(["concordance", tmp_path]) == 0
    assert "labelled units agree with bombcell" in capsys.readouterr().out

    saved = tmp_path / "suggested.json"
    assert pr.main(["suggest", tmp_path, "--json", "--save-params", saved]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [json.loads(json.dumps(pr.suggestion_json(r)))
                     for r in pr.suggest(result, labels)]
    rpv = next(r for r in lines if r["parameter"] == "maxRPVviolations")
    assert rpv["status"] == "suggested"
    assert json.loads(saved.read_text()) == {"maxRPVviolations": rpv["suggested"]}
    assert pr.main(["suggest", tmp_path]) == 0
    out = capsys.readouterr().out
    assert "->maxRPVviolations" in out.replace(" ", "")



def test_spikeinterface_route_concordance_only(tmp_path):
    """Results of bombcell's SpikeInterface route: labels compared, thresholds not suggested
    (suggest re-runs bombcell's own rule table, as the what-if does)."""
    import spikeinterface_data as sid
    sid.spikeinterface_or_skip()
    rng = np.random.default_rng(0)
    thresholds = sid.e2e_thresholds()
    metrics = sid.random_metrics(rng, thresholds, 40)
    sid.write_si_results(tmp_path / "bombcell", metrics, sid.si_labels(metrics, thresholds, False),
                         thresholds, False)
    result = pr.classify_dataset(tmp_path)
    assert result.route == "spikeinterface"
    labels = {int(c): "good" for c in result.cluster_ids}
    info = pr.concordance(result, labels)
    assert info["n_labelled"] == len(result) and info["criteria"] == []
    assert info["n_agree"] == sum(b in ("GOOD", "NON-SOMA GOOD", "NON-SOMA") for b in result.label)
    with pytest.raises(pr.BombcellReasonError, match="suggested thresholds work on bombcell's own"):
        pr.suggest(result, labels)

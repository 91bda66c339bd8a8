"""The reason engine on bombcell result files: outputs, the CLI, and every kind of bad input."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phy_bc_reason_plugin as pr
from bombcell_tables import DEFAULTS, bombcell_labels, metric_table, write_results


def snapshot(folder):
    """Every file below a folder with its content hash, to prove nothing else was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def run_cli(*args):
    """The installed console script's code path, in this process."""
    return pr.main([str(a) for a in args])


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "réc ording 1"  # spaces and non-ASCII letters in the path
    folder.mkdir()
    write_results(folder, n_units=60, seed=3)
    return folder


def read_tsv(path):
    from phylib.utils._misc import _read_tsv_simple
    return _read_tsv_simple(path)


# -- outputs -------------------------------------------------------------------------------------

def test_export_writes_two_column_tsv_phylib_reads(dataset, capsys):
    before = snapshot(dataset)
    assert run_cli("export", dataset) == 0
    out = capsys.readouterr().out
    assert "60 units" in out and str(dataset / pr.TSV_NAME) in out
    field, values = read_tsv(dataset / pr.TSV_NAME)
    assert field == pr.COLUMN
    result = pr.classify_dataset(dataset)
    assert values == result.reason_by_cluster()
    with open(dataset / pr.TSV_NAME, newline="") as f:
        assert next(csv.reader(f, delimiter="\t")) == ["cluster_id", pr.COLUMN]
    after = snapshot(dataset)
    assert set(after) - set(before) == {pr.TSV_NAME}
    assert all(after[k] == v for k, v in before.items())  # bombcell's files untouched


def test_labels_equal_bombcells_saved_labels(dataset):
    result = pr.classify_dataset(dataset)
    assert not result.label_differs.any()
    assert result.label.tolist() == result.bombcell_label.tolist()


def test_reason_text_format(tmp_path):
    n = 4
    metrics = {m: np.full(n, np.nan) for m in pr.RULES and {r.metric for r in pr.RULES}}
    metrics.update(nPeaks=np.array([1.0, 1, 1, 1]), nTroughs=np.ones(n), nSpikes=np.full(n, 1000.0))
    metrics["fractionRPVs_estimatedTauR"] = np.array([0.23, np.nan, np.nan, np.nan])
    metrics["mainPeakToTroughRatio"] = np.array([np.nan, np.nan, 1.2, np.nan])
    metrics["nTroughs"] = np.array([1, 1, 1, 3.0])
    result = pr.Classification(pr.complete_params(DEFAULTS)[0], metrics, [10, 11, 12, 13])
    assert result.reason.tolist() == [
        "MUA: fraction RPVs 0.23 > 0.1",
        "GOOD: passed all thresholds",
        "NON-SOMA: main peak/trough 1.2 > 0.8",
        "NOISE: # troughs 3 > 1",
    ]
    # The full names stay in the tooltip text, the view, the CLI table and the JSON.
    assert result.full_reason(10) == "MUA: fractionRPVs_estimatedTauR>maxRPVviolations (0.23 > 0.1)"
    assert result.n_failing.tolist() == [1, 0, 1, 1]


def test_n_failing_counts_what_can_change_the_label():
    partial = _one_unit(mainTrough_width=1, mainPeak_before_width=1, presenceRatio=0.1)
    whole = _one_unit(mainTrough_width=1, mainPeak_before_width=1, troughToPeak2Ratio=1,
                      peak1ToPeak2Ratio=9)
    params = pr.complete_params(DEFAULTS)[0]
    assert pr.Classification(params, partial, [1]).n_failing.tolist() == [1]  # 2 of 4 shape: 0
    assert pr.Classification(params, whole, [1]).n_failing.tolist() == [4]


def test_every_rule_has_a_short_name():
    assert all(r.short for r in pr.RULES)
    assert {"fraction RPVs", "presence ratio", "# peaks", "SNR"} <= {r.short for r in pr.RULES}


def test_value_printed_apart_from_threshold_it_fails():
    rule = next(r for r in pr.RULES if r.param == "maxRPVviolations")
    assert pr.criterion_text(rule, 0.10004, 0.1) == \
        "fractionRPVs_estimatedTauR>maxRPVviolations (0.10004 > 0.1)"
    assert pr.short_criterion_text(rule, 0.10004, 0.1) == "fraction RPVs 0.10004 > 0.1"


@pytest.mark.parametrize("value, threshold, expected", [
    (20.04, 20, ("20.04", "20")),             # never "20 > 20"
    (0.5, 0.7379924430231422, ("0.5", "0.738")),  # no more digits than the comparison needs
    (0.7379, 0.7379924430231422, ("0.7379", "0.738")),
    (0.738, 0.7379924430231422, ("0.738", "0.73799")),
    (20, 20, ("20", "20")),                   # equal values print equal (and pass)
    (1e-7, 0.01, ("1e-07", "0.01")),
    (1234.5, 1234.4, ("1234.5", "1234.4")),
    (np.inf, 5, ("inf", "5")),
    (np.nan, 5, ("NaN", "5")),
    ("inf", None, ("inf", "NaN")),
])
def test_comparison_numbers(value, threshold, expected):
    assert pr.comparison_numbers(value, threshold) == expected


def test_comparison_numbers_keep_every_order():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        t = float(rng.choice([0.1, 20, 0.7379924430231422, 1150, 3e-4])) * float(rng.choice([1, -1]))
        v = t * (1 + float(rng.normal(0, 1)) * 10.0 ** float(rng.integers(-12, 1)))
        vt, tt = pr.comparison_numbers(v, t)
        assert np.sign(float(vt) - float(tt)) == np.sign(v - t), (v, t, vt, tt)


def test_cli_table_numbers_show_the_comparison(capsys):
    params = pr.complete_params({**DEFAULTS, "minPresenceRatio": 0.7379924430231422})[0]
    metrics = _one_unit(presenceRatio=0.73799, fractionRPVs_estimatedTauR=0.1000004)
    result = pr.Classification(params, metrics, [5])
    text = result.explain_text(5)
    assert "0.73799 " in text and "0.738 " not in text.split("presenceRatio<")[1].split("\n")[0]
    assert "1000004" in text  # 0.1000004 > 0.1, not "0.1 > 0.1"
    assert result.reason[0] == "MUA: fraction RPVs 0.1000004 > 0.1 +1"


def test_explain_json(dataset, capsys):
    assert run_cli("explain", dataset, "--json") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 60
    objects = [json.loads(line) for line in lines]
    result = pr.classify_dataset(dataset)
    for obj in objects:
        assert isinstance(obj["cluster_id"], int)
        assert set(obj) == {"cluster_id", "label", "bombcell_label", "reason", "criteria",
                            "decisive", "notes"}
        assert len(obj["criteria"]) == len(pr.RULES)
        for c in obj["criteria"]:
            assert set(c) == {"stage", "metric", "op", "param", "name", "short", "threshold",
                              "value", "status", "margin", "decisive"}
            assert c["op"] in (">", "<", "isnan") and c["status"] in pr.STATUSES
            assert (c["param"] is None) == (c["op"] == "isnan")
        assert all(c["status"] == "fail" for c in obj["decisive"])
        assert obj["decisive"] == [c for c in obj["criteria"] if c["decisive"]]
        assert obj["reason"] == result.reason[result.row(obj["cluster_id"])]
        assert bool(obj["decisive"]) == (obj["label"] not in ("", "GOOD"))


def test_explain_one_cluster_text(dataset, capsys):
    assert run_cli("explain", dataset, "--cluster", 5) == 0
    out = capsys.readouterr().out
    assert out.startswith("cluster 5: ")
    assert out.count("\n  ") >= len(pr.RULES)


def test_python_api(dataset):
    frame = pr.load_reasons(dataset)
    assert len(frame) == 60
    assert {"cluster_id", "label", "bombcell_label", "reason", "n_failing"} <= set(frame.columns)
    assert "fractionRPVs_estimatedTauR>maxRPVviolations.status" in frame.columns
    assert frame["label"].tolist() == frame["bombcell_label"].tolist()
    text = pr.explain_cluster(dataset, int(frame.cluster_id[0]))
    assert text.startswith(f"cluster {frame.cluster_id[0]}: ")


def test_rules_table_in_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert pr.rules_markdown() in readme


# -- bombcell behaviours explained in notes --------------------------------------------------------

def _one_unit(**values):
    metrics = {r.metric: np.array([np.nan]) for r in pr.RULES}
    metrics.update(nPeaks=np.array([1.0]), nTroughs=np.array([1.0]), nSpikes=np.array([1000.0]))
    metrics.update({k: np.array([v], dtype=float) for k, v in values.items()})
    return metrics


@pytest.mark.parametrize("params, values, label, note", [
    ({"keepUncertainRPVUnits": True}, dict(fractionRPVs_estimatedTauR=0.5, RPV_status=0),
     "GOOD", "uncertain"),
    ({}, dict(nPeaks=np.nan), "NOISE", "fewer than 50 spikes"),
    ({}, dict(rawAmplitude=np.nan, signalToNoiseRatio=1.0), "GOOD", "skips it where rawAmplitude"),
    ({}, dict(presenceRatio=-np.inf), "MUA", "does not clean inf"),
    ({}, dict(nSpikes=0, presenceRatio=0.1), "", "no spikes"),
    ({}, dict(mainPeakToTroughRatio=2.0, presenceRatio=0.1), "NON-SOMA", "hides MUA failures"),
    ({}, dict(nTroughs=3, presenceRatio=0.1), "NOISE", "NOISE takes precedence"),
    ({}, dict(mainTrough_width=1, mainPeak_before_width=1), "GOOD", "2 of 4 shape-route tests"),
])
def test_notes(params, values, label, note):
    result = pr.Classification(pr.complete_params({**DEFAULTS, **params})[0], _one_unit(**values), [7])
    assert result.label[0] == label
    assert any(note in n for n in result.unit_notes(0)), result.unit_notes(0)


def test_non_soma_mua_names_both_parts():
    params = pr.complete_params({**DEFAULTS, "splitGoodAndMua_NonSomatic": True})[0]
    metrics = _one_unit(mainPeakToTroughRatio=2.0, presenceRatio=0.1,
                        troughToPeak2Ratio=1, mainPeak_before_width=1, mainTrough_width=1,
                        peak1ToPeak2Ratio=9)
    result = pr.Classification(params, metrics, [3])
    assert result.label[0] == "NON-SOMA MUA"
    reason = result.reason[0]
    assert reason == "NON-SOMA MUA: presence ratio 0.1 < 0.7 +5"  # the MUA part first
    full = result.full_reason(3)
    assert full.startswith("NON-SOMA MUA: presenceRatio<minPresenceRatio (0.1 < 0.7); ")
    assert "mainPeakToTroughRatio>" in full and "troughToPeak2Ratio<" in full
    assert [c["metric"] for c in result.explain(3)["decisive"]] == [
        "presenceRatio", "troughToPeak2Ratio", "mainPeak_before_width", "mainTrough_width",
        "peak1ToPeak2Ratio", "mainPeakToTroughRatio"]


def test_saved_label_that_differs_is_flagged(tmp_path):
    params, _ = write_results(tmp_path, n_units=20, seed=1)
    # The user lowered a threshold after bombcell ran and saved the parameters again.
    pd.DataFrame([{**params, "maxNTroughs": -1}]).to_parquet(
        tmp_path / "bombcell" / pr.PARAMS_FILE)
    result = pr.classify_dataset(tmp_path)
    assert result.label_differs.any()
    unit = int(np.flatnonzero(result.label_differs)[0])
    assert "(bombcell saved" in result.reason[unit]
    assert any("differs" in n for n in result.notes)
    assert any("saved the label" in n for n in result.unit_notes(unit))


def test_saved_labels_from_tsv_when_parquet_has_none(tmp_path):
    write_results(tmp_path, n_units=10, seed=2, labels=False)
    result = pr.classify_dataset(tmp_path)
    assert result.bombcell_label.tolist() == [None] * 10
    # bombcell writes cluster ids as floats in its TSVs
    lines = ["cluster_id\tbc_unitType"] + [f"{float(c)}\t{lab}" for c, lab in
                                           zip(result.cluster_ids, result.label)]
    (tmp_path / pr.UNIT_TYPE_TSV).write_text("\n".join(lines) + "\n")
    assert pr.classify_dataset(tmp_path).bombcell_label.tolist() == result.label.tolist()


def test_old_params_get_backcompat_defaults(tmp_path):
    old = {k: v for k, v in DEFAULTS.items() if k not in pr.BACKCOMPAT_DEFAULTS}
    write_results(tmp_path, params=old, n_units=30, seed=4)
    result = pr.classify_dataset(tmp_path)
    assert any("back-compatibility defaults" in n for n in result.notes)
    assert any("shape route is switched off" in n for n in result.notes)
    assert result.label.tolist() == result.bombcell_label.tolist()


def test_param_keys_with_trailing_space(tmp_path):
    params = {(k + " " if k in ("maxRPVviolations", "minSNR") else k): v for k, v in DEFAULTS.items()}
    write_results(tmp_path, params=DEFAULTS, n_units=30, seed=5)
    pd.DataFrame([params]).to_parquet(tmp_path / "bombcell" / pr.PARAMS_FILE)
    # bombcell does not strip keys: "maxRPVviolations " is not maxRPVviolations, which has no
    # back-compatibility default, so bombcell's classifier raises KeyError.  We say so in one line.
    with pytest.raises(pr.BombcellReasonError, match=r"maxRPVviolations.*stray spaces"):
        pr.classify_dataset(tmp_path)
    # A key with a back-compatibility default gets the default, as in bombcell, with a note.
    params = {(k + " " if k == "extractRaw" else k): v for k, v in DEFAULTS.items()}
    params["extractRaw "] = False
    pd.DataFrame([params]).to_parquet(tmp_path / "bombcell" / pr.PARAMS_FILE)
    result = pr.classify_dataset(tmp_path)
    assert result.params["extractRaw"] is True
    assert any("'extractRaw '" in note for note in result.notes)
    assert result.label.tolist() == bombcell_labels(params, result.metrics).tolist()


def test_all_nan_metrics_are_noise(tmp_path):
    metrics = {r.metric: np.full(5, np.nan) for r in pr.RULES}
    metrics["nSpikes"] = np.array([0, 10, 20, 30, 40.0])
    write_results(tmp_path, metrics=metrics)
    result = pr.classify_dataset(tmp_path)
    assert result.label.tolist() == ["", "NOISE", "NOISE", "NOISE", "NOISE"]
    assert result.reason[1] == "NOISE: # peaks is NaN"


# -- bad input -------------------------------------------------------------------------------------

def _assert_fails_cleanly(folder, capsys, *words):
    before = snapshot(folder)
    assert run_cli("export", folder) != 0
    err = capsys.readouterr().err
    line = err.strip().splitlines()[0]
    assert "Traceback" not in err
    for word in words:
        assert word in line, line
    assert snapshot(folder) == before  # nothing written, nothing changed


def test_missing_bombcell_folder(tmp_path, capsys):
    _assert_fails_cleanly(tmp_path, capsys, "no bombcell results folder", str(tmp_path / "bombcell"))


def test_empty_bombcell_folder(tmp_path, capsys):
    (tmp_path / "bombcell").mkdir()
    _assert_fails_cleanly(tmp_path, capsys, "empty", "run bombcell")


@pytest.mark.parametrize("name", [pr.PARAMS_FILE, pr.METRICS_FILE])
def test_missing_results_file(dataset, capsys, name):
    (dataset / "bombcell" / name).unlink()
    _assert_fails_cleanly(dataset, capsys, name, "missing", "re-run bombcell")


@pytest.mark.parametrize("name", [pr.PARAMS_FILE, pr.METRICS_FILE])
def test_truncated_parquet(dataset, capsys, name):
    path = dataset / "bombcell" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _assert_fails_cleanly(dataset, capsys, name, "cannot be read", "re-run bombcell")


def test_metric_column_missing(dataset, capsys):
    path = dataset / "bombcell" / pr.METRICS_FILE
    pd.read_parquet(path).drop(columns=["presenceRatio"]).to_parquet(path)
    _assert_fails_cleanly(dataset, capsys, "presenceRatio", "missing", pr.METRICS_FILE)


def test_parameter_without_default_missing(dataset, capsys):
    path = dataset / "bombcell" / pr.PARAMS_FILE
    pd.read_parquet(path).drop(columns=["maxNPeaks"]).to_parquet(path)
    _assert_fails_cleanly(dataset, capsys, "maxNPeaks", "re-run bombcell", pr.PARAMS_FILE)


def test_old_snake_case_results(tmp_path, capsys):
    (tmp_path / "bombcell").mkdir()
    pd.DataFrame([{"max_n_peaks": 2, "max_n_troughs": 1}]).to_parquet(tmp_path / "bombcell" / pr.PARAMS_FILE)
    pd.DataFrame({"n_peaks": [1.0], "n_spikes": [100.0]}).to_parquet(tmp_path / "bombcell" / pr.METRICS_FILE)
    _assert_fails_cleanly(tmp_path, capsys, "0.31 or older", "re-run bombcell >= 0.94")


def test_tsv_cannot_be_written(dataset, capsys):
    (dataset / pr.TSV_NAME).mkdir()  # as root, permissions do not stop a write; a folder does
    before = snapshot(dataset)
    assert run_cli("export", dataset) != 0
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err
    assert snapshot(dataset) == before
    assert not [p for p in dataset.iterdir() if p.name.endswith(".tmp")]


def curated_spike_clusters(dataset, kept, new_ids, n_new=10):
    """spike_clusters.npy of a curated dataset: bombcell's clusters ``kept`` with the number of
    spikes bombcell counted, the others gone into the new clusters ``new_ids`` (merges, splits)."""
    n_spikes = pr.classify_dataset(dataset).metrics["nSpikes"].astype(int)
    ids = np.concatenate([np.repeat(kept, n_spikes[kept]), np.repeat(new_ids, n_new)])
    np.save(dataset / "spike_clusters.npy", np.random.default_rng(0).permutation(ids))


def test_phy_clusters_bombcell_does_not_know(dataset, capsys):
    curated_spike_clusters(dataset, [0, 1, 2], [100, 101])
    assert run_cli("export", dataset, "-v") == 0
    assert "2 phy cluster(s) have no bombcell row" in capsys.readouterr().out
    _, values = read_tsv(dataset / pr.TSV_NAME)
    assert values[100].startswith("UNCLASSIFIED: no bombcell row")
    assert values[0] == pr.classify_dataset(dataset).reason[0]


def test_no_shared_clusters_is_an_error(dataset, capsys):
    np.save(dataset / "spike_clusters.npy", np.arange(500, 510))
    _assert_fails_cleanly(dataset, capsys, "none of the dataset's 10 clusters")


def test_many_folders_go_on_past_a_broken_one(tmp_path, dataset, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    other = tmp_path / "other"
    write_results(other, n_units=5, seed=9)
    assert run_cli("export", dataset, broken, other) == 1
    captured = capsys.readouterr()
    assert "[1/3]" in captured.out and "[3/3]" in captured.out and "[2/3]" in captured.err
    assert "1 of 3 dataset(s) failed" in captured.err
    assert (dataset / pr.TSV_NAME).exists() and (other / pr.TSV_NAME).exists()
    assert not (broken / pr.TSV_NAME).exists()


def test_params_py_path_accepted(dataset, capsys):
    (dataset / "params.py").write_text("dat_path = 'x.bin'\n")
    assert run_cli("export", dataset / "params.py") == 0
    assert (dataset / pr.TSV_NAME).exists()


def test_console_script_runs_without_phy_or_bombcell(dataset):
    """The CLI imports neither phy nor bombcell (seconds of start-up, and bombcell prints)."""
    code = ("import sys, phy_bc_reason_plugin as p; rc = p.main(['export', sys.argv[1]]); "
            "assert not {'phy', 'bombcell'} & set(sys.modules); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(dataset)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(str(dataset / pr.TSV_NAME))


def test_export_keeps_merge_and_split_texts_the_plugin_recorded(dataset):
    curated_spike_clusters(dataset, [0, 1], [100, 101, 102])
    merged = "UNCLASSIFIED: merged from 3, 4 after bombcell ran; re-run bombcell"
    (dataset / pr.TSV_NAME).write_text(
        f"cluster_id\t{pr.COLUMN}\n0\tstale text\n100\t{merged}\n101\tsomething else\n")
    assert run_cli("export", dataset) == 0
    _, values = read_tsv(dataset / pr.TSV_NAME)
    assert values[100] == merged
    assert values[101] == values[102] == pr.NO_ROW_REASON
    assert values[0] == pr.classify_dataset(dataset).reason[0]


def test_install_command(tmp_path, capsys):
    config_dir = tmp_path / "dot phy"
    assert run_cli("install", "--config-dir", config_dir) == 0
    assert "enabled BombcellReasonPlugin" in capsys.readouterr().out
    assert run_cli("install", "--config-dir", config_dir) == 0
    assert "already enabled" in capsys.readouterr().out
    assert "import phy_bc_reason_plugin" in (config_dir / "phy_config.py").read_text()


# -- a write interrupted half way --------------------------------------------------------------------

_WRITE_UNDER_LIMIT = r"""
import resource, signal, sys
import phy_bc_reason_plugin as pr
# Python ignores SIGXFSZ, so a write past the limit raises EFBIG (as on a full disk); with the
# default action the kernel kills the writer in the middle of the file.
if sys.argv[2] == "killed":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # files may not grow past 1 kB
if sys.argv[2] == "killed":
    reasons = {i: "MUA: presenceRatio<minPresenceRatio (0.5 < 0.7) " + "x" * 40 for i in range(2000)}
    pr.write_reason_tsv(sys.argv[1], reasons)
else:
    sys.exit(pr.main(["export", sys.argv[1]]))
"""


@pytest.mark.parametrize("how", ["killed", "raise"])
def test_interrupted_write_leaves_the_previous_tsv_intact(dataset, how):
    """The writer killed by the kernel (SIGXFSZ) or failing (disk full) half way through: phy's
    folder still holds the previous, complete TSV (the write goes to a temporary file that is
    renamed over it only when complete)."""
    previous = f"cluster_id\t{pr.COLUMN}\n0\tGOOD: passed all thresholds\n"
    (dataset / pr.TSV_NAME).write_text(previous)
    proc = subprocess.run([sys.executable, "-c", _WRITE_UNDER_LIMIT, str(dataset), how],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode != 0  # it did fail half way
    if how == "killed":
        assert proc.returncode == -__import__("signal").SIGXFSZ
    else:
        assert proc.returncode == pr.EXIT_INPUT and "File too large" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert (dataset / pr.TSV_NAME).read_text() == previous
    if how == "raise":  # a failure that Python sees cleans up after itself
        assert not [p for p in os.listdir(dataset) if p.endswith(".tmp")]


# -- phy's environment without pyarrow: bombcell's CSV twins -----------------------------------------

_WITHOUT_PYARROW = r"""
import json, sys
sys.modules["pyarrow"] = sys.modules["pyarrow.parquet"] = None  # as in `pip install phy` alone
import phy_bc_reason_plugin as pr
try:
    r = pr.classify_dataset(sys.argv[1])
except pr.BombcellReasonError as e:
    print(json.dumps({"error": str(e)}))
else:
    print(json.dumps({"label": r.label.tolist(), "reason": r.reason.tolist(),
                      "values": r.values.tolist(), "bombcell_label": r.bombcell_label.tolist(),
                      "notes": r.notes, "pyarrow": "pyarrow" in sys.modules and sys.modules["pyarrow"] is not None}))
"""


def _classified_without_pyarrow(folder):
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_PYARROW, str(folder)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("params", [dict(DEFAULTS), dict(DEFAULTS, keepUncertainRPVUnits=True,
                                                         splitGoodAndMua_NonSomatic=True)])
def test_csv_twins_read_like_the_parquet_files(tmp_path, params):
    write_results(tmp_path, params=params, n_units=300, seed=11)
    ours = pr.classify_dataset(tmp_path)
    twin = _classified_without_pyarrow(tmp_path)
    assert twin["pyarrow"] is False
    assert twin["label"] == ours.label.tolist()
    assert twin["reason"] == ours.reason.tolist()
    assert twin["bombcell_label"] == ours.bombcell_label.tolist()
    np.testing.assert_array_equal(np.array(twin["values"], dtype=float), ours.values)
    # one reader: the same columns and values from either file
    parquet = pr._read_columns(tmp_path / "bombcell" / pr.METRICS_FILE)
    csv_ = pr._read_csv_columns(tmp_path / "bombcell" / pr.METRICS_FILE.replace(".parquet", ".csv"))
    assert list(parquet) == list(csv_)
    for name in parquet:
        a, b = np.array(parquet[name], dtype=object), np.array(csv_[name], dtype=object)
        if name == "bc_unitType":
            assert [x or "" for x in a] == [("" if x is pr.EMPTY_CSV_CELL else x) for x in b]
        else:
            np.testing.assert_array_equal(a.astype(float), np.array(
                [np.nan if x is pr.EMPTY_CSV_CELL else x for x in b], dtype=float))
    from_parquet = pr._read_params(tmp_path / "bombcell" / pr.PARAMS_FILE)
    from_csv = {k: v[0] for k, v in pr._read_csv_columns(
        tmp_path / "bombcell" / pr.PARAMS_FILE.replace(".parquet", ".csv")).items()}
    assert from_parquet == from_csv
    assert {k: type(v) for k, v in from_parquet.items()} == {k: type(v) for k, v in from_csv.items()}


def test_parquet_only_without_pyarrow_says_the_fix(tmp_path):
    write_results(tmp_path, n_units=10, seed=1)
    for csv_twin in (tmp_path / "bombcell").glob("*.csv"):
        csv_twin.unlink()
    error = _classified_without_pyarrow(tmp_path)["error"]
    assert "pip install pyarrow" in error and "\n" not in error


# -- other bombcell versions ---------------------------------------------------------------------------

def test_newer_bombcell_named_on_every_explanation_and_the_summary(dataset, capsys):
    params = pd.read_parquet(dataset / "bombcell" / pr.PARAMS_FILE)
    params["computeDCISI"] = True
    params["rpvMethod"] = "hill"
    params.to_parquet(dataset / "bombcell" / pr.PARAMS_FILE)
    metrics = pd.read_parquet(dataset / "bombcell" / pr.METRICS_FILE)
    metrics["dcisi_fdr"] = 0.1
    metrics.drop(columns=["bc_unitType"]).to_parquet(dataset / "bombcell" / pr.METRICS_FILE)
    result = pr.classify_dataset(dataset)
    for unit in range(len(result)):
        assert any("newer than 0.94" in n and "computeDCISI" in n and "dcisi_fdr" in n
                   for n in result.unit_notes(unit))
    assert run_cli("export", dataset) == 0
    out = capsys.readouterr().out
    assert "newer than 0.94" in out and "rpvMethod" in out and "older" not in out


def test_matlab_results_refused_in_one_line(dataset, capsys):
    params = pd.read_parquet(dataset / "bombcell" / pr.PARAMS_FILE)
    params["saveMatFileForGUI"] = 1
    params.to_parquet(dataset / "bombcell" / pr.PARAMS_FILE)
    _assert_fails_cleanly(dataset, capsys, "MATLAB", "saveMatFileForGUI")


def test_known_names_cover_a_real_bombcell_run(demo_dataset):
    """Every parameter and metric a real bombcell 0.94 run writes is known (no false 'newer')."""
    params = pr._read_params(demo_dataset / "bombcell" / pr.PARAMS_FILE)
    metrics = pr._read_columns(demo_dataset / "bombcell" / pr.METRICS_FILE)
    assert pr.newer_bombcell_names(list(params) + list(metrics)) == []
    from bombcell.default_parameters import get_default_parameters
    for version in (2, 4):
        assert pr.newer_bombcell_names(get_default_parameters("/x", kilosort_version=version)) == []


def test_cli_exit_status_is_the_same_in_every_subcommand(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert run_cli("export", missing) == run_cli("explain", missing) == pr.EXIT_INPUT
    write_results(tmp_path / "ds", n_units=5, seed=2)
    assert run_cli("explain", tmp_path / "ds", "--cluster", 999) == pr.EXIT_INPUT
    err = capsys.readouterr().err
    assert "cluster 999: no such cluster" in err and "re-run bombcell" not in err
    with pytest.raises(SystemExit) as usage:
        run_cli("explain")
    assert usage.value.code == pr.EXIT_USAGE


def test_every_subcommand_help_has_an_example(capsys):
    for command in ("export", "explain", "rules", "install", "demo"):
        with pytest.raises(SystemExit) as done:
            run_cli(command, "--help")
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"phy-bc-reason {command}" in out


def test_demo_never_builds_a_dataset_named_like_an_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        run_cli("demo", "--", "--help")
    assert done.value.code == pr.EXIT_USAGE
    assert not (tmp_path / "--help").exists()


def test_json_bombcell_label_of_a_unit_without_spikes(tmp_path, capsys):
    metrics = metric_table(DEFAULTS, 0, 5)
    metrics["nSpikes"][:] = [0, 500, 500, 500, 500]
    write_results(tmp_path, metrics=metrics)
    assert run_cli("explain", tmp_path, "--json", "--cluster", 0) == 0
    info = json.loads(capsys.readouterr().out.strip())
    assert info["label"] == "" and info["bombcell_label"] == ""  # as the README says


@pytest.mark.parametrize("flag", ["keepUncertainRPVUnits", "splitGoodAndMua_NonSomatic",
                                  "extractRaw", "computeDrift", "computeDistanceMetrics",
                                  "computeSpatialDecay"])
@pytest.mark.parametrize("value", [float("nan"), None])
def test_flag_saved_as_nan_or_null_read_as_bombcell_reads_the_file(tmp_path, flag, value):
    """Through the files: bombcell's own saver and loader (pandas) against our reader."""
    import contextlib
    import io
    import bombcell
    params = dict(DEFAULTS, **{flag: value})
    write_results(tmp_path, params=params, n_units=200, seed=4, labels=False)
    with contextlib.redirect_stdout(io.StringIO()):
        param, metrics, _ = bombcell.load_bc_results(str(tmp_path / "bombcell"))
        try:
            _, expected = bombcell.get_quality_unit_type(param, metrics)
        except TypeError:  # computeSpatialDecay NaN/None: bombcell's `&` raises
            expected = None
    if expected is None:
        with pytest.raises(pr.BombcellReasonError, match=flag):
            pr.classify_dataset(tmp_path)
    else:
        assert pr.classify_dataset(tmp_path).label.tolist() == list(expected)


def test_demo_command_in_a_drop_in_copy_says_what_is_missing(monkeypatch, capsys):
    """A drop-in copy of the plugin file has no demo module: ``demo`` says so, in one line."""
    monkeypatch.setitem(sys.modules, "phy_bc_reason_demo", None)  # import raises ImportError
    assert run_cli("demo", "--help") == pr.EXIT_INPUT
    err = capsys.readouterr().err
    assert "the demo needs phy_bc_reason_demo.py" in err and "drop-in file" in err


# -- found by mutation testing --------------------------------------------------------------------

def test_tsv_text_is_one_ascii_line():
    assert pr._tsv_safe("MUA:\tfraction\rRPVs\n0.2 \u2264 0.1 \u00e9") == "MUA: fraction RPVs 0.2 ? 0.1 ?"
    assert pr._tsv_safe(3) == "3"


def test_tsv_written_through_a_temporary_file_in_the_same_folder(dataset, monkeypatch):
    """The rename is atomic only within one file system: the temporary file sits next to the
    TSV, hidden (a dot name) and not a .tsv (phylib reads every .tsv of the folder)."""
    renames = []
    replace = os.replace

    def recording_replace(src, dst):
        renames.append((Path(src), Path(dst)))
        replace(src, dst)
    monkeypatch.setattr(os, "replace", recording_replace)
    path = pr.write_reason_tsv(dataset, {1: "MUA: x", 0: "GOOD: passed all thresholds"})
    [(tmp, target)] = renames
    assert target == path == dataset / pr.TSV_NAME
    assert tmp.parent == dataset and tmp.name.startswith(f".{pr.TSV_NAME}.")
    assert tmp.suffix == ".tmp"
    assert path.read_bytes() == (f"cluster_id\t{pr.COLUMN}\n0\tGOOD: passed all thresholds\n"
                                 f"1\tMUA: x\n").encode("ascii")  # LF only, sorted ids
    assert path.stat().st_mode & 0o777 == 0o644


def test_one_line_of_an_exception_without_a_message():
    assert pr._one_line(ValueError()) == "ValueError"
    assert pr._one_line(OSError("disk full\nmore")) == "disk full"


def test_csv_twin_details(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Unnamed: 0,,flag,count,n\n0,x,True,1,5\n1,y,,,6\n2,z,False,2\n")
    columns = pr._read_csv_columns(path)
    assert list(columns) == ["flag", "count", "n"]  # index columns left out
    assert columns["flag"] == [True, pr.EMPTY_CSV_CELL, False]
    assert columns["count"] == [1.0, pr.EMPTY_CSV_CELL, 2.0]  # integers with gaps: floats
    assert all(type(v) is float for v in columns["count"] if v is not pr.EMPTY_CSV_CELL)
    assert columns["n"] == [5, 6, pr.EMPTY_CSV_CELL]  # a short row: empty cells
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr._read_csv_columns(path)
    assert str(error.value).startswith(f"{path}: cannot be read ('utf-8' codec can't decode")
    assert str(error.value).endswith("; re-run bombcell")


@pytest.mark.parametrize("widths, expected", [
    ({}, (4, 5)),  # no spike width saved: bombcell's defaults, unscaled
    ({"spikeWidth": 82}, (4, 5)),
    ({"spikeWidth": 82, "standardSpikeWidth": 61}, (5, 7)),  # x1.344: round(5.38), round(6.72)
    ({"spikeWidth": 30, "standardSpikeWidth": 61}, (2, 3)),  # x0.49: at least 2 and 3
    ({"spikeWidth": 1, "standardSpikeWidth": 0.5}, (8, 10)),
    ({"spikeWidth": 82, "standardSpikeWidth": 0}, (4, 5)),
    ({"spikeWidth": float("nan"), "standardSpikeWidth": 61}, (4, 5)),
])
def test_shape_route_defaults_scaled_by_spike_width(widths, expected):
    """Written by hand from check_parameter_fields: with part of the shape route saved, the
    missing widths are max(2, round(4 * w)) and max(3, round(5 * w)), w = spikeWidth /
    standardSpikeWidth where both are usable, else 1."""
    params = {k: v for k, v in DEFAULTS.items()
              if k not in ("minWidthFirstPeak_nonSomatic", "minWidthMainTrough_nonSomatic")}
    params, _ = pr.complete_params(dict(params, **widths))
    assert (params["minWidthFirstPeak_nonSomatic"], params["minWidthMainTrough_nonSomatic"]) == \
        expected


def test_unreadable_saved_labels_are_ignored_with_a_warning(tmp_path, caplog):
    write_results(tmp_path, n_units=5, labels=False)
    tsv = tmp_path / pr.UNIT_TYPE_TSV
    tsv.write_bytes(b"cluster_id\tbc_unitType\n0\t\xff\n")
    result = pr.classify_dataset(tmp_path)
    assert result.bombcell_label.tolist() == [None] * 5
    assert f"{tsv}: unreadable ('utf-8' codec can't decode" in caplog.text
    assert "saved labels ignored" in caplog.text


def test_flags_bombcell_cannot_read_are_named():
    empty = pr.EMPTY_CSV_CELL
    for key in ("computeSpatialDecay", "spDecayLinFit"):
        params = dict(DEFAULTS, **{key: empty})
        with pytest.raises(pr.BombcellReasonError) as error:
            pr.linear_spatial_decay(params)
        assert str(error.value) == pr._empty_cell_message(key)
        assert str(error.value).startswith(f"parameter {key} is empty in bombcell's CSV twin")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.linear_spatial_decay(dict(DEFAULTS, computeSpatialDecay=2.5, spDecayLinFit=True))
    assert str(error.value).startswith(
        "computeSpatialDecay = 2.5 and spDecayLinFit = True: bombcell combines them with `&`")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.enabled_flags(dict(DEFAULTS, computeSpatialDecay=True, spDecayLinFit=np.array([1, 2])))
    assert str(error.value).startswith(
        "computeSpatialDecay = True and spDecayLinFit = array([1, 2]): bombcell combines")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr._truth({"extractRaw": empty}, "extractRaw")
    assert str(error.value) == pr._empty_cell_message("extractRaw")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr._truth({"extractRaw": np.array([1, 2])}, "extractRaw")
    assert str(error.value).startswith("flag extractRaw = array([1, 2]) has no truth value")


def test_partial_shape_route_gets_bombcell_s_ratio_defaults():
    """check_parameter_fields fills a partly saved shape route with its current defaults:
    minTroughToPeak2Ratio_nonSomatic 5 and maxPeak1ToPeak2Ratio_nonSomatic 3."""
    saved = {k: v for k, v in DEFAULTS.items()
             if k not in ("minTroughToPeak2Ratio_nonSomatic", "maxPeak1ToPeak2Ratio_nonSomatic")}
    params, notes = pr.complete_params(saved)
    assert params["minTroughToPeak2Ratio_nonSomatic"] == 5
    assert params["maxPeak1ToPeak2Ratio_nonSomatic"] == 3
    assert not any("shape route is switched off" in n for n in notes)


def test_missing_parameters_are_listed_with_their_spaced_keys():
    """Two missing parameters are named, comma-separated, and the keys saved with stray spaces
    are quoted as saved."""
    params = {(k + " " if k in ("maxRPVviolations", "minSNR") else k): v for k, v in DEFAULTS.items()}
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.complete_params(params, "p.parquet")
    message = str(error.value)
    names = [k for k in pr.CLASSIFICATION_PARAMS if k in ("maxRPVviolations", "minSNR")]
    assert message.startswith(f"p.parquet: parameter {', '.join(names)} missing and bombcell")
    assert f"(saved as {', '.join(repr(k + ' ') for k in names)}: bombcell does not read" in message
    # a parameter simply not saved: no word about stray spaces
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.complete_params({k: v for k, v in DEFAULTS.items() if k != "minSNR"}, "p.parquet")
    assert str(error.value) == ("p.parquet: parameter minSNR missing and bombcell has no default "
                                "for it; re-run bombcell >= 0.94 on this dataset")


def test_back_compatibility_notes_name_the_filled_values():
    """The note lists each filled parameter with its value, in one comma-separated line; it says
    "older" unless the run also saved names bombcell 0.94 never writes (a newer run)."""
    saved = {k: v for k, v in DEFAULTS.items() if k not in ("extractRaw", "computeDrift")}
    _, notes = pr.complete_params(saved)
    assert notes == ["parameters missing from this older bombcell run were filled with bombcell's "
                     "back-compatibility defaults: extractRaw=True, computeDrift=False"]
    _, notes = pr.complete_params(dict(saved, someNewerParameter=1))
    assert notes == ["parameters missing from this bombcell run were filled with bombcell's "
                     "back-compatibility defaults: extractRaw=True, computeDrift=False"]
    shape_off = {k: v for k, v in DEFAULTS.items() if k not in pr.SHAPE_ROUTE_PARAMS}
    _, notes = pr.complete_params(shape_off)
    assert notes[-1] == ("the non-somatic shape route is switched off: this bombcell run "
                         "predates it")


def test_spaced_duplicates_of_read_parameters_are_noted():
    """A key with stray spaces beside the real one ("minSNR " and minSNR) is ignored, as bombcell
    ignores it, and the note says so; a spaced key bombcell never reads is not mentioned."""
    _, notes = pr.complete_params(dict(DEFAULTS, **{"minSNR ": 99, " myLabNote": "x",
                                                    "extractRaw ": False}))
    assert notes == ["key(s) with stray spaces ignored, as bombcell ignores them: "
                     "'minSNR ', 'extractRaw '"]


def test_threshold_value_reads_a_rule_that_is_on_by_default():
    """Called without `enabled`, the rule counts as on: text is an error naming the parameter,
    not a NaN."""
    assert pr.threshold_value({"minSNR": 5}, "minSNR") == 5.0
    with pytest.raises(pr.BombcellReasonError, match=r"^threshold minSNR = 'five' is not a number"):
        pr.threshold_value({"minSNR": "five"}, "minSNR")
    assert np.isnan(pr.threshold_value({"minSNR": "five"}, "minSNR", enabled=False))
    with pytest.raises(pr.BombcellReasonError) as error:  # an empty cell of the CSV twin
        pr.threshold_value({"minSNR": pr.EMPTY_CSV_CELL}, "minSNR")
    assert str(error.value).startswith("parameter minSNR is empty in bombcell's CSV twin")


def test_unit_notes_list_several_criteria_and_skip_the_nan_peak_test_for_inf():
    """Written from bombcell's rules: an inf nPeaks is not NaN (the isnan test passes, no note
    for it) but exceeds maxNPeaks; lists of criteria are comma-separated."""
    params = pr.complete_params(DEFAULTS)[0]
    result = pr.Classification(params, _one_unit(nPeaks=np.inf), [7])
    assert result.unit_notes(0) == [
        "nPeaks is inf: bombcell does not clean inf, so it fails nPeaks>maxNPeaks"]
    result = pr.Classification(params, _one_unit(nTroughs=3, presenceRatio=0.1,
                                                 fractionRPVs_estimatedTauR=0.5), [7])
    assert result.label[0] == "NOISE"
    assert result.unit_notes(0) == [
        "also fails, without deciding the label: fractionRPVs_estimatedTauR>maxRPVviolations "
        "(0.5 > 0.1), presenceRatio<minPresenceRatio (0.1 < 0.7) (NOISE takes precedence over MUA)"]
    # every metric NaN but the peak/trough counts: the MUA tests with NaN values pass
    # (signalToNoiseRatio is skipped where rawAmplitude is NaN; drift and distance metrics are off)
    result = pr.Classification(params, _one_unit(signalToNoiseRatio=1.0), [7])
    assert result.label[0] == "GOOD"
    assert ("NaN values pass these MUA tests, as in bombcell: "
            "percentageSpikesMissing_gaussian>maxPercSpikesMissing, "
            "fractionRPVs_estimatedTauR>maxRPVviolations, presenceRatio<minPresenceRatio, "
            "rawAmplitude<minAmplitude") in result.unit_notes(0)


def _rewrite_metrics_df(folder, change):
    """bombcell's metrics parquet through pandas after ``change(frame)``; its CSV twin dropped."""
    path = folder / "bombcell" / pr.METRICS_FILE
    frame = pd.read_parquet(path)
    change(frame).to_parquet(path)
    path.with_suffix(".csv").unlink(missing_ok=True)
    return path


def test_cluster_ids_without_and_with_bad_phy_clusterID(tmp_path):
    """bombcell's load_bc_results numbers units 0..n-1 without phy_clusterID; empty or repeated
    ids are refused in one line naming the file."""
    write_results(tmp_path, n_units=6, seed=2, cluster_ids=[3, 5, 8, 13, 21, 34])
    result = pr.classify_dataset(tmp_path)
    assert result.cluster_ids.tolist() == [3, 5, 8, 13, 21, 34]
    assert result.cluster_ids.dtype.kind == "i"
    path = _rewrite_metrics_df(tmp_path, lambda f: f.drop(columns=["phy_clusterID"]))
    result = pr.classify_dataset(tmp_path)
    assert result.cluster_ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert (f"no phy_clusterID column in {pr.METRICS_FILE}: units are taken as clusters 0..5, "
            f"as bombcell's load_bc_results does") in result.notes
    _rewrite_metrics_df(tmp_path, lambda f: f.assign(phy_clusterID=[0, 1, 2, 2, 4, 5]))
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value) == f"{path}: phy_clusterID has duplicate ids; re-run bombcell"
    _rewrite_metrics_df(tmp_path, lambda f: f.assign(phy_clusterID=[0, 1, np.nan, 3, 4, 5]))
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value) == f"{path}: phy_clusterID has empty values; re-run bombcell"


def test_flags_bombcell_cannot_combine_name_the_parameters_file(tmp_path):
    write_results(tmp_path, n_units=5, seed=2)
    params_file = tmp_path / "bombcell" / pr.PARAMS_FILE
    pd.DataFrame([dict(DEFAULTS, computeSpatialDecay=2.5)]).to_parquet(params_file)
    params_file.with_suffix(".csv").unlink(missing_ok=True)
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value).startswith(
        f"{tmp_path / 'bombcell' / pr.PARAMS_FILE}: computeSpatialDecay = 2.5 and spDecayLinFit")
    # a threshold bombcell cannot compare, found while classifying: the same file named
    pd.DataFrame([dict(DEFAULTS, minSNR="five")]).to_parquet(params_file)
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value).startswith(f"{params_file}: threshold minSNR = 'five' is not a number")


def test_source_time_counts_bombcell_s_csv_twins(tmp_path):
    """The results' time (against which the plugin calls a written TSV stale) is the newest of
    the parquet files and their CSV twins, which phy environments without pyarrow read."""
    write_results(tmp_path, n_units=5, seed=2)
    folder = tmp_path / "bombcell"
    newest = max(p.stat().st_mtime for p in folder.iterdir())
    for offset, name in ((100, pr.PARAMS_FILE), (200, pr.METRICS_FILE)):
        twin = (folder / name).with_suffix(".csv")
        assert twin.is_file()
        os.utime(twin, (newest + offset, newest + offset))
        assert pr.classify_dataset(tmp_path).source_mtime == newest + offset


def test_metrics_with_n_peaks_beside_nPeaks_are_not_old(tmp_path):
    """Only a table without nPeaks is bombcell <= 0.31's; a stray snake_case column beside
    bombcell 0.94's names is an unknown column (the newer-version note), not a refusal."""
    write_results(tmp_path, n_units=5, seed=2)
    expected = pr.classify_dataset(tmp_path).label.tolist()
    _rewrite_metrics_df(tmp_path, lambda f: f.assign(n_peaks=f["nPeaks"]))
    result = pr.classify_dataset(tmp_path)
    assert result.label.tolist() == expected
    assert any("unknown parameters/metrics n_peaks" in n for n in result.notes)

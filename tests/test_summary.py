"""The CLI's what-if (--set, --save-params) and summary subcommand, on generated bombcell results
and on a real bombcell run."""
import json

import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from bombcell_tables import bombcell_labels, write_results
from test_engine import read_tsv, run_cli, snapshot


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "réc ording 1"
    folder.mkdir()
    write_results(folder, n_units=80, seed=4)
    return folder


def test_summary_text(dataset, capsys):
    assert run_cli("summary", dataset) == 0
    out = capsys.readouterr().out
    result = pr.classify_dataset(dataset)
    assert out.startswith(f"80 units: ")
    for label, count in pr.label_counts(result.label).items():
        assert f"{label} {count}" in out.splitlines()[0]
    assert "WHAT-IF" not in out
    assert "sole: units that turn GOOD when this threshold alone is relaxed" in out
    first = pr.format_summary(result.summary()).splitlines()[2]
    assert first in out  # the criterion blocking the most units first


def test_summary_json_one_object_per_criterion(dataset, capsys):
    assert run_cli("summary", dataset, "--json", "--set", "maxRPVviolations=0.3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pr.RULES)
    objects = [json.loads(line) for line in lines]
    for obj in objects:
        for key in ("stage", "metric", "op", "param", "threshold", "n_fail", "n_sole_blocker"):
            assert key in obj
        assert set(obj["quantiles"]) >= {"min", "median", "max"}
        assert obj["what_if"] == {"maxRPVviolations": 0.3}
    rpv = next(o for o in objects if o["param"] == "maxRPVviolations")
    assert rpv["threshold"] == 0.3
    expected = pr.classify_dataset(dataset).what_if({"maxRPVviolations": 0.3}).summary()
    assert [o["criterion"] for o in objects] == [c["criterion"] for c in expected["criteria"]]


def test_explain_with_set_gives_bombcells_labels_and_says_what_if(dataset, capsys):
    assert run_cli("explain", dataset, "--set", "maxRPVviolations=0.5",
                   "--set", "minNumSpikes=10") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("WHAT-IF (not bombcell's saved labels): maxRPVviolations=0.5 "
                             "(saved 0.1), minNumSpikes=10 (saved 300)")
    real = pr.classify_dataset(dataset)
    params = dict(real.params, maxRPVviolations=0.5, minNumSpikes=10.0)
    expected = bombcell_labels(params, real.metrics)
    shown = {int(line.split()[0]): line.split(None, 1)[1] for line in out[1:]
             if line.split()[:1] and line.split()[0].isdigit()}
    for cluster_id, label in zip(real.cluster_ids, expected):
        assert shown[int(cluster_id)].startswith((label or pr.NO_LABEL) + ":")


def test_explain_json_with_set_names_the_changes(dataset, capsys):
    assert run_cli("explain", dataset, "--json", "--cluster", 3, "--set", "computeDrift=true") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["what_if"] == {"computeDrift": True}


@pytest.mark.parametrize("setting, message", [
    ("maxRPVviolatons=0.5", "unknown parameter 'maxRPVviolatons'"),
    ("maxRPVviolations=lots", "bad value for threshold maxRPVviolations: 'lots'"),
    ("maxRPVviolations", "expected PARAM=VALUE"),
    ("computeDrift=2", "bad value for flag computeDrift: '2'"),
])
@pytest.mark.parametrize("command", ["explain", "summary"])
def test_bad_set_is_one_line_exit_1_nothing_written(dataset, capsys, command, setting, message):
    before = snapshot(dataset)
    assert run_cli(command, dataset, "--set", setting, "--save-params", dataset / "p.json") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err
    assert snapshot(dataset) == before


def test_export_with_set_needs_out_and_never_touches_the_reasons_tsv(dataset, tmp_path, capsys):
    assert run_cli("export", dataset) == 0
    before = snapshot(dataset)
    assert run_cli("export", dataset, "--set", "maxRPVviolations=0.5") == 2
    assert "--set needs --out FILE" in capsys.readouterr().err
    assert run_cli("export", dataset, "--set", "maxRPVviolations=0.5",
                   "--out", dataset / pr.TSV_NAME) == 1
    assert "phy's reasons TSV" in capsys.readouterr().err
    out = tmp_path / "what if.tsv"
    assert run_cli("export", dataset, "--set", "maxRPVviolations=0.5", "--out", out) == 0
    assert "WHAT-IF" in capsys.readouterr().out
    assert snapshot(dataset) == before  # the dataset, its reasons TSV included, untouched
    field, values = read_tsv(out)
    assert field == pr.WHATIF_COLUMN  # phy would never take it for the reason column
    assert values == pr.classify_dataset(dataset).what_if({"maxRPVviolations": 0.5}).reason_by_cluster()


def test_save_params(dataset, tmp_path, capsys):
    path = tmp_path / "whatif.json"
    assert run_cli("summary", dataset, "--set", "maxRPVviolations=0.5", "--set", "minSNR=-inf",
                   "--save-params", path) == 0
    assert json.loads(path.read_text()) == {"maxRPVviolations": 0.5, "minSNR": -np.inf}
    assert "wrote the changed parameters" in capsys.readouterr().err
    assert run_cli("summary", dataset, "--save-params", path) == 1  # nothing changed: nothing saved
    assert "nothing to save" in capsys.readouterr().err


def test_summary_on_a_real_run(demo_dataset, capsys):
    assert run_cli("summary", demo_dataset, "--json") == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    result = pr.classify_dataset(demo_dataset)
    blockers = pr.sole_blockers(result)
    for obj in objects:
        i = next(i for i, r in enumerate(pr.RULES) if r.name == obj["criterion"])
        if obj["n_sole_blocker"] is not None:
            assert obj["n_sole_blocker"] == int(blockers[i, ~np.isnan(result.codes)].sum())

"""End to end: real bombcell run on the generated demo dataset, then our engine and CLI on it."""
import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import phy_bc_reason_plugin as pr

with contextlib.redirect_stdout(io.StringIO()):  # bombcell prints on import
    import bombcell


def bombcell_reclassified(dataset):
    """What the notebook did: bombcell's own loader and classifier on the saved results."""
    with contextlib.redirect_stdout(io.StringIO()):
        param, metrics, _ = bombcell.load_bc_results(str(dataset / "bombcell"))
        _, labels = bombcell.get_quality_unit_type(param, metrics)
    return metrics["phy_clusterID"].to_numpy().astype(int), np.asarray(labels, dtype=object)


@pytest.mark.parametrize("fixture, expected", [
    ("demo_dataset", {"GOOD", "MUA", "NOISE", "NON-SOMA", ""}),
    ("demo_dataset_split", {"GOOD", "MUA", "NOISE", "NON-SOMA GOOD", "NON-SOMA MUA", ""}),
])
def test_labels_equal_bombcell_on_a_real_run(request, fixture, expected):
    dataset = request.getfixturevalue(fixture)
    result = pr.classify_dataset(dataset)
    assert set(result.label) == expected
    # bombcell's label as saved by the run, and as bombcell recomputes it from the files
    saved = pd.read_parquet(dataset / "bombcell" / pr.METRICS_FILE)["bc_unitType"].fillna("")
    assert result.label.tolist() == saved.tolist()
    assert result.bombcell_label.tolist() == saved.tolist()
    ids, labels = bombcell_reclassified(dataset)
    assert result.cluster_ids.tolist() == ids.tolist()
    assert result.label.tolist() == labels.tolist()
    assert not result.label_differs.any()


def test_reasons_on_a_real_run(demo_dataset):
    result = pr.classify_dataset(demo_dataset)
    for label, reason in zip(result.label, result.reason):
        assert reason.startswith(f"{label}: " if label else pr.NO_LABEL)
    non_soma = result.label == "NON-SOMA"
    routes = {pr.RULES[i].route for i in np.flatnonzero(result.decisive[:, non_soma].any(axis=1))}
    assert routes == {"A", "B"}  # the demo hits both non-somatic routes
    shape = {r.short for r in pr.RULES if r.route == "A"}
    assert any(r.split(": ", 1)[1].rsplit(" ", 4)[0] in shape and r.endswith(" +3")
               for r in result.reason[non_soma])
    decided = {pr.RULES[i].name for i in np.flatnonzero(result.decisive[:, result.label == "MUA"]
                                                       .any(axis=1))}
    assert len(decided) >= 3  # several different MUA criteria
    few_spikes = (result.label == "NOISE") & np.isnan(result.values[0])
    assert few_spikes.any()
    assert all(r == "NOISE: # peaks is NaN" for r in result.reason[few_spikes])


def test_export_and_phy_reads_the_column(demo_dataset, tmp_path, capsys):
    dataset = tmp_path / "copy"
    shutil.copytree(demo_dataset, dataset, copy_function=_link_or_copy)
    assert pr.main(["export", str(dataset)]) == 0
    assert "units:" in capsys.readouterr().out
    from phylib.io.model import load_model
    model = load_model(dataset / "params.py")
    try:
        column = model.metadata[pr.COLUMN]
    finally:
        model.close()
    assert column == pr.classify_dataset(dataset).reason_by_cluster()


def test_explain_json_on_a_real_run(demo_dataset, capsys):
    assert pr.main(["explain", str(demo_dataset), "--json"]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    result = pr.classify_dataset(demo_dataset)
    assert [o["cluster_id"] for o in objects] == sorted(result.cluster_ids.tolist())
    assert {o["label"] for o in objects} == set(result.label)


def _link_or_copy(src, dst):
    """Hard links for the big raw file (the session fixture must stay untouched: we only add)."""
    try:
        import os
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)

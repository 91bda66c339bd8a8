"""The demo dataset: real bombcell gives it every label, by many different criteria, and phy's
model loads it.

The criteria are recomputed here from bombcell's own metrics and parameters tables, with a small
table written independently of phy_bc_reason_plugin.RULES (which has its own tests against
bombcell's classifier).
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import phy_bc_reason_demo as demo

LABELS = {"GOOD", "MUA", "NOISE", "NON-SOMA", ""}
SPLIT_LABELS = {"GOOD", "MUA", "NOISE", "NON-SOMA GOOD", "NON-SOMA MUA", ""}

# (stage, metric, op, threshold parameter); "A" = the four non-somatic tests bombcell ANDs.
CRITERIA = [
    ("noise", "nPeaks", "isnan", None),
    ("noise", "nPeaks", ">", "maxNPeaks"),
    ("noise", "nTroughs", ">", "maxNTroughs"),
    ("noise", "waveformDuration_peakTrough", "<", "minWvDuration"),
    ("noise", "waveformDuration_peakTrough", ">", "maxWvDuration"),
    ("noise", "waveformBaselineFlatness", ">", "maxWvBaselineFraction"),
    ("noise", "scndPeakToTroughRatio", ">", "maxScndPeakToTroughRatio_noise"),
    ("noise", "spatialDecaySlope", "<", "minSpatialDecaySlopeExp"),
    ("noise", "spatialDecaySlope", ">", "maxSpatialDecaySlopeExp"),
    ("mua", "percentageSpikesMissing_gaussian", ">", "maxPercSpikesMissing"),
    ("mua", "nSpikes", "<", "minNumSpikes"),
    ("mua", "fractionRPVs_estimatedTauR", ">", "maxRPVviolations"),
    ("mua", "presenceRatio", "<", "minPresenceRatio"),
    ("mua", "rawAmplitude", "<", "minAmplitude"),
    ("mua", "signalToNoiseRatio", "<", "minSNR"),
    ("A", "troughToPeak2Ratio", "<", "minTroughToPeak2Ratio_nonSomatic"),
    ("A", "mainPeak_before_width", "<", "minWidthFirstPeak_nonSomatic"),
    ("A", "mainTrough_width", "<", "minWidthMainTrough_nonSomatic"),
    ("A", "peak1ToPeak2Ratio", ">", "maxPeak1ToPeak2Ratio_nonSomatic"),
    ("B", "mainPeakToTroughRatio", ">", "maxMainPeakToTroughRatio_nonSomatic"),
]


def name(metric, op, param):
    return f"{metric} is NaN" if op == "isnan" else f"{metric}{op}{param}"


def load(dataset):
    metrics = pd.read_parquet(dataset / "bombcell" / "templates._bc_qMetrics.parquet")
    params = pd.read_parquet(dataset / "bombcell" / "_bc_parameters._bc_qMetrics.parquet")
    assert len(params) == 1
    manifest = json.loads((dataset / demo.MANIFEST).read_text("utf-8"))
    return metrics, params.iloc[0].to_dict(), manifest


def failed_criteria(metrics, params):
    """{cluster id: set of criterion names it fails}, with the A tests only if all four fail,
    as bombcell's get_quality_unit_type evaluates them under these (default) parameters."""
    # the parameters this test's table assumes; the flags are the ones bombcell ran with
    assert params["computeSpatialDecay"] and not params["spDecayLinFit"]
    assert params["extractRaw"]
    assert not params["computeDrift"] and not params["computeDistanceMetrics"]
    assert not params["keepUncertainRPVUnits"]
    fails = {}
    for _, row in metrics.iterrows():
        out, a = set(), []
        for stage, metric, op, param in CRITERIA:
            v = row[metric]
            if op == "isnan":
                bad = np.isnan(v)
            elif metric == "signalToNoiseRatio" and np.isnan(row["rawAmplitude"]):
                bad = False  # bombcell tests SNR only where rawAmplitude is not NaN
            else:
                bad = v > params[param] if op == ">" else v < params[param]
            if stage == "A":
                a.append((bool(bad), name(metric, op, param)))
            elif bad:
                out.add(name(metric, op, param))
        if all(bad for bad, _ in a):
            out |= {n for _, n in a}
        fails[int(row["phy_clusterID"])] = out
    return fails


@pytest.fixture(scope="module", params=["plain", "split"])
def results(request):
    dataset = request.getfixturevalue("demo_dataset" if request.param == "plain"
                                      else "demo_dataset_split")
    return (request.param == "split", dataset) + load(dataset)


# -- labels --------------------------------------------------------------------------------------

def test_bombcell_gives_every_label(results):
    split, _, metrics, params, _ = results
    assert bool(params["splitGoodAndMua_NonSomatic"]) == split
    labels = metrics["bc_unitType"].fillna("").astype(str)
    assert set(labels) == (SPLIT_LABELS if split else LABELS)
    counts = labels.value_counts()
    assert counts["GOOD"] >= 5 and counts["MUA"] >= 6 and counts["NOISE"] >= 9
    if split:
        assert counts["NON-SOMA GOOD"] >= 2 and counts["NON-SOMA MUA"] >= 2
    else:
        assert counts["NON-SOMA"] >= 4


def test_every_unit_gets_its_designed_label(results):
    split, _, metrics, _, manifest = results
    got = dict(zip(metrics["phy_clusterID"].astype(int), metrics["bc_unitType"].fillna("")))
    want = {u["cluster_id"]: u["split_label" if split else "label"] for u in manifest["units"]}
    wrong = {u["design"]: (got[u["cluster_id"]], want[u["cluster_id"]])
             for u in manifest["units"] if got[u["cluster_id"]] != want[u["cluster_id"]]}
    assert not wrong, f"design: (bombcell label, designed label): {wrong}"


def test_every_unit_fails_exactly_its_designed_criteria(results):
    _, _, metrics, params, manifest = results
    fails = failed_criteria(metrics, params)
    for u in manifest["units"]:
        if u["n_spikes"] == 0:
            continue
        assert fails[u["cluster_id"]] == set(u["fails"]), u["design"]


def test_many_different_criteria_are_hit(results):
    split, _, metrics, params, _ = results
    fails = failed_criteria(metrics, params)
    label = dict(zip(metrics["phy_clusterID"].astype(int), metrics["bc_unitType"]))
    stage = {name(m, op, p): s for s, m, op, p in CRITERIA}

    noise = set().union(*(f for c, f in fails.items() if label[c] == "NOISE"))
    assert {n for n in noise if stage[n] == "noise"} == {
        name(m, op, p) for s, m, op, p in CRITERIA if s == "noise"}  # all nine

    mua_labels = {"MUA", "NON-SOMA MUA"} if split else {"MUA"}
    mua = [f for c, f in fails.items() if label[c] in mua_labels]
    mua_hit = {n for f in mua for n in f if stage[n] == "mua"}
    assert mua_hit == {name(m, op, p) for s, m, op, p in CRITERIA if s == "mua"}  # all six
    # a unit failing nothing but one MUA criterion, for most of them: a clean reason each
    alone = {next(iter(f)) for f in mua if len(f) == 1}
    assert len(alone) >= 5

    # both non-somatic routes, each on a unit that is not NOISE (else the route is moot)
    non_soma = [f for c, f in fails.items() if label[c].startswith("NON-SOMA")]
    assert any("mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic" in f
               and not any(stage[n] == "A" for n in f) for f in non_soma)  # route B alone
    assert any({n for n in f if stage[n] == "A"} and
               "mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic" not in f
               for f in non_soma)  # route A alone


def test_units_with_few_or_no_spikes(results):
    _, _, metrics, _, _ = results
    few = metrics[(metrics["nSpikes"] > 0) & (metrics["nSpikes"] < 50)]
    assert len(few) >= 1
    assert few["nPeaks"].isna().all() and (few["bc_unitType"] == "NOISE").all()
    mua_few = metrics[(metrics["nSpikes"] >= 50) & (metrics["nSpikes"] < 300)]
    assert len(mua_few) >= 1 and mua_few["nPeaks"].notna().all()
    empty = metrics[metrics["nSpikes"] == 0]
    assert len(empty) >= 1
    assert (empty["bc_unitType"].fillna("") == "").all()
    assert empty["nPeaks"].isna().all()


def test_bombcell_ran_with_raw_data_and_default_thresholds(results):
    _, dataset, metrics, params, _ = results
    # gain and channel counts came from the SpikeGLX .meta, so raw amplitudes are in uV
    assert params["gain_to_uV"] == pytest.approx(demo.GAIN_UV)
    assert int(params["n_channels_rec"]) == demo.N_CHANNELS_DAT
    assert Path(params["raw_data_file"]).name == demo.BIN_NAME
    computed = metrics["nSpikes"] >= 50
    assert metrics.loc[computed, "rawAmplitude"].notna().all()
    assert metrics.loc[computed, "signalToNoiseRatio"].notna().all()
    assert params["tauC"] == pytest.approx(demo.KS4_DUPLICATE_MS / 1000)  # from ops.npy
    assert params["rpv_method"] == "ibl_sliding"
    for key, value in {"maxNPeaks": 2, "maxNTroughs": 1, "minWvDuration": 100,
                       "maxWvDuration": 1150, "maxWvBaselineFraction": 0.3, "minAmplitude": 40,
                       "minSNR": 5, "minNumSpikes": 300, "minPresenceRatio": 0.7,
                       "maxPercSpikesMissing": 20, "maxRPVviolations": 0.1}.items():
        assert params[key] == value, key
    # bombcell's phy files, next to the dataset
    unit_type = pd.read_csv(dataset / "cluster_bc_unitType.tsv", sep="\t", keep_default_na=False)
    assert list(unit_type.columns) == ["cluster_id", "bc_unitType"]
    assert len(unit_type) == len(metrics)


# -- the dataset as phy sees it ------------------------------------------------------------------

def test_phylib_template_model_loads_it(demo_dataset):
    from phylib.io.model import load_model

    manifest = json.loads((demo_dataset / demo.MANIFEST).read_text("utf-8"))
    model = load_model(demo_dataset / "params.py")
    try:
        n_spikes = sum(u["n_spikes"] for u in manifest["units"])
        assert model.n_templates == len(manifest["units"])
        assert model.n_spikes == n_spikes
        assert model.n_channels == demo.N_SITES and model.n_channels_dat == demo.N_CHANNELS_DAT
        assert model.sample_rate == demo.SAMPLE_RATE
        assert model.duration == pytest.approx(demo.DURATION_S)
        assert model.traces.shape[0] == int(demo.DURATION_S * demo.SAMPLE_RATE)
        assert list(model.channel_mapping) == list(range(demo.N_SITES))  # not the sync channel
        assert np.all(np.diff(model.spike_times) >= 0)
        with_spikes = [u["cluster_id"] for u in manifest["units"] if u["n_spikes"]]
        assert list(model.cluster_ids) == with_spikes  # the empty template is no cluster
        assert model.features.shape == (n_spikes, demo.N_PC_CHANNELS, demo.N_PC)  # phylib's order
        # the raw data holds the spikes: a large unit's mean raw waveform is its template
        metrics = pd.read_parquet(demo_dataset / "bombcell" / "templates._bc_qMetrics.parquet")
        big = int(metrics.loc[metrics["bc_unitType"] == "GOOD"]
                  .sort_values("rawAmplitude").iloc[-1]["phy_clusterID"])
        t = model.spike_samples[model.spike_clusters == big][:200]
        peak = model.get_template(big).channel_ids[0]
        raw = np.mean([model.traces[s - 20:s + 41, peak] for s in t], axis=0)
        template = model.get_template(big).template[:, 0]
        assert np.corrcoef(raw, template)[0, 1] > 0.95
    finally:
        model.close()


def test_params_py_and_meta(demo_dataset):
    params = {}
    exec((demo_dataset / "params.py").read_text("utf-8"), {}, params)
    assert params == {"dat_path": demo.BIN_NAME, "n_channels_dat": demo.N_CHANNELS_DAT,
                      "dtype": "int16", "offset": 0, "sample_rate": float(demo.SAMPLE_RATE),
                      "hp_filtered": False}
    size = (demo_dataset / demo.BIN_NAME).stat().st_size
    assert size == int(demo.DURATION_S * demo.SAMPLE_RATE) * demo.N_CHANNELS_DAT * 2
    meta = dict(line.split("=", 1) for line in
                (demo_dataset / demo.META_NAME).read_text("ascii").splitlines())
    assert int(meta["fileSizeBytes"]) == size


# -- make_dataset --------------------------------------------------------------------------------

@pytest.mark.slow
def test_make_dataset_is_deterministic(demo_dataset, tmp_path):
    again = demo.make_dataset(tmp_path / "again", seed=0)
    for p in sorted(again.iterdir()):
        assert p.read_bytes() == (demo_dataset / p.name).read_bytes(), p.name
    other = demo.make_dataset(tmp_path / "other", seed=1)
    assert (other / "spike_times.npy").read_bytes() != (again / "spike_times.npy").read_bytes()


def test_large_dataset_repeats_the_designs_and_phy_opens_it(tmp_path):
    from phylib.io.model import load_model

    n = 2 * len(demo.DESIGNS) + 5
    path = demo.make_dataset(tmp_path / "large", n_units=n)
    manifest = json.loads((path / demo.MANIFEST).read_text("utf-8"))
    assert [u["cluster_id"] for u in manifest["units"]] == list(range(n))
    assert {u["copy"] for u in manifest["units"]} == {0, 1, 2}
    assert not (path / "pc_features.npy").exists()  # skipped at this size; phy does without
    model = load_model(path / "params.py")
    try:
        assert model.n_templates == n
        assert model.features is None
        assert model.similar_templates.shape == (n, n)
    finally:
        model.close()


def test_small_n_units(tmp_path):
    path = demo.make_dataset(tmp_path / "small", n_units=3)
    assert np.load(path / "templates.npy").shape == (3, demo.N_T, demo.N_SITES)


def test_make_dataset_refuses_a_folder_that_is_not_a_demo(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        demo.make_dataset(folder)
    assert (folder / "precious.txt").read_text() == "keep me"


def test_make_dataset_replaces_a_previous_demo(tmp_path):
    path = demo.make_dataset(tmp_path / "d", n_units=3)
    (path / "bombcell").mkdir()
    (path / "bombcell" / "stale.npy").write_bytes(b"")
    (path / "cluster_bc_unitType.tsv").write_text("stale")
    demo.make_dataset(path, n_units=3)
    assert not (path / "bombcell").exists()
    assert not (path / "cluster_bc_unitType.tsv").exists()


# -- run_bombcell and the demo command ------------------------------------------------------------

def test_run_bombcell_needs_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError):
        demo.run_bombcell(tmp_path)


@pytest.mark.slow
def test_run_bombcell_failure_shows_bombcell_output(demo_dataset, tmp_path, monkeypatch):
    copy = tmp_path / "copy ß"
    shutil.copytree(demo_dataset, copy, copy_function=os.link,
                    ignore=shutil.ignore_patterns("bombcell", "cluster_*.tsv"))
    monkeypatch.chdir(tmp_path)  # a relative path: the child process must get the same folder
    with pytest.raises(RuntimeError, match="rpv_method must be one of"):
        demo.run_bombcell(Path("copy ß"), rpv_method="no such method")


def test_demo_command_without_display(demo_dataset, tmp_path, monkeypatch, capsys):
    pr = pytest.importorskip("phy_bc_reason_plugin")
    copy = tmp_path / "copy ß"
    shutil.copytree(demo_dataset, copy, copy_function=os.link)  # hard links: no 260 MB copy
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert demo.main([str(copy), "--keep", "--no-gui"]) == 0
    out = capsys.readouterr().out
    assert "bombcell labels: " in out and "NON-SOMA" in out
    assert (copy / pr.TSV_NAME).exists()
    assert demo.label_counts(copy)["GOOD"] >= 5

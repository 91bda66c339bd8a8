"""The plugin's bookkeeping without phy: ``ReasonBook`` (merges, splits, undo/redo, origins kept
through the TSV, reload) and the check for results of another dataset or sorting, on small
generated datasets (a spike file and bombcell's files).  Fast, so that mutation testing can run
them for every mutant; the real phy GUI runs the same paths in test_phy_plugin.py and
test_foreign_results.py."""
import numpy as np
import pytest

import phy_bc_reason_plugin as pr
from bombcell_tables import write_results
from test_reason_texts import PARAMS, PASSING

# Clusters 0-4: GOOD, MUA (RPVs), NOISE (troughs), GOOD, MUA (# spikes 250).
UNITS = [{}, dict(fractionRPVs_estimatedTauR=0.5), dict(nTroughs=3), {}, {}]
N_SPIKES = [1000, 1000, 1000, 1000, 250]
INF, NAN = float("inf"), float("nan")
MERGED = "UNCLASSIFIED: merged from 0 (GOOD), 1 (MUA); re-run bombcell"


def _metrics(units=UNITS, n_spikes=N_SPIKES):
    rows = [dict(PASSING, **u, nSpikes=n) for u, n in zip(units, n_spikes)]  # 250: MUA
    return {k: [r[k] for r in rows] for k in PASSING}


def _classification(cluster_ids=(0, 1, 2, 3, 4)):
    metrics = {k: np.asarray(v, dtype=float) for k, v in _metrics().items()}
    return pr.Classification(PARAMS, metrics, list(cluster_ids))


@pytest.fixture
def dataset(tmp_path):
    """bombcell's files for clusters 0-4 and a spike file that matches their nSpikes."""
    write_results(tmp_path, params=PARAMS, metrics=_metrics())
    np.save(tmp_path / "spike_clusters.npy", np.repeat(np.arange(5), N_SPIKES).astype(np.int32))
    return tmp_path


def _merge(book, parents, new):
    book.record({"description": "merge", "history": None, "added": [new],
                 "descendants": [(p, new) for p in parents]})


# -- reasons, labels, counts ----------------------------------------------------------------------

def test_reasons_labels_and_counts_of_classified_clusters():
    book = pr.ReasonBook(_classification())
    assert book.ok and book.error is None
    assert book.reasons([0, 1, 2]) == {0: "GOOD: passed all thresholds",
                                       1: "MUA: fraction RPVs 0.5 > 0.1",
                                       2: "NOISE: # troughs 3 > 1"}
    assert [book.label_of(c) for c in range(5)] == ["GOOD", "MUA", "NOISE", "GOOD", "MUA"]
    assert book.label_of(99) == pr.UNCLASSIFIED
    assert [book.n_failing(c) for c in range(5)] == [0, 1, 1, 0, 1]
    assert book.n_failing(99) is None
    assert book.reason(99) == pr.NO_ROW_REASON
    assert book.full_reason(1) == ("MUA: fractionRPVs_estimatedTauR>maxRPVviolations (0.5 > 0.1)")
    assert book.full_reason(99) == pr.NO_ROW_REASON
    assert book.source_mtime == 0.0
    assert {"nPeaks", "RPV_status", "silhouetteScore"} <= book.metric_columns()


def test_a_book_without_results_says_so_everywhere():
    book = pr.ReasonBook(error="no bombcell folder")
    assert not book.ok and book.source_mtime is None
    assert book.reason(0) == pr.UNUSABLE_RESULTS_REASON
    book.no_results = True
    assert book.reason(0) == pr.NO_RESULTS_REASON
    assert book.label_of(0) == pr.UNCLASSIFIED and book.n_failing(0) is None
    assert book.full_reason(0) == "UNCLASSIFIED: no bombcell folder"
    assert book.info(0) is None
    assert "no bombcell folder" in book.html([0]) and "No bombcell results" in book.html([0])
    assert "nPeaks" in book.metric_columns()


def test_load_turns_every_failure_into_the_books_error(tmp_path):
    book = pr.ReasonBook.load(tmp_path)
    assert not book.ok and "no bombcell results folder" in book.error
    assert "\n" not in book.error
    (tmp_path / "bombcell").mkdir()
    (tmp_path / "bombcell" / pr.PARAMS_FILE).write_bytes(b"not parquet")
    book = pr.ReasonBook.load(tmp_path)
    assert not book.ok and "cannot be read" in book.error and pr.PARAMS_FILE in book.error


def test_load_reads_the_dataset_and_keeps_recorded_origins(dataset):
    previous = {7: MERGED, 1: "UNCLASSIFIED: merged from 8, 9; re-run bombcell"}
    book = pr.ReasonBook.load(dataset, previous=previous)
    assert book.ok and book.dataset_dir == dataset
    assert book.reason(7) == MERGED
    assert book.reason(1) == "MUA: fraction RPVs 0.5 > 0.1"  # bombcell's row wins
    assert book.source_mtime > 0


# -- merges, splits, undo, redo -------------------------------------------------------------------

def test_merge_and_split_name_their_parents_with_their_labels():
    book = pr.ReasonBook(_classification())
    _merge(book, [1, 0], 5)
    assert book.reason(5) == MERGED
    assert book.label_of(5) == pr.UNCLASSIFIED and book.n_failing(5) is None
    book.record({"description": "split", "history": None, "added": [6, 7],
                 "descendants": [(2, 6), (2, 7)]})
    assert book.reason(6) == book.reason(7) == \
        "UNCLASSIFIED: split from 2 (NOISE); re-run bombcell"
    _merge(book, [5, 3], 8)  # a merge of a merge: its parent has no label
    assert book.reason(8) == "UNCLASSIFIED: merged from 3 (GOOD), 5 (UNCLASSIFIED); re-run bombcell"
    assert book.full_reason(8) == book.reason(8)
    assert book.reasons([0, 5, 8])[5] == MERGED


def test_undo_is_ignored_and_redo_keeps_what_was_learnt():
    book = pr.ReasonBook(_classification())
    _merge(book, [0, 1], 5)
    book.record({"description": "merge", "history": "undo", "added": [0, 1],
                 "descendants": [(5, 0), (5, 1)]})
    assert book.reason(0) == "GOOD: passed all thresholds" and book.reason(5) == MERGED
    book.record({"description": "merge", "history": "redo", "added": [5],
                 "descendants": [(3, 5)]})  # whatever a redo reports: the first text stays
    assert book.reason(5) == MERGED
    book.record({"description": "merge", "history": None, "added": [9], "descendants": []})
    assert book.reason(9) == pr.NO_ROW_REASON  # no parents known: nothing recorded
    book.record({"description": "merge", "history": None, "added": [],
                 "descendants": [(0, 10)]})
    assert book.reason(10) == pr.NO_ROW_REASON
    book.record({"description": "merge", "history": None, "added": [3],
                 "descendants": [(0, 3), (3, 3)]})
    assert book.reason(3) == "GOOD: passed all thresholds"  # bombcell's row is never replaced
    book.record({"description": "merge", "history": None, "added": [11],
                 "descendants": [(11, 11)]})
    assert book.reason(11) == pr.NO_ROW_REASON  # a cluster is not its own parent


def test_a_new_action_replaces_the_text_of_an_id_and_its_cached_view():
    book = pr.ReasonBook(_classification())
    _merge(book, [0, 1], 5)
    assert "merged from 0 (GOOD), 1 (MUA)" in book.html([5])
    book.record({"description": "split", "history": None, "added": [5],
                 "descendants": [(3, 5)]})
    assert book.reason(5) == "UNCLASSIFIED: split from 3 (GOOD); re-run bombcell"
    assert "split from 3 (GOOD)" in book.html([5]) and "merged from" not in book.html([5])


def test_origins_survive_a_reload_and_are_pruned_when_gone():
    old = pr.ReasonBook(_classification(), previous={20: MERGED, 21: MERGED.replace("0 (", "4 (")})
    _merge(old, [0, 1], 5)
    new = pr.ReasonBook(_classification(cluster_ids=(0, 1, 2, 3, 5)))  # 5 now has a row
    new.adopt_origins(old)
    assert new.reason(5) == "MUA: # spikes 250 < 300"
    assert new.reason(20) == MERGED
    new._origin[20] = "kept"
    new.adopt_origins(old)
    assert new.reason(20) == "kept"  # adopting never overwrites
    new.check_clusters([0, 1, 2, 3, 5, 21], prune=True)
    assert new.reason(20) == pr.NO_ROW_REASON and new.reason(21) != pr.NO_ROW_REASON
    assert new.ok


def test_recorded_origins_keep_only_merge_and_split_texts_of_unknown_clusters():
    previous = {"x": MERGED, "7": MERGED, 9: "MUA: an old reason", 1: MERGED,
                8: "UNCLASSIFIED: split from 1 (MUA); re-run bombcell", 10: None, 11: 3.0}
    assert pr.recorded_origins(previous, {1: "MUA: ..."}) == {
        7: MERGED, 8: "UNCLASSIFIED: split from 1 (MUA); re-run bombcell"}
    assert pr.recorded_origins(None, {}) == {}


# -- the dock view ---------------------------------------------------------------------------------

def test_view_one_cluster_several_and_none():
    book = pr.ReasonBook(_classification())
    assert "Select a cluster" in book.html([])
    one = book.html([1])
    assert "cluster 1" in one and "MUA: fraction RPVs 0.5 &gt; 0.1" in one
    assert book.html([1]) is not None and book._html[1] in one  # cached
    assert book.info(1) is book.info(1) and book.info(99) is None
    several = book.html([0, 1, 2, 3, 4, 99])
    assert "+2 more selected clusters not shown" in several
    assert all(f"<b>{c}</b>" in several for c in (0, 1, 2, 3)) and "<b>4</b>" not in several
    assert "UNCLASSIFIED" in book.html([99])


# -- results of another dataset or sorting --------------------------------------------------------

def test_results_of_another_dataset_inside_phy_without_spike_files():
    book = pr.ReasonBook(_classification())
    book.check_clusters([0, 1, 99])
    assert book.ok
    book.check_clusters([])
    assert book.ok
    book.check_clusters([50, 51])
    assert not book.ok and book.foreign
    assert book.reason(0) == pr.FOREIGN_RESULTS_REASON
    assert "none of the dataset's 2 clusters has a bombcell row" in book.error
    assert book.full_reason(0).startswith("UNCLASSIFIED: ")
    assert book.label_of(0) == pr.UNCLASSIFIED and book.info(0) is None
    assert pr.ReasonBook(previous={7: MERGED}).full_reason(7) == MERGED
    assert "another dataset" in book.html([0])


def test_a_matching_spike_file_is_not_foreign(dataset):
    book = pr.ReasonBook.load(dataset)
    book.check_clusters(range(5))
    assert book.ok and not book.foreign
    assert pr.foreign_results_problem(book.classification, dataset) is None


def test_a_book_that_cannot_check_stays_as_it_is():
    book = pr.ReasonBook(error="broken")
    book.check_clusters([50])
    assert not book.foreign and book.error == "broken"


def test_another_sortings_spike_counts_are_refused(dataset):
    np.save(dataset / "spike_clusters.npy", np.repeat(np.arange(5), [1000, 999, 1000, 1000, 250]))
    book = pr.ReasonBook.load(dataset)
    html_before = book.html([0])
    book.check_clusters(range(5))
    assert book.foreign and book.reason(0) == pr.FOREIGN_RESULTS_REASON
    assert book.html([0]) != html_before
    assert book.error == (
        f"{dataset / 'bombcell'}: bombcell's nSpikes disagrees with spike_clusters.npy for 1 of 5 "
        f"clusters (cluster 1: 1000 saved, 999 now): these results belong to another sorting or "
        f"are stale (Kilosort ran again?); re-run bombcell on this dataset")
    with pytest.raises(pr.BombcellReasonError, match="nSpikes disagrees"):
        pr.dataset_reasons(dataset)


def test_curation_is_not_a_foreign_sorting(dataset):
    # 0 and 1 merged into 5, 2 split into 6 and 7: their ids vanish, new ones appear.
    spikes = np.load(dataset / "spike_clusters.npy")
    spikes[np.isin(spikes, (0, 1))] = 5
    twos = np.flatnonzero(spikes == 2)
    spikes[twos[:400]], spikes[twos[400:]] = 6, 7
    np.save(dataset / "spike_clusters.npy", spikes)
    book = pr.ReasonBook.load(dataset)
    book.check_clusters([3, 4, 5, 6, 7])
    assert book.ok
    # Only clusters made after bombcell ran: none has a row, so not this dataset's results.
    assert "none of the dataset's 3 clusters" in pr.foreign_results_problem(
        book.classification, dataset, [5, 6, 7])


def test_spike_templates_alone_cannot_lose_a_cluster(dataset):
    spikes = np.load(dataset / "spike_clusters.npy")
    (dataset / "spike_clusters.npy").unlink()
    np.save(dataset / "spike_templates.npy", spikes)
    result = pr.classify_dataset(dataset)
    assert pr.foreign_results_problem(result, dataset) is None
    np.save(dataset / "spike_templates.npy", spikes[spikes != 3])  # template 3 lost its spikes
    assert "for 1 of 4 clusters (cluster 3: 1000 saved, 0 now)" in \
        pr.foreign_results_problem(result, dataset)


def test_duplicate_spikes_bombcell_removed(dataset):
    """With removeDuplicateSpikes bombcell counted without duplicates: exact where it saved
    which spikes those were, else at most the spike file's count."""
    params = dict(PARAMS, removeDuplicateSpikes=True)
    metrics = _metrics(n_spikes=[990, 1000, 1000, 1000, 250])  # 10 duplicates removed from 0
    write_results(dataset, params=params, metrics=metrics)
    result = pr.classify_dataset(dataset)
    assert pr.foreign_results_problem(result, dataset) is None  # no record: at most
    spikes = np.load(dataset / "spike_clusters.npy")
    duplicates = np.zeros(len(spikes), dtype=np.int8)
    duplicates[:10] = 1  # the first ten spikes of cluster 0
    np.save(dataset / "bombcell" / pr.DUPLICATES_FILE, duplicates)
    assert pr.foreign_results_problem(result, dataset) is None  # exact, and right
    duplicates[:10], duplicates[1000:1011] = 0, 1  # eleven of cluster 1's instead
    np.save(dataset / "bombcell" / pr.DUPLICATES_FILE, duplicates)
    assert "for 2 of 5 clusters (cluster 0: 990 saved, 1000 now)" in \
        pr.foreign_results_problem(result, dataset)
    np.save(dataset / "bombcell" / pr.DUPLICATES_FILE, duplicates[:-1])  # another spike file's
    assert pr.foreign_results_problem(result, dataset) is None  # no usable record: at most
    write_results(dataset, params=params, metrics=_metrics(n_spikes=[1001, 1000, 1000, 1000, 250]))
    assert "cluster 0: 1001 saved, 1000 now" in pr.foreign_results_problem(
        pr.classify_dataset(dataset), dataset)


def test_spike_counts_as_bombcell_counts_them(dataset):
    counts, name = pr.spike_counts(dataset)
    assert name == "spike_clusters.npy" and counts.tolist() == N_SPIKES
    np.save(dataset / "spike_clusters.npy", np.array([0, -1, 2]))
    assert pr.spike_counts(dataset) == (None, None)
    (dataset / "spike_clusters.npy").write_bytes(b"broken")
    assert pr.spike_counts(dataset) == (None, None)
    (dataset / "spike_clusters.npy").unlink()
    assert pr.spike_counts(dataset) == (None, None)
    assert pr.phy_cluster_ids(dataset) is None
    np.save(dataset / "spike_templates.npy", np.array([4, 4, 1], dtype=np.uint32))
    counts, name = pr.spike_counts(dataset)
    assert name == "spike_templates.npy" and counts.tolist() == [0, 1, 0, 0, 2]
    assert pr.phy_cluster_ids(dataset).tolist() == [1, 4]
    np.save(dataset / "spike_templates.npy", np.array([], dtype=np.uint32))
    assert pr.phy_cluster_ids(dataset).tolist() == []


# -- found by mutation testing ---------------------------------------------------------------------

def test_a_book_that_failed_to_load_keeps_the_origins_for_the_next_reload(tmp_path):
    failed = pr.ReasonBook.load(tmp_path, previous={7: MERGED})
    assert not failed.ok
    reloaded = pr.ReasonBook(_classification())
    reloaded.adopt_origins(failed)
    assert reloaded.reason(7) == MERGED


def test_an_unexpected_error_while_loading_is_reported_not_raised(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(pr, "classify_dataset", broken)  # our own reader, not phy or bombcell
    book = pr.ReasonBook.load(tmp_path, previous={7: MERGED})
    assert book.error == "bombcell's results could not be read (boom); see phy.log"
    assert book._origin == {7: MERGED}
    assert "bombcell reasons: reading bombcell's results failed: boom" in caplog.text


def test_an_error_in_the_foreign_results_check_is_reported_and_changes_nothing(
        dataset, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ValueError("bad spike file")
    book = pr.ReasonBook.load(dataset)
    monkeypatch.setattr(pr, "foreign_results_problem", broken)
    book.check_clusters(range(5))
    assert book.ok and not book.foreign
    assert ("bombcell reasons: checking that bombcell's results are this dataset's failed: "
            "bad spike file") in caplog.text


def test_the_check_uses_phys_clusters_not_the_spike_file(dataset):
    """phy's clusters in memory (merged in this session, not saved yet) are what is checked."""
    book = pr.ReasonBook.load(dataset)
    book.check_clusters([50, 51])
    assert book.foreign
    assert book.error == (f"{dataset / 'bombcell'}: none of the dataset's 2 clusters has a "
                          f"bombcell row; these results belong to another dataset, or re-run "
                          f"bombcell on this one")


def test_books_without_a_classification_check_and_count_nothing():
    origins_only = pr.ReasonBook(previous={7: MERGED})
    origins_only.check_clusters([5])
    assert origins_only.ok and not origins_only.foreign
    assert origins_only.n_failing(5) is None
    failed = pr.ReasonBook(_classification(), error="broken")
    failed.check_clusters([50])
    assert not failed.foreign and failed.error == "broken"
    without_dataset = pr.ReasonBook(_classification())
    without_dataset.check_clusters([50, 51])
    assert without_dataset.error == (
        ": none of the dataset's 2 clusters has a bombcell row; these results belong to another "
        "dataset, or re-run bombcell on this one")  # a Classification made in memory: no source


def test_an_undo_never_records_a_parent():
    book = pr.ReasonBook(_classification())
    _merge(book, [0, 1], 5)
    _merge(book, [5, 3], 8)
    book.record({"description": "merge", "history": "undo", "added": [5, 3],
                 "descendants": [(8, 5), (8, 3)]})
    assert book.reason(5) == MERGED


def test_every_added_cluster_is_recorded():
    book = pr.ReasonBook(_classification())
    book.record({"description": "split", "history": None, "added": [3, 9, 10, 11],
                 "descendants": [(2, 10), (2, 11)]})  # 3 has a row, 9 no parent
    assert book.reason(10) == book.reason(11) == "UNCLASSIFIED: split from 2 (NOISE); re-run bombcell"


def test_the_view_uses_its_cache_and_names_each_cluster():
    book = pr.ReasonBook(_classification())
    assert book.html([]) == pr._html_page(
        "<p class='dim'>Select a cluster to see why bombcell labelled it.</p>")
    book._html[1] = "cached part"
    assert book.html([1]) == pr._html_page("cached part")
    assert "cluster 99" in book.html([99])
    several = book.html([1, 2])
    assert "MUA: fraction RPVs 0.5 &gt; 0.1" in several and "NOISE: # troughs 3 &gt; 1" in several
    assert "No criterion fails" not in several and "fraction RPVs" in several


def test_a_bombcell_folder_elsewhere_is_read_and_checked_there(dataset, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "bc"
    (dataset / "bombcell").rename(elsewhere)
    path, result, _ = pr.export(dataset, elsewhere)
    assert path == dataset / pr.TSV_NAME and result.source == str(elsewhere)
    assert pr.read_cluster_tsv(path)[1] == "MUA: fraction RPVs 0.5 > 0.1"
    # With removeDuplicateSpikes, bombcell's record of duplicates is looked for there too.
    write_results(dataset, params=dict(PARAMS, removeDuplicateSpikes=True),
                  metrics=_metrics(n_spikes=[990, 1000, 1000, 1000, 250]))
    (dataset / "bombcell").rename(elsewhere.with_name("bc2"))
    elsewhere = elsewhere.with_name("bc2")
    duplicates = np.zeros(4250, dtype=np.int8)
    duplicates[1000:1011] = 1  # eleven of cluster 1's spikes, none of cluster 0's
    np.save(elsewhere / pr.DUPLICATES_FILE, duplicates)
    result = pr.classify_dataset(dataset, elsewhere)
    assert "cluster 0: 990 saved, 1000 now" in pr.foreign_results_problem(
        result, dataset, bombcell_dir=elsewhere)
    with pytest.raises(pr.BombcellReasonError, match="cluster 0: 990 saved, 1000 now"):
        pr.dataset_reasons(dataset, elsewhere)


def test_a_tsv_that_cannot_be_written_says_why_in_one_line(dataset):
    (dataset / pr.TSV_NAME).mkdir()  # root may write anywhere: a folder in the way
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.export(dataset)
    assert str(error.value) == (f"{dataset / pr.TSV_NAME}: cannot be written (Is a directory); "
                                f"check the folder's permissions and free space")


def test_a_status_without_an_order_is_listed_last():
    info = _classification().explain(1)
    info["criteria"][0]["status"] = "new status"
    listed = pr.ordered_criteria(info)
    assert listed[-1]["status"] == "new status" and listed[0]["decisive"]


def test_foreign_results_check_compares_exactly_only_what_it_can(dataset):
    result = pr.classify_dataset(dataset)  # removeDuplicateSpikes not saved: exact counts
    spikes = np.repeat(np.arange(5), [1000, 1001, 1000, 1000, 250])
    np.save(dataset / "spike_clusters.npy", spikes)
    assert "cluster 1: 1000 saved, 1001 now" in pr.foreign_results_problem(result, dataset)
    np.save(dataset / "spike_clusters.npy", np.repeat(np.arange(5), [1000, 1000, 1, 1000, 250]))
    assert "for 1 of 5 clusters (cluster 2: 1000 saved, 1 now)" in \
        pr.foreign_results_problem(result, dataset)
    # The highest id gone from the spike file (phy's clusters 0-3): outside the counts, fine.
    np.save(dataset / "spike_clusters.npy", np.repeat(np.arange(4), 1000))
    assert pr.foreign_results_problem(result, dataset, [0, 1, 2, 3]) is None
    # A flag bombcell could not have read: the lenient comparison (saved <= now).
    undecided = pr.Classification(dict(PARAMS, removeDuplicateSpikes=np.array([1, 2])),
                                  result.metrics, result.cluster_ids)
    np.save(dataset / "spike_clusters.npy", spikes)
    assert pr.foreign_results_problem(undecided, dataset) is None


def test_spike_templates_alone_counts_and_empty_units(dataset):
    (dataset / "spike_clusters.npy").unlink()
    np.save(dataset / "spike_templates.npy", np.repeat(np.arange(5), [1000, 999, 1000, 1000, 250]))
    result = pr.classify_dataset(dataset)
    assert "cluster 1: 1000 saved, 999 now" in pr.foreign_results_problem(result, dataset)
    write_results(dataset, params=PARAMS, metrics=_metrics(n_spikes=[1000, 1000, 1000, 1000, 0]))
    np.save(dataset / "spike_templates.npy", np.repeat(np.arange(4), 1000))  # 4 had no spikes
    assert pr.foreign_results_problem(pr.classify_dataset(dataset), dataset) is None


def test_duplicates_record_elsewhere_is_used_for_the_counts_too(dataset, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere2") / "bc"
    write_results(dataset, params=dict(PARAMS, removeDuplicateSpikes=True),
                  metrics=_metrics(n_spikes=[990, 1000, 1000, 1000, 250]))
    (dataset / "bombcell").rename(elsewhere)
    duplicates = np.zeros(4250, dtype=np.int8)
    duplicates[:10] = 1  # the ten spikes bombcell removed from cluster 0
    np.save(elsewhere / pr.DUPLICATES_FILE, duplicates)
    result = pr.classify_dataset(dataset, elsewhere)
    assert pr.foreign_results_problem(result, dataset, bombcell_dir=elsewhere) is None


def test_criteria_as_json(dataset):
    result = _classification()
    unit = pr.Classification(dict(PARAMS, maxDrift=float("nan")), {
        k: np.asarray([v], dtype=float) for k, v in dict(
            PASSING, rawAmplitude=NAN, signalToNoiseRatio=2, spatialDecaySlope=-INF,
            scndPeakToTroughRatio=INF).items()}, [0])
    by_name = {c["name"]: c for c in unit.explain(0)["criteria"]}

    def criterion(stage, metric, op, param, short, threshold, value, status, margin, decisive):
        return dict(stage=stage, metric=metric, op=op, param=param,
                    name=f"{metric} is NaN" if op == "isnan" else f"{metric}{op}{param}",
                    short=short, threshold=threshold, value=value, status=status, margin=margin,
                    decisive=decisive)
    assert by_name["nPeaks is NaN"] == criterion(
        "noise", "nPeaks", "isnan", None, "# peaks", None, 1.0, "pass", None, False)
    assert by_name["signalToNoiseRatio<minSNR"] == criterion(
        "mua", "signalToNoiseRatio", "<", "minSNR", "SNR", 5.0, 2.0, "nan", None, False)
    assert by_name["rawAmplitude<minAmplitude"] == criterion(
        "mua", "rawAmplitude", "<", "minAmplitude", "amplitude", 40.0, None, "nan", None, False)
    assert by_name["spatialDecaySlope<minSpatialDecaySlopeExp"] == criterion(
        "noise", "spatialDecaySlope", "<", "minSpatialDecaySlopeExp", "spatial decay", 0.01,
        "-inf", "disabled", None, False)
    assert by_name["spatialDecaySlope<minSpatialDecaySlope"] == criterion(
        "noise", "spatialDecaySlope", "<", "minSpatialDecaySlope", "spatial decay", -0.008,
        "-inf", "fail", "-inf", True)
    assert by_name["scndPeakToTroughRatio>maxScndPeakToTroughRatio_noise"] == criterion(
        "noise", "scndPeakToTroughRatio", ">", "maxScndPeakToTroughRatio_noise", "peak2/trough",
        0.8, "inf", "fail", "-inf", True)
    assert by_name["maxDriftEstimate>maxDrift"] == criterion(
        "mua", "maxDriftEstimate", ">", "maxDrift", "max. drift", None, 10.0, "pass", None, False)
    assert by_name["troughToPeak2Ratio<minTroughToPeak2Ratio_nonSomatic"] == criterion(
        "non-somatic A", "troughToPeak2Ratio", "<", "minTroughToPeak2Ratio_nonSomatic",
        "trough/peak2", 5.0, 10.0, "pass", 5.0, False)
    assert by_name["mainPeakToTroughRatio>maxMainPeakToTroughRatio_nonSomatic"]["stage"] == \
        "non-somatic B"
    assert result.explain(1)["decisive"] == [c for c in result.explain(1)["criteria"]
                                             if c["decisive"]]


# -- classify_dataset: what it refuses, in one line, and what it fills ------------------------------

def _rewrite_metrics(dataset, change):
    """Rewrite bombcell's metrics parquet (and drop its CSV twin) after ``change(table)``."""
    import pyarrow.parquet as pq
    path = dataset / "bombcell" / pr.METRICS_FILE
    pq.write_table(change(pq.read_table(path)), path)
    path.with_suffix(".csv").unlink(missing_ok=True)


def test_bombcell_folder_errors(tmp_path):
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path / "nowhere")
    assert str(error.value) == f"{tmp_path / 'nowhere'}: no such dataset folder"
    (tmp_path / "bombcell").mkdir()
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value) == f"{tmp_path / 'bombcell'}: empty; run bombcell on this dataset to fill it"
    (tmp_path / "bombcell" / "notes.txt").write_text("a stray file")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'bombcell' / pr.PARAMS_FILE}: missing; re-run "
                                f"bombcell on this dataset to write it")
    (tmp_path / "bombcell" / pr.PARAMS_FILE).write_bytes(b"not parquet")
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'bombcell' / pr.PARAMS_FILE}: cannot be read "
                                f"(Parquet magic bytes not found in footer. Either the file is "
                                f"corrupted or this is not a parquet file.); re-run bombcell to "
                                f"rewrite it")


def test_parameters_file_without_rows(dataset):
    import pyarrow.parquet as pq
    path = dataset / "bombcell" / pr.PARAMS_FILE
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(dataset)
    assert str(error.value) == f"{path}: holds no parameters; re-run bombcell to rewrite it"


def test_missing_and_old_metric_columns(dataset):
    metrics_file = dataset / "bombcell" / pr.METRICS_FILE
    _rewrite_metrics(dataset, lambda t: t.drop(["nPeaks", "nTroughs"]))
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(dataset)
    assert str(error.value) == (f"{metrics_file}: metric column nPeaks, nTroughs missing; re-run "
                                f"bombcell >= 0.94 on this dataset")
    _rewrite_metrics(dataset, lambda t: t.append_column("n_peaks", t.column("nSpikes")))
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(dataset)
    assert str(error.value) == (f"{metrics_file}: written by bombcell 0.31 or older (snake_case "
                                f"names such as n_peaks); re-run bombcell >= 0.94 on this dataset")


def test_metric_columns_text_disabled_and_in_any_order(dataset):
    import pyarrow as pa
    expected = pr.classify_dataset(dataset)
    # bc_unitType first, a text column nothing needs, no column for a disabled test (computeDrift)
    write_results(dataset, params=dict(PARAMS, computeDrift=False), metrics=_metrics())
    _rewrite_metrics(dataset, lambda t: t.select(
        ["bc_unitType"] + [n for n in t.column_names if n != "bc_unitType"]).append_column(
        "comment", pa.array(["a"] * 5)).drop(["maxDriftEstimate"]))
    result = pr.classify_dataset(dataset)
    assert result.reason.tolist() == expected.reason.tolist()
    assert result.bombcell_label.tolist() == ["GOOD", "MUA", "NOISE", "GOOD", "MUA"]
    drift = [r.metric for r in pr.RULES].index("maxDriftEstimate")
    assert np.isnan(result.values[drift]).all()
    _rewrite_metrics(dataset, lambda t: t.set_column(
        t.column_names.index("nTroughs"), "nTroughs", pa.array(["one"] * 5)))
    with pytest.raises(pr.BombcellReasonError) as error:
        pr.classify_dataset(dataset)
    assert str(error.value) == (f"{dataset / 'bombcell' / pr.METRICS_FILE}: column nTroughs is not "
                                f"numeric; re-run bombcell")


def test_cluster_ids_from_phy_clusterID_and_version_notes(tmp_path):
    params = {k: v for k, v in PARAMS.items() if k != "computeDrift"}
    write_results(tmp_path, params=dict(params, newKey=1, otherKey=2), metrics=_metrics(),
                  cluster_ids=[10, 11, 12, 20, 21])
    result = pr.classify_dataset(tmp_path)
    assert result.cluster_ids.tolist() == [10, 11, 12, 20, 21]
    assert result.reason_by_cluster()[11] == "MUA: fraction RPVs 0.5 > 0.1"
    assert result.notes[:2] == [
        "written by a bombcell newer than 0.94: unknown parameters/metrics newKey, otherKey; "
        "reasons follow 0.94's rules and may differ",
        "parameters missing from this bombcell run were filled with bombcell's "
        "back-compatibility defaults: computeDrift=False"]


def test_empty_csv_cells_of_metrics_are_nan(monkeypatch):
    monkeypatch.setattr(pr, "_read_columns", lambda path: {
        "nSpikes": [1.0, pr.EMPTY_CSV_CELL], "bc_unitType": ["GOOD", pr.EMPTY_CSV_CELL]})
    columns = pr._read_metrics(None)
    assert columns["nSpikes"].dtype == np.float64 and np.isnan(columns["nSpikes"][1])
    assert columns["bc_unitType"].tolist() == ["GOOD", None]

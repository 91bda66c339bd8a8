"""Draft of the phy side of phy-bc-reason (issue 4): the ``BombcellReasonPlugin``.

Everything below the "paste from here" line is one self-contained section meant to be pasted
at the bottom of ``phy_bc_reason_plugin.py``; the import block just above it is then deleted
(the names it imports are the engine's own).  Like the engine, the section imports neither phy
nor Qt at module level: ``phy-bc-reason`` must stay fast, and ``import phy`` also reconfigures
the root logger.  The phy classes are created on first use:

* when phy loads this module (from ``phy_config.py`` or a plugin folder) phy is already
  imported, so the bottom of the module creates and registers them at once;
* otherwise ``module.BombcellReasonPlugin`` / ``module.BombcellReasonView`` create them through
  the module's ``__getattr__``.
"""

# -- delete this import block when pasting into phy_bc_reason_plugin.py -----------------------
import logging
import sys
from pathlib import Path

from phy_bc_reason_plugin import (  # the engine's contract
    COLUMN,
    NO_LABEL,
    ROUTE_NAMES,
    TSV_NAME,
    UNCLASSIFIED,
    BombcellReasonError,
    classify_dataset,
    label_counts,
    unclassified_reason,
    write_reason_tsv,
)

# ===============================================================================================
# ---- paste from here: the phy plugin ----------------------------------------------------------
# ===============================================================================================
#
# How the column gets into phy, exactly once (phy 2.1 / phylib 2.7)
# ------------------------------------------------------------------
# phy builds the cluster and similarity views from ``Supervisor.columns``, computed once in
# ``Supervisor.__init__`` as ``['id'] + list(controller.cluster_metrics) + <labels>``, where the
# labels are ``TemplateModel.metadata``: phylib reads *every* ``*.tsv``/``*.csv`` of the dataset
# folder (except cluster_info.tsv) as a ``{field: {cluster_id: value}}`` label when the model
# loads.  Labels live in ``supervisor.cluster_meta``; a merge or split copies the parents' label
# to the new cluster (``ClusterMeta.set_from_descendants``, "the largest cluster wins"), and
# phy's save writes every label back to ``cluster_<field>.tsv``.
#
# So the reason is NOT a label.  It is a cluster *metric*: a function ``cluster_id -> text``
# that ``Supervisor.get_cluster_info`` calls whenever a row is built (startup, clusters added by
# a merge/split/undo/redo, similarity view).  ``attach_to_controller`` runs after the model is
# loaded but before the supervisor exists, and there it
#   1. pops ``bc_classificationReason`` from ``controller.model.metadata`` (the TSV that an
#      earlier save or ``phy-bc-reason export`` left), so it never becomes a second column, a
#      ``cluster_meta`` field that phy would copy from parents, or a file phy rewrites on save;
#   2. puts our function first in ``controller.cluster_metrics``.
# One name in ``Supervisor.columns`` -> one column in each view.  A new cluster id has no
# bombcell row; the text for it comes from the ``cluster`` event that created it (merged/split
# from ...), never from its parents' rows.  Undo/redo need no bookkeeping: they re-add the old
# ids, whose rows the function looks up again.  Clusters made in an earlier session keep their
# "merged from"/"split from" text through the TSV, which we read in step 1.
#
# Column order: phy orders the views' columns as ``supervisor.columns`` (no saved column order
# in phy 2.1's native Qt table; its GUI state keeps only the sort and the selection), so on
# ``controller_ready`` -- after the supervisor exists, before ``create_gui`` builds the tables --
# we move ``bc_classificationReason`` and ``bc_unitType`` right after ``id``, and leave the raw
# bombcell metric labels out unless the user chose to show them (see set_show_raw_metrics).
#
# Events and APIs used: controller ``controller_ready`` and ``gui_ready``; supervisor ``cluster``
# (UpdateInfo: description, history, added, descendants) and ``select`` (the dock view), and
# ``save_clustering`` (connected last=True, so it runs after phy's own ``on_save_clustering``);
# GUI ``close``; view ``close_view``; ``controller.cluster_metrics``, ``controller.view_creator``,
# ``supervisor.columns``, ``ClusterView._reset_table`` (what
# phy's ``Supervisor.label`` uses to add a column), ``Actions(gui, menu=...)`` with
# ``alias``/``prompt`` for the ``:bc`` snippet, ``gui.state`` (the plugin's toggles, saved in
# phy's state.json), ``gui.status_message`` and the "phy" logger (phy.log + status bar).
# Every function phy calls is wrapped: an exception is logged and shown, never raised into phy.

PHY_LOGGER = logging.getLogger("phy.bc_reason")  # a child of "phy": phy.log and the status bar
PLUGIN_NAME = "BombcellReasonPlugin"
VIEW_NAME = "BombcellReasonView"
UNIT_TYPE_COLUMN = "bc_unitType"
NO_ROW_REASON = unclassified_reason("no bombcell row for this cluster")
_ORIGIN_PREFIXES = (f"{UNCLASSIFIED}: merged from ", f"{UNCLASSIFIED}: split from ")
# The cluster_<metric>.tsv files bombcell 0.94 writes next to the data (save_utils.get_metric_keys),
# used when the results cannot be read; otherwise Classification.metric_columns is used too.
_BOMBCELL_TSV_METRICS = (
    "nPeaks", "nTroughs", "waveformDuration_peakTrough", "spatialDecaySlope",
    "waveformBaselineFlatness", "scndPeakToTroughRatio", "mainPeakToTroughRatio",
    "peak1ToPeak2Ratio", "troughToPeak2Ratio", "mainPeak_before_width", "mainTrough_width",
    "percentageSpikesMissing_gaussian", "percentageSpikesMissing_symmetric", "RPV_window_index",
    "fractionRPVs_estimatedTauR", "estimatedTauR", "RPV_status", "presenceRatio",
    "maxDriftEstimate", "cumDriftEstimate", "rawAmplitude", "signalToNoiseRatio",
    "isolationDistance", "Lratio", "silhouetteScore", "useTheseTimesStart", "useTheseTimesStop",
)
_MAX_CLUSTERS_IN_VIEW = 6


def _ids_text(ids):
    return ", ".join(str(i) for i in sorted({int(i) for i in ids}))


def merged_reason(parents):
    return unclassified_reason(f"merged from {_ids_text(parents)} after bombcell ran; re-run bombcell")


def split_reason(parents):
    return unclassified_reason(f"split from {_ids_text(parents)} after bombcell ran; re-run bombcell")


def _one_line(error):
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _report_exception(what, error, gui=None):
    """An exception in the plugin: one line to phy.log and the status bar, traceback to phy.log."""
    import traceback
    message = f"bombcell reasons: {what} failed: {_one_line(error)}"
    try:
        PHY_LOGGER.error(message)
        PHY_LOGGER.debug("".join(traceback.format_exception(type(error), error,
                                                            error.__traceback__)))
        if gui is not None:
            gui.status_message = message
    except Exception:  # the report itself must not raise into phy either
        pass


def _guarded(what):
    """Decorator for every function phy calls: exceptions are reported, never raised into phy
    (phylib's ``emit`` does not catch them, so one would stop the other handlers and plugins)."""
    def decorate(f):
        import functools

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except Exception as e:
                owner = args[0] if args and isinstance(args[0], _PluginLogic) else None
                _report_exception(what, e, getattr(owner, "gui", None))
        return wrapper
    return decorate


class ReasonBook:
    """The text of the column for every cluster phy shows, as O(1) lookups.

    A cluster bombcell classified gets bombcell's reason; a cluster made in phy after bombcell ran
    gets "UNCLASSIFIED: merged from ..."/"split from ..."; any other gets NO_ROW_REASON.  When
    bombcell's results cannot be read every cluster gets "UNCLASSIFIED: <problem>".  Pure Python
    (no phy), so it is cheap to test and to rebuild on reload.
    """

    def __init__(self, classification=None, error=None, previous=None):
        self.classification = classification
        self.error = error
        self._base = classification.reason_by_cluster() if classification is not None else {}
        self._origin = {}  # cluster id made after bombcell ran -> its UNCLASSIFIED text
        self._html = {}  # cluster id -> cached HTML of the dock view
        for cluster_id, text in (previous or {}).items():
            try:
                cluster_id = int(cluster_id)
            except (TypeError, ValueError):
                continue
            if (cluster_id not in self._base and isinstance(text, str)
                    and text.startswith(_ORIGIN_PREFIXES)):
                self._origin[cluster_id] = text

    @classmethod
    def load(cls, dataset_dir, previous=None):
        """Classify a dataset; any failure becomes the book's ``error``, never an exception."""
        try:
            return cls(classify_dataset(dataset_dir), previous=previous)
        except BombcellReasonError as e:
            return cls(error=_one_line(e), previous=previous)
        except Exception as e:  # a bug or an unexpected file: phy must still open
            _report_exception("reading bombcell's results", e)
            return cls(error=f"bombcell's results could not be read ({_one_line(e)}); "
                             f"see phy.log", previous=previous)

    @property
    def ok(self):
        return self.error is None

    @property
    def source_mtime(self):
        return self.classification.source_mtime if self.classification is not None else None

    def metric_columns(self):
        names = set(_BOMBCELL_TSV_METRICS)
        if self.classification is not None:
            names.update(self.classification.metric_columns)
        return names

    def check_clusters(self, cluster_ids, prune=False):
        """Turn results that match none of phy's clusters into an error (another dataset's).
        ``prune``: forget origins (read from an old TSV) of clusters that do not exist."""
        cluster_ids = [int(c) for c in cluster_ids]
        if prune:
            existing = set(cluster_ids)
            self._origin = {c: t for c, t in self._origin.items() if c in existing}
        if (self.ok and self.classification is not None and cluster_ids
                and not any(c in self._base for c in cluster_ids)):
            self.error = (f"{self.classification.source}: none of the dataset's {len(cluster_ids)} "
                          f"clusters has a bombcell row; these results belong to another dataset, "
                          f"or re-run bombcell on this one")
            self._html.clear()

    def reason(self, cluster_id):
        if self.error is not None:
            return unclassified_reason(self.error)
        text = self._base.get(cluster_id)
        if text is None:
            text = self._origin.get(cluster_id, NO_ROW_REASON)
        return text

    def reasons(self, cluster_ids):
        return {int(c): self.reason(int(c)) for c in cluster_ids}

    def adopt_origins(self, other):
        """Keep what another book learnt about clusters made in this session (for reload)."""
        for cluster_id, text in other._origin.items():
            if cluster_id not in self._base:
                self._origin.setdefault(cluster_id, text)

    def record(self, up):
        """Learn where the clusters of a merge/split come from, from phy's ``cluster`` event.

        An undo re-adds old clusters and reports them as "descendants" of the undone one: ignored.
        A redo re-adds the ids of the redone action: what we learnt then still holds.  A new
        action always creates brand-new ids (phy never reuses them), so its text replaces any.
        """
        history = up.get("history")
        if history == "undo" or not up.get("added"):
            return
        parents = {}
        for old, new in up.get("descendants") or ():
            parents.setdefault(int(new), set()).add(int(old))
        merge = up.get("description") == "merge"
        for new in up["added"]:
            new = int(new)
            if new in self._base or (history == "redo" and new in self._origin):
                continue
            from_ = parents.get(new, set()) - {new}
            if not from_:
                continue
            self._origin[new] = merged_reason(from_) if merge else split_reason(from_)
            self._html.pop(new, None)

    # -- the dock view ----------------------------------------------------------------------------

    def html(self, cluster_ids):
        """HTML of the dock view for a selection (cached per cluster: a selection is a join)."""
        cluster_ids = [int(c) for c in cluster_ids][:_MAX_CLUSTERS_IN_VIEW]
        if not cluster_ids:
            return _html_page("<p class='dim'>Select a cluster to see why bombcell labelled it.</p>")
        parts = []
        for cluster_id in cluster_ids:
            part = self._html.get(cluster_id)
            if part is None:
                part = self._html[cluster_id] = self._cluster_html(cluster_id)
            parts.append(part)
        return _html_page("<hr>".join(parts))

    def _cluster_html(self, cluster_id):
        info = None
        if self.error is None and cluster_id in self._base:
            info = self.classification.explain(cluster_id)
        if info is None:
            return _unclassified_html(cluster_id, self.reason(cluster_id), self.error)
        return _explanation_html(info)


# -- HTML (QTextBrowser's rich-text subset: tables, inline styles, no CSS selectors on classes
#    beyond the document stylesheet) ----------------------------------------------------------

_STATUS_ORDER = {"fail": 0, "nan": 1, "pass": 2, "disabled": 3}
_LABEL_COLORS = {"GOOD": "#86d16d", "MUA": "#e0b040", "NOISE": "#a0a0a0", UNCLASSIFIED: "#e07070"}
_CSS = """
body { background-color: #000; color: #ddd; font-size: 10pt; }
h3 { margin: 2px 0 2px 0; }
td, th { padding: 1px 5px 1px 5px; white-space: nowrap; }
th { color: #aaa; text-align: left; font-weight: normal; }
.dim { color: #888; }
.num { text-align: right; }
"""


def _esc(text):
    import html
    return html.escape(str(text), quote=False)


def _html_page(body):
    return f"<html><head><style>{_CSS}</style></head><body>{body}</body></html>"


def _label_color(label):
    label = str(label or "")
    for key, color in _LABEL_COLORS.items():
        if label.startswith(key):
            return color
    return "#c090e0" if label.startswith("NON-SOMA") else "#ddd"


def _fmt(x):
    if x is None:
        return "&ndash;"
    if isinstance(x, str):
        return _esc(x)
    x = float(x)
    if x == int(x) and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.4g}"


def _stage_title(stage):
    base, _, route = stage.partition(" ")
    if route and route in ROUTE_NAMES:
        return f"{base} ({ROUTE_NAMES[route]})"
    return stage


def _explanation_html(info):
    label = info["label"] or NO_LABEL
    saved = info["bombcell_label"]
    out = [
        f"<h3>cluster {info['cluster_id']} &nbsp;"
        f"<span style='color:{_label_color(label)}'>{_esc(label)}</span></h3>",
        f"<p><b>reason:</b> {_esc(info['reason'])}<br>",
        f"<span class='dim'>bombcell's own label:</span> "
        f"{_esc(saved) if saved is not None else 'not saved'}</p>",
    ]
    decisive = {(c["metric"], c["op"], c["param"]) for c in info["decisive"]}
    stages = []  # stage order of the rule table, then failing criteria first inside each stage
    for c in info["criteria"]:
        if c["stage"] not in stages:
            stages.append(c["stage"])
    rows = ["<table cellspacing='0'><tr><th></th><th>criterion</th><th class='num'>value</th>"
            "<th></th><th class='num'>limit</th><th>status</th><th class='num'>margin</th></tr>"]
    worst = {s: min(_STATUS_ORDER[c["status"]] for c in info["criteria"] if c["stage"] == s)
             for s in stages}
    for stage in sorted(stages, key=lambda s: (worst[s], stages.index(s))):
        rows.append(f"<tr><td colspan='7' style='white-space:normal; color:#9cf; font-weight:bold;"
                    f" padding-top:6px'>{_esc(_stage_title(stage))}</td></tr>")
        crits = [c for c in info["criteria"] if c["stage"] == stage]
        for c in sorted(crits, key=lambda c: _STATUS_ORDER[c["status"]]):
            is_decisive = (c["metric"], c["op"], c["param"]) in decisive
            if c["status"] == "fail":
                style, dim = " style='background-color:#5a1d1d; color:#ffc0c0'", "#d89090"
            elif c["status"] in ("nan", "disabled"):
                style, dim = " style='color:#777'", "#666"
            else:
                style, dim = "", "#888"
            metric = _esc(c["metric"] + (" is NaN" if c["op"] == "isnan" else ""))
            name = f"<b>{metric}</b>" if is_decisive else metric
            if c["param"]:
                name += f"<br><span style='color:{dim}; font-size:9pt'>{_esc(c['param'])}</span>"
            mark = "&#9733;" if is_decisive else ""
            op = "" if c["op"] == "isnan" else _esc(c["op"])
            rows.append(
                f"<tr{style}><td>{mark}</td><td>{name}</td>"
                f"<td class='num'>{_fmt(c['value'])}</td><td>{op}</td>"
                f"<td class='num'>{_fmt(c['threshold'])}</td><td>{c['status']}</td>"
                f"<td class='num'>{_fmt(c['margin'])}</td></tr>")
    rows.append("</table>")
    out.append("".join(rows))
    out.append("<p class='dim'>&#9733; decides the label &middot; margin: distance on the passing "
               "side, negative = failing</p>")
    if info["notes"]:
        out.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in info["notes"]) + "</ul>")
    return "".join(out)


def _unclassified_html(cluster_id, reason, error):
    if error is not None:
        hint = ("Fix the problem above (or run bombcell), then use Bombcell &gt; Reload bombcell "
                "results; phy itself works as usual.")
    else:
        hint = ("bombcell only judged the clusters that existed when it ran. Save, re-run bombcell "
                "on this dataset, then use Bombcell &gt; Reload bombcell results.")
    return (f"<h3>cluster {cluster_id} &nbsp;<span style='color:{_label_color(UNCLASSIFIED)}'>"
            f"{UNCLASSIFIED}</span></h3><p>{_esc(reason)}</p><p class='dim'>{hint}</p>")


# -- the plugin -------------------------------------------------------------------------------


class _PluginLogic:
    """Everything ``BombcellReasonPlugin`` does; the phy class adds only ``IPlugin`` (phy is
    imported lazily, see ``_define_phy_classes``)."""

    def attach_to_controller(self, controller):
        """Called by phy after the model is loaded and before the supervisor is created."""
        self.controller = controller
        controller.bombcell_reason = self  # for the IPython view, other plugins and tests
        self.gui = None
        self.view = None
        self.show_raw_metrics = False
        self._startup_message = None
        self._reason_failed = False
        self.book = ReasonBook(error="bombcell reasons not loaded yet")
        try:
            self._connect(self._on_controller_ready, "controller_ready", controller)
            self._connect(self._on_gui_ready, "gui_ready", controller)
            self._attach(controller)
        except Exception as e:  # phy opens anyway; the status bar says what went wrong
            if self.book.ok:
                self.book = ReasonBook(error=f"plugin error: {_one_line(e)}")
            self._startup_message = f"bombcell reasons: attaching to phy failed: {_one_line(e)}"
            _report_exception("attaching to phy", e)

    def _connect(self, func, event, sender):
        from phylib.utils import connect
        connect(func, event=event, sender=sender, last=event == "save_clustering")

    def _attach(self, controller):
        self.dataset_dir = Path(controller.dir_path)
        metadata = getattr(controller.model, "metadata", None)
        previous = metadata.pop(COLUMN, None) if isinstance(metadata, dict) else None
        self.book = ReasonBook.load(self.dataset_dir, previous=previous)
        if self.book.ok:
            PHY_LOGGER.debug("bombcell reasons: read %s", self.book.classification.source)
        else:
            PHY_LOGGER.warning("bombcell reasons unavailable: %s", self.book.error)

        # Our column first among the metrics, so that it follows the id column.
        metrics = controller.cluster_metrics
        others = {k: v for k, v in metrics.items() if k != COLUMN}
        metrics.clear()
        metrics[COLUMN] = self.reason
        metrics.update(others)

        # In View > Add view.  Shown by default: added once in _on_gui_ready (phy's first start
        # copies its own default state.json, whose view_count would ignore default_views).
        controller.view_creator[VIEW_NAME] = self._create_view

    # -- the column -------------------------------------------------------------------------------

    def reason(self, cluster_id):
        """The column's value (phy calls this for every row it builds)."""
        try:
            return self.book.reason(cluster_id)
        except Exception as e:
            if not self._reason_failed:  # once, not once per row
                self._reason_failed = True
                _report_exception("computing the reason column", e, self.gui)
            return unclassified_reason(f"plugin error: {_one_line(e)}")

    # -- controller events ------------------------------------------------------------------------

    @_guarded("setting up the cluster view")
    def _on_controller_ready(self, sender):
        supervisor = self.controller.supervisor
        self.book.check_clusters(supervisor.clustering.cluster_ids, prune=True)
        # Column order: id, our reason, bombcell's label, then phy's and the other labels.
        first = ["id", COLUMN] + ([UNIT_TYPE_COLUMN] if UNIT_TYPE_COLUMN in supervisor.columns else [])
        supervisor.columns[:] = first + [c for c in supervisor.columns if c not in first]
        # The raw metric columns are hidden by leaving them out of the views (see
        # set_show_raw_metrics), decided before phy builds the tables.
        metrics = self.book.metric_columns()
        self._raw_metric_columns = [c for c in supervisor.columns if c in metrics]
        self.show_raw_metrics = self._saved_state().get("show_raw_metrics", False) is True
        if not self.show_raw_metrics:
            supervisor.columns[:] = [c for c in supervisor.columns if c not in metrics]
        self._connect(self._on_cluster, "cluster", supervisor)
        self._connect(self._on_save_clustering, "save_clustering", supervisor)
        self._write_tsv_if_stale()

    @_guarded("following a clustering change")
    def _on_cluster(self, sender, up):
        self.book.record(up)

    @_guarded("writing the reasons TSV after phy's save")
    def _on_save_clustering(self, sender, *args, **kwargs):
        self.write_tsv(on_save=True)

    @_guarded("setting up the GUI")
    def _on_gui_ready(self, sender, gui):
        self.gui = gui
        state = gui.state.get(PLUGIN_NAME, None) or {}
        self._create_actions(gui)
        self._connect(self._on_gui_close, "close", gui)
        if self.book.ok and not state.get("view_added_once") and not gui.list_views(VIEW_NAME):
            gui.create_and_add_view(VIEW_NAME)
        if self.book.ok or gui.list_views(VIEW_NAME):
            state["view_added_once"] = True
        state["show_raw_metrics"] = self.show_raw_metrics
        gui.state[PLUGIN_NAME] = state
        self.say(self._startup_message or self.summary(),
                 logging.INFO if self.book.ok else logging.WARNING)

    @_guarded("closing")
    def _on_gui_close(self, sender):
        state = self.gui.state.get(PLUGIN_NAME, None) or {}
        state["show_raw_metrics"] = self.show_raw_metrics
        self.gui.state[PLUGIN_NAME] = state
        # The GUI's handlers go; the controller's stay (a controller may get another GUI).
        from phylib.utils import unconnect
        unconnect(self._on_gui_close)
        if self.view is not None:
            self.view.detach()

    # -- feedback ---------------------------------------------------------------------------------

    def say(self, message, level=logging.INFO):
        """One line to phy.log and the status bar."""
        PHY_LOGGER.log(level, message)
        if self.gui is not None:
            self.gui.status_message = message

    def summary(self):
        book = self.book
        if not book.ok:
            return f"bombcell reasons unavailable ({UNCLASSIFIED}): {book.error}"
        counts = label_counts(book.classification.label)
        text = ", ".join(f"{k} {v}" for k, v in counts.items())
        source = book.classification.source
        return f"bombcell reasons: {len(book.classification)} units ({text}) from {source}"

    def _cluster_ids(self):
        return self.controller.supervisor.clustering.cluster_ids

    # -- TSV --------------------------------------------------------------------------------------

    def write_tsv(self, on_save=False):
        """Write cluster_bc_classificationReason.tsv for phy's current clusters."""
        if not self.book.ok:
            self.say(f"bombcell reasons: {TSV_NAME} not written: {self.book.error}", logging.WARNING)
            return None
        path = write_reason_tsv(self.dataset_dir, self.book.reasons(self._cluster_ids()))
        self.say(f"bombcell reasons: wrote {path}{' after phy saved' if on_save else ''}")
        return path

    def _write_tsv_if_stale(self):
        if not self.book.ok:
            return
        path = self.dataset_dir / TSV_NAME
        try:
            stale = not path.exists() or path.stat().st_mtime < self.book.source_mtime
        except OSError:
            stale = True
        if stale:
            written = self.write_tsv()
            self._startup_message = f"{self.summary()}; wrote {written.name}"

    # -- columns ----------------------------------------------------------------------------------

    def _saved_state(self):
        """The plugin's part of phy's GUI state file, read before the GUI exists."""
        import json
        try:
            from phylib.utils._misc import phy_config_dir
            config_dir = Path(self.controller.config_dir or phy_config_dir())
            path = config_dir / self.controller.gui_name / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {}
            return state.get(PLUGIN_NAME) or {}
        except Exception as e:  # a corrupt state file: phy will say so itself
            PHY_LOGGER.debug("bombcell reasons: GUI state unreadable: %s", e)
            return {}

    def _rebuild_tables(self):
        """Rebuild the cluster and similarity views with ``supervisor.columns`` (what phy's own
        ``Supervisor.label`` does when it adds a column), keeping the sort and the selection."""
        supervisor = self.controller.supervisor
        cv, sv = supervisor.cluster_view, supervisor.similarity_view
        sort = cv.get_current_sort()
        cv._reset_table(data=supervisor.cluster_info, columns=list(supervisor.columns),
                        sort=tuple(sort) if sort else None)
        similar = list(supervisor.selected_similar)
        sv._reset_table(data=[], columns=list(supervisor.columns) + ["similarity"],
                        sort=("similarity", "desc"))
        sv.reset(supervisor.selected_clusters)
        if similar:
            sv.select(similar)

    def _refresh_tables(self):
        supervisor = self.controller.supervisor
        rows = [{"id": c, COLUMN: self.book.reason(c)} for c in self._cluster_ids()]
        supervisor.cluster_view.change(rows)
        supervisor.similarity_view.change(rows)

    # -- dock view --------------------------------------------------------------------------------

    def _create_view(self):
        cls = _define_phy_classes()[1]
        return cls(self)

    def selection_html(self, cluster_ids):
        return self.book.html(cluster_ids)

    def _show_view(self):
        gui = self.gui
        views = gui.list_views(VIEW_NAME)
        view = views[0] if views else gui.create_and_add_view(VIEW_NAME)
        if view is not None:
            view.show_selection(self.controller.supervisor.selected)
            dock = getattr(view, "dock", None)
            if dock is not None:
                dock.show()
                dock.raise_()
        return view

    # -- the Bombcell menu ------------------------------------------------------------------------

    def _create_actions(self, gui):
        from phy.gui.actions import Actions
        self.actions = actions = Actions(gui, name="Bombcell", menu="&Bombcell",
                                         insert_menu_before="&Help")
        actions.add(self._action_show_criteria, name="show_criteria_of_selected_cluster",
                    shortcut="alt+b", alias="bcs")
        actions.add(self._action_select, name="select_cluster_and_show_criteria", alias="bc",
                    prompt=True, n_args=1)
        actions.separator()
        actions.add(self._action_export, name="export_reasons_TSV_now", alias="bce")
        actions.add(self._action_reload, name="reload_bombcell_results", alias="bcr")
        actions.add(self._action_toggle_metrics, name="show_raw_bombcell_metric_columns",
                    alias="bcm", checkable=True, checked=self.show_raw_metrics)

    @_guarded("Show criteria of selected cluster")
    def _action_show_criteria(self):
        """Show every bombcell criterion of the selected cluster in the Bombcell view."""
        self.show_criteria()

    @_guarded("the :bc snippet")
    def _action_select(self, cluster_id):
        """Select a cluster and show its bombcell criteria (snippet :bc ID)."""
        self.select_and_show(cluster_id)

    @_guarded("Export reasons TSV now")
    def _action_export(self):
        """Write cluster_bc_classificationReason.tsv for the current clusters now."""
        self.write_tsv()

    @_guarded("Reload bombcell results")
    def _action_reload(self):
        """Read bombcell's results again (after bombcell ran again) without restarting phy."""
        self.reload()

    @_guarded("Show/hide raw bombcell metric columns")
    def _action_toggle_metrics(self, checked):
        """Show or hide the cluster_<metric>.tsv columns that bombcell writes for phy."""
        self.set_show_raw_metrics(checked)

    def show_criteria(self):
        selected = self.controller.supervisor.selected
        self._show_view()
        if selected:
            self.say(f"cluster {selected[0]}: {self.book.reason(selected[0])}")
        else:
            self.say("bombcell reasons: select a cluster first")

    def select_and_show(self, cluster_id):
        if isinstance(cluster_id, (list, tuple)):
            cluster_ids = [int(c) for c in cluster_id]
        else:
            cluster_ids = [int(cluster_id)]
        existing = set(int(c) for c in self._cluster_ids())
        missing = [c for c in cluster_ids if c not in existing]
        if missing:
            self.say(f"bombcell reasons: no cluster {_ids_text(missing)} in this dataset", logging.WARNING)
            return
        self.controller.supervisor.select(cluster_ids)
        self._show_view()
        self.say(f"cluster {cluster_ids[0]}: {self.book.reason(cluster_ids[0])}")

    def reload(self):
        old = self.book
        book = ReasonBook.load(self.dataset_dir)
        book.adopt_origins(old)
        book.check_clusters(self._cluster_ids())
        self.book = book
        self._refresh_tables()
        for view in self.gui.list_views(VIEW_NAME) if self.gui is not None else ():
            view.show_selection(self.controller.supervisor.selected)
        if book.ok:
            self._startup_message = None
            self._write_tsv_if_stale()
            self.say(f"reloaded: {self._startup_message or self.summary()}")
        else:
            self.say(f"reload: bombcell reasons unavailable: {book.error}", logging.WARNING)

    def set_show_raw_metrics(self, show):
        """Show or hide the raw bombcell metric columns.  Hidden columns are left out of the
        views, not just narrowed: phy 2.1's table sizes every cell of every column to its
        contents in Python, so ~20 fewer columns halve the time phy takes to open 3,000
        clusters.  (Sorting or filtering by a metric needs it shown.)"""
        show = bool(show)
        supervisor = self.controller.supervisor
        raw = getattr(self, "_raw_metric_columns", [])
        columns = [c for c in supervisor.columns if c not in raw]
        if show:
            columns += raw
        changed = columns != list(supervisor.columns)
        supervisor.columns[:] = columns
        self.show_raw_metrics = show
        if self.gui is not None:
            state = self.gui.state.get(PLUGIN_NAME, None) or {}
            state["show_raw_metrics"] = show
            self.gui.state[PLUGIN_NAME] = state
        if changed:
            self._rebuild_tables()
        self.say(f"bombcell reasons: {len(raw)} raw bombcell metric columns "
                 f"{'shown' if show else 'hidden'}")


def _define_phy_classes():
    """Create (once) the classes that need phy and Qt, register the plugin with phy, and return
    ``(BombcellReasonPlugin, BombcellReasonView)``."""
    module = sys.modules[__name__]
    existing = module.__dict__.get("_PHY_CLASSES")
    if existing is not None:
        return existing

    from phy import IPlugin
    from phylib.utils import connect, unconnect
    from PyQt5.QtWidgets import QTextBrowser

    class BombcellReasonPlugin(_PluginLogic, IPlugin):
        """phy plugin: why bombcell labelled each cluster GOOD/MUA/NOISE/NON-SOMA.

        Adds the ``bc_classificationReason`` column to the cluster and similarity views, the
        ``BombcellReasonView`` dock view, and a Bombcell menu (alt+b, snippet ``:bc ID``).
        """

    class BombcellReasonView(QTextBrowser):
        """Dock view: label, bombcell's own label, reason and every criterion of the selection."""

        def __init__(self, plugin):
            super().__init__()
            self.plugin = plugin
            self.setOpenLinks(False)
            self.setReadOnly(True)
            self.setStyleSheet("QTextBrowser { background-color: black; color: #ddd; border: 0; }")
            self._supervisor = None

        def attach(self, gui):
            gui.add_view(self, position="right")
            self._supervisor = self.plugin.controller.supervisor
            connect(self.on_select, event="select", sender=self._supervisor)
            connect(self.on_close_view, event="close_view", sender=self)
            self.plugin.view = self
            self.show_selection(self._supervisor.selected)

        def on_select(self, sender, cluster_ids, **kwargs):
            try:
                self.show_selection(cluster_ids)
            except Exception as e:
                _report_exception("updating the Bombcell view", e, self.plugin.gui)

        def show_selection(self, cluster_ids):
            self.setHtml(self.plugin.selection_html(cluster_ids))
            dock = getattr(self, "dock", None)
            if dock is not None and cluster_ids:
                dock.set_status(_one_line(self.plugin.book.reason(int(cluster_ids[0]))))

        def on_close_view(self, view, gui):
            self.detach()

        def detach(self):
            unconnect(self.on_select, self.on_close_view)
            if self.plugin.view is self:
                self.plugin.view = None

    for cls in (BombcellReasonPlugin, BombcellReasonView):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
    module.BombcellReasonPlugin = BombcellReasonPlugin
    module.BombcellReasonView = BombcellReasonView
    module._PHY_CLASSES = (BombcellReasonPlugin, BombcellReasonView)
    return module._PHY_CLASSES


def __getattr__(name):  # PEP 562: the phy classes on first use, without importing phy earlier
    if name in ("BombcellReasonPlugin", "BombcellReasonView"):
        _define_phy_classes()
        return sys.modules[__name__].__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- enabling the plugin ----------------------------------------------------------------------

_CONFIG_BEGIN = "# >>> phy-bc-reason >>>"
_CONFIG_END = "# <<< phy-bc-reason <<<"


def _config_block(module_name, module_dir):
    return f"""{_CONFIG_BEGIN} (added by `phy-bc-reason install`; remove the block to disable)
try:
    try:
        import {module_name}
    except ImportError:
        import sys as _bc_sys
        _bc_sys.path.append(r"{module_dir}")
        import {module_name}
    {module_name}.{PLUGIN_NAME}  # creates and registers the phy plugin class
except Exception as _bc_error:
    import logging as _bc_logging
    _bc_logging.getLogger("phy").warning("phy-bc-reason plugin not loaded: %s", _bc_error)
else:
    _bc_plugins = c.TemplateGUI.plugins
    _bc_plugins = list(_bc_plugins) if isinstance(_bc_plugins, (list, tuple)) else []
    if "{PLUGIN_NAME}" not in _bc_plugins:
        c.TemplateGUI.plugins = _bc_plugins + ["{PLUGIN_NAME}"]
{_CONFIG_END}
"""


def install_plugin(config_dir=None):
    """Enable the plugin in phy's ``phy_config.py`` (``~/.phy`` unless ``config_dir``).

    phy runs that file with traitlets (``phy.utils.config.load_master_config``) before it
    attaches the plugins named in ``c.TemplateGUI.plugins``.  Adds (or refreshes) one marked block
    at the end of the file, after backing the old file up as ``phy_config.py.bak``; creates the
    file (with phy's default content) if missing.  Idempotent.  Returns a one-line message.
    """
    config_dir = Path(config_dir).expanduser() if config_dir else Path.home() / ".phy"
    path = config_dir / "phy_config.py"
    module_name = __name__ if __name__ != "__main__" else Path(__file__).stem
    block = _config_block(module_name, Path(__file__).resolve().parent)
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as e:
        raise BombcellReasonError(f"{path}: cannot be read ({e}); fix or remove it, then run "
                                  f"`phy-bc-reason install` again") from None
    if old is None:
        # What phy writes when it creates the file (phy.utils.config._default_config).
        base = ("# You can also put your plugins in ~/.phy/plugins/.\n\n"
                "from phy import IPlugin\n\n"
                "c = get_config()\n"
                f"c.Plugins.dirs = [r'{config_dir / 'plugins'}']\n")
    else:
        base = old
        start, end = old.find(_CONFIG_BEGIN), old.find(_CONFIG_END)
        if start >= 0 and end > start:
            base = old[:start] + old[end + len(_CONFIG_END):].lstrip("\n")
    new = base.rstrip("\n") + "\n\n" + block
    if new == old:
        return f"{PLUGIN_NAME} already enabled in {path}"
    try:
        config_dir.mkdir(parents=True, exist_ok=True)
        if old is not None:
            (config_dir / "phy_config.py.bak").write_text(old, encoding="utf-8")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise BombcellReasonError(f"{path}: cannot be written ({e.strerror or e}); check the "
                                  f"folder's permissions") from None
    backup = f" (backup: {path.name}.bak)" if old is not None else ""
    return f"enabled {PLUGIN_NAME} in {path}{backup}; restart phy to use it"


# phy is already imported when phy itself loads this module (phy_config.py, a plugin folder):
# create and register the plugin class now so that phy finds it by name.
if "phy" in sys.modules:
    try:
        _define_phy_classes()
    except Exception as _e:  # never break phy's start or its config file
        _report_exception("registering the phy plugin", _e)

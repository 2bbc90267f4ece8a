"""The study in MLflow's own chart view: saved views of its pruning curves, training curves and
sizes, and run colours that match the report's plots.

MLflow's UI keeps a saved view as an experiment tag `mlflow.sharedViewState.<key>` whose value
is `{"name", "createdAt", "updatedAt", "state"}`, `state` being the runs page's state as JSON
(or `"deflate;"` + base64 of its zlib-compressed JSON): its search filter, its sort, and its
chart cards. The URL `#/experiments/<id>/runs?viewStateShareKey=<key>` opens it. The format is
the UI's own and undocumented, so views are written only for the MLflow versions a browser test
has shown to draw them (VIEWS_SHOWN_TO_WORK); for any other, the link is the runs page with
documented-by-use URL parameters only (a filter and a sort) and a line saying which clicks pick
`params` as the x-axis.

Each view is filtered to one study's runs by a run tag, `mlprunes.view.<scope>`, which says
which curves a run belongs to (`pruning` or `training`): two studies in one experiment keep two
sets of views that do not mix. The runs are sorted by name, which also lays a pipeline's
children out flat (sorted by creation time, they stay folded under their pipeline run).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote

import mlflow
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from mlprunes.report.colours import run_colours
from mlprunes.stages import tracking
from mlprunes.stages.common import say

# MLflow versions (major.minor) whose UI a browser test (tests/test_browser.py) has seen draw
# these views. Another version gets the plain link instead of a view it may misread.
VIEWS_SHOWN_TO_WORK = ("3.17",)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUN_COLOUR = "mlflow.runColor"              # the run's colour in the UI's charts and table
OUR_COLOUR = "mlprunes.colour"              # the colour we last gave it: a user's own is kept
IN_VIEW = "mlprunes.view."                  # + scope: which of the scope's curves a run is in
PRUNING, TRAINING = "pruning", "training"
TAG_PRUNING_CURVES = tracking.TAG_PRUNING_CURVES  # on a compare or pipeline run: the route

PRUNE_STAGES = ("prune",)
TRAINING_STAGES = ("train", "scratch", "family-member", "finetune")
MAX_RUNS = 1000        # runs a chart draws (the UI's default draws the first 10)
MAX_TAG_VALUE = 20000  # MLflow's limit on an experiment tag's value
BY_NAME = "tags.`mlflow.runName`"
X_AXIS_HINT = ("to plot val_error against params, click the gear above the charts and choose "
               "X-axis: Metric, then params")


@dataclass(frozen=True)
class View:
    slug: str        # the part of the key after the scope: pruning-curves, ...
    title: str       # the name in the UI's Views list, after the scope's name
    curves: str      # which tagged runs it shows: PRUNING, TRAINING, or "" for both


VIEWS = (View("pruning-curves", "pruning curves", PRUNING),
         View("training-curves", "training curves", TRAINING),
         View("sizes", "sizes", ""))


def ui_reads_views(version: str | None = None) -> bool:
    """Whether the UI serving this store is of a version known to draw our views."""
    version = version if version is not None else ui_version()
    return ".".join(version.split(".")[:2]) in VIEWS_SHOWN_TO_WORK


def ui_version() -> str:
    """The MLflow version of the UI: a tracking server's own (it says at /version), else this
    installation's, which is what `mlflow ui` serves."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/version", timeout=10) as reply:
                return reply.read().decode().strip()
        except Exception:  # an old or guarded server: assume it is ours
            pass
    return mlflow.__version__


def scope_key(name: str) -> str:
    """A tag-safe, URL-safe key for a scope (a study's name may hold any printable text)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "study"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def view_key(scope: str, view: View) -> str:
    return f"mlprunes-{scope_key(scope)}-{view.slug}"


def search_filter(scope: str, curves: str) -> str:
    tag = f"tags.`{IN_VIEW}{scope_key(scope)}`"
    return f"{tag} = '{curves}'" if curves else f"{tag} LIKE '%'"


# -- the runs page's state, as the UI's saved views hold it -------------------------------------

def _line(uuid: str, section: str, metric: str, x_metric: str | None, title: str) -> dict:
    """A line chart of `metric` against the step, or against another metric (paired by step)."""
    return {"uuid": uuid, "type": "LINE", "runsCountToCompare": MAX_RUNS,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": title, "metricKey": metric, "selectedMetricKeys": [metric],
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear",
            "range": {}, "xAxisKey": "metric" if x_metric else "step",
            "selectedXAxisMetricKey": x_metric or "", "displayPoints": True,
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False,
            "useGlobalXaxisKey": False, "useGlobalLineSmoothing": False}


def _scatter(uuid: str, section: str, x: str, y: str) -> dict:
    """One point per run: the last values of two metrics."""
    return {"uuid": uuid, "type": "SCATTER", "runsCountToCompare": MAX_RUNS,
            "metricSectionId": section, "deleted": False, "isGenerated": False,
            "displayName": f"{y} vs {x}", "xaxis": {"key": x, "type": "METRIC"},
            "yaxis": {"key": y, "type": "METRIC"}}


def _cards(view: View, section: str) -> list[dict]:
    if view.curves == PRUNING:
        return [_line(f"{view.slug}-val-params", section, "val_error", "params",
                      "val_error vs params"),
                _line(f"{view.slug}-test-params", section, "test_error", "params",
                      "test_error vs params"),
                _line(f"{view.slug}-val-prunes", section, "val_error", None,
                      "val_error vs prunes done"),
                _line(f"{view.slug}-test-prunes", section, "test_error", None,
                      "test_error vs prunes done")]
    if view.curves == TRAINING:
        return [_line(f"{view.slug}-val-epoch", section, "val_error", None, "val_error vs epoch"),
                _line(f"{view.slug}-loss-epoch", section, "train_loss", None,
                      "train_loss vs epoch")]
    return [_scatter(f"{view.slug}-test-params", section, "params", "test_error"),
            _scatter(f"{view.slug}-test-flops", section, "flops", "test_error")]


def view_state(scope: str, view: View) -> dict:
    """The runs page as the view opens it: the scope's runs of that view, flat and sorted by
    name, every one drawn, and the view's charts in a section of their own above the rest."""
    section = f"{view.slug}-section"
    return {
        # What the runs table searches and how it sorts.
        "searchFilter": search_filter(scope, view.curves), "orderByKey": BY_NAME,
        "orderByAsc": True, "startTime": "ALL", "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs", "datasetsFilter": [],
        # How the page looks.
        "selectedColumns": ["attributes.`Source`", "attributes.`Models`",
                            "attributes.`Dataset`", "metrics.`test_error`", "metrics.`params`",
                            "params.`seed`", "tags.`mlprunes.criterion`"],
        "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": _cards(view, section),
        "compareRunSections": [{"uuid": section, "name": f"{scope}: {view.title}",
                                "display": True, "isReordered": False, "deleted": False,
                                "isGenerated": False}],
        "viewMaximized": False, "runListHidden": False, "isAccordionReordered": False,
        "groupBy": None, "groupsExpanded": {}, "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True, "chartsSearchFilter": "",
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0,
                                  "selectedXAxisMetricKey": ""},
    }


def envelope(name: str, state: dict, created_ms: int, updated_ms: int) -> str:
    """A saved view's tag value; the state compressed only where plain JSON would not fit."""
    text = json.dumps(state, separators=(",", ":"))
    value = json.dumps({"name": name, "createdAt": created_ms, "updatedAt": updated_ms,
                        "state": text})
    if len(value) <= MAX_TAG_VALUE:
        return value
    packed = "deflate;" + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": updated_ms,
                       "state": packed})


def read_view(value: str) -> tuple[str, dict]:
    """A saved view's name and state, from its tag value (the inverse of `envelope`)."""
    outer = json.loads(value)
    text = outer["state"]
    if text.startswith("deflate;"):
        text = zlib.decompress(base64.b64decode(text[len("deflate;"):])).decode()
    return outer["name"], json.loads(text)


# -- links ------------------------------------------------------------------------------------

def view_route(experiment_id: str, scope: str, view: View) -> str:
    return (f"#/experiments/{experiment_id}/runs?viewStateShareKey={view_key(scope, view)}"
            f"&compareRunsMode=CHART&workflowType=machine_learning")


def plain_route(experiment_id: str, scope: str, curves: str = PRUNING) -> str:
    """The scope's runs flat in the chart view, by URL parameters alone (no saved view)."""
    return (f"#/experiments/{experiment_id}/runs?searchFilter="
            f"{quote(search_filter(scope, curves), safe='')}&orderByKey={quote(BY_NAME, safe='')}"
            f"&orderByAsc=true&compareRunsMode=CHART&workflowType=machine_learning")


# -- writing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    route: str          # the pruning curves' link, relative to the UI
    views: bool         # saved views (else the plain link, which needs a click for the x-axis)


def publish(experiment_id: str, scope: str, runs: Iterable, log=say) -> Published | None:
    """Tag the scope's network runs (which curves they are in, and their colours) and write the
    scope's views on the experiment. `runs` are report records (run ID, stage, group, seed).
    Never fails its caller: a problem is one line, and the study stands without its views."""
    try:
        return _publish(experiment_id, scope, list(runs), log)
    except Exception as err:  # a view is a convenience, never a reason to fail a run
        if tracking.unreachable(err):
            raise
        log(f"[views] the MLflow UI views of {scope!r} were not written "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})")
        return None


def markdown(published: Published | None) -> str:
    """The description's line for the links (nothing when no view was written)."""
    if published is None:
        return ""
    if published.views:
        return (f"**Pruning curves:** [in MLflow's chart view]({published.route}) (saved views "
                f"of this study: pruning curves, training curves, sizes; in the Views "
                f"list).\n\n")
    return f"**Pruning curves:** [the runs in MLflow's chart view]({published.route}); " \
           f"{X_AXIS_HINT}.\n\n"


def _publish(experiment_id: str, scope: str, records: list, log) -> Published | None:
    networks = [r for r in records if r.stage in PRUNE_STAGES + TRAINING_STAGES]
    if not networks:
        return None
    client = MlflowClient()
    colours = _colours(networks)
    key = scope_key(scope)
    for record in networks:
        tags = client.get_run(record.run_id).data.tags
        curves = PRUNING if record.stage in PRUNE_STAGES else TRAINING
        new = [RunTag(f"{IN_VIEW}{key}", curves)]
        colour = colours[record.run_id]
        # A colour someone picked in the UI (not the one we gave) stays.
        if tags.get(RUN_COLOUR) in (None, tags.get(OUR_COLOUR)):
            new += [RunTag(RUN_COLOUR, colour), RunTag(OUR_COLOUR, colour)]
        client.log_batch(record.run_id, tags=new)
    if not ui_reads_views():
        route = plain_route(experiment_id, scope)
        log(f"[views] MLflow {ui_version()}'s UI is not one these views were checked on "
            f"({', '.join(VIEWS_SHOWN_TO_WORK)}): the link shows the runs; {X_AXIS_HINT}")
        return Published(route, views=False)
    existing = client.get_experiment(experiment_id).tags
    now = int(time.time() * 1000)
    for view in VIEWS:
        tag = VIEW_TAG_PREFIX + view_key(scope, view)
        created = now
        if tag in existing:
            try:
                created = json.loads(existing[tag])["createdAt"]
            except (ValueError, KeyError, TypeError):
                pass
        client.set_experiment_tag(experiment_id, tag, envelope(
            f"{scope}: {view.title}", view_state(scope, view), created, now))
    return Published(view_route(experiment_id, scope, VIEWS[0]), views=True)


def _colours(records: list) -> dict[str, str]:
    groups: dict[str, list[tuple[int | None, str]]] = {}
    for r in records:
        groups.setdefault(r.group or r.stage, []).append((r.seed, r.run_id))
    return run_colours(groups)

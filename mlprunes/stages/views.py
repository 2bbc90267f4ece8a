"""The study in MLflow's own chart view: saved views of its pruning curves, training curves and
sizes, and run colours that match the report's plots.

MLflow's UI keeps a saved view as an experiment tag `mlflow.sharedViewState.<key>` whose value
is `{"name", "createdAt", "updatedAt", "state"}`, `state` being the runs page's state as JSON
(or `"deflate;"` + base64 of its zlib-compressed JSON): its search filter, its sort, and its
chart cards. The URL `#/experiments/<id>/runs?viewStateShareKey=<key>` opens it. The format is
the UI's own and undocumented, so views are written only for the MLflow versions a browser test
has shown to draw them (VIEWS_SHOWN_TO_WORK): the tracking server's version (its `/version`),
or this installation's for a local store, which `mlflow ui` serves; a version that cannot be
read counts as unchecked. For any other version the link is the runs page with two URL
parameters (a filter and a sort; the UI's own too, though long stable and shareable) and a line
saying which clicks pick `params` as the x-axis.

Each view is filtered to one study's runs by a run tag, `mlprunes.view.<slug>-<hash>`, which says
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
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping
from urllib.parse import quote

import mlflow
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient

from mlprunes.report.colours import run_colour
from mlprunes.report.records import RunRecord
from mlprunes.stages import contract, tracking
from mlprunes.stages.common import say

# MLflow versions (major.minor) whose UI a browser test (tests/test_browser.py) has seen draw
# these views. Another version gets the plain link instead of a view it may misread.
VIEWS_SHOWN_TO_WORK = ("3.17",)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
RUN_COLOUR = "mlflow.runColor"              # the run's colour in the UI's charts and table
OUR_COLOUR = "mlprunes.colour"              # the colour we last gave it: a user's own is kept
IN_VIEW = "mlprunes.view."                  # + scope: which of the scope's curves a run is in
PRUNING, TRAINING = "pruning", "training"

PRUNE_STAGES = (contract.PRUNE,)
TRAINING_STAGES = (*contract.TRAINED, contract.FINETUNE)
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


def ui_reads_views(version: str | None) -> bool:
    """Whether a UI of this version (None: unknown) is known to draw our views."""
    if version is None or not re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", version):
        return False
    return ".".join(version.split(".")[:2]) in VIEWS_SHOWN_TO_WORK


def ui_version() -> str | None:
    """The MLflow version of the UI: a tracking server's own (it says at /version, asked with
    the credentials MLflow's client uses), else this installation's, which is what `mlflow ui`
    serves. None where a server does not say."""
    uri = tracking.tracking_uri()
    if not tracking.is_server(uri):
        return mlflow.__version__
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        reply = http_request(get_default_host_creds(uri), "/version", "GET", max_retries=0,
                             timeout=10, raise_on_status=False)
        text = reply.text.strip() if reply.status_code == 200 else ""
    except Exception:  # a guarded or older server: its version is unknown
        return None
    return text if re.fullmatch(r"\d+\.\d+\S{0,40}", text) else None


def scope_key(name: str) -> str:
    """A tag-safe, URL-safe key for a scope (a study's name may hold any printable text)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "study"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def view_key(scope: str, view: View) -> str:
    return f"mlprunes-{scope_key(scope)}-{view.slug}"


def view_tag(scope: str) -> str:
    """The run tag that puts a run in the scope's views (its value: which curves)."""
    return f"{IN_VIEW}{scope_key(scope)}"


def search_filter(scope: str, curves: str) -> str:
    tag = f"tags.`{view_tag(scope)}`"
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
    route: str          # the link's route, relative to the UI (the pruning curves, if any)
    views: bool         # saved views (else the plain link, which needs a click for the x-axis)


def publish(experiment_id: str, scope: str, records: Iterable[RunRecord],
            runs: Mapping[str, Run], log: Callable[[str], None] = say) -> Published | None:
    """Tag the scope's network runs in `experiment_id` (which curves they are in, and their
    colours), untag those no longer in it, and write the scope's views on the experiment.
    `runs` holds each record's run as read. A problem is one line and the study stands without
    its views; only a lost store (which the caller's next log would meet anyway) propagates."""
    try:
        return _publish(experiment_id, scope, list(records), runs, log)
    except Exception as err:  # a view is a convenience, never a reason to fail a run
        if tracking.unreachable(err):
            raise
        log(f"[views] the MLflow UI views of {scope!r} were not written "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})")
        return None


def markdown(published: Published | None) -> str:
    """The description's line for the link (nothing when there is none)."""
    if published is None:
        return ""
    if published.views:
        return (f"**Pruning curves:** [in MLflow's chart view]({published.route}) (this "
                f"study's saved views, in the runs page's Views list: pruning curves, training "
                f"curves, sizes).\n\n")
    return (f"**Pruning curves:** [the runs in MLflow's chart view]({published.route}); "
            f"{X_AXIS_HINT}.\n\n")


def _publish(experiment_id: str, scope: str, records: list[RunRecord], runs: Mapping[str, Run],
             log) -> Published | None:
    networks = [r for r in records if r.stage in PRUNE_STAGES + TRAINING_STAGES]
    here = [r for r in networks if runs[r.run_id].info.experiment_id == experiment_id]
    if len(here) < len(networks):
        log(f"[views] {len(networks) - len(here)} of the runs compared are in other "
            f"experiments; the views of {scope!r} (in experiment {experiment_id}) leave them out")
    networks = here
    if not networks:
        return None
    _tag_runs(experiment_id, scope, networks, runs, log)
    has_prunes = any(r.stage in PRUNE_STAGES for r in networks)
    version = ui_version()
    if not ui_reads_views(version):
        log(f"[views] MLflow {version or '(version unknown)'}'s UI is not one these views "
            f"were checked on ({', '.join(VIEWS_SHOWN_TO_WORK)}): the link shows the runs; "
            f"{X_AXIS_HINT}")
        return Published(plain_route(experiment_id, scope, PRUNING if has_prunes else TRAINING),
                         views=False)
    client = MlflowClient()
    existing = client.get_experiment(experiment_id).tags
    now = int(time.time() * 1000)
    for view in VIEWS:
        tag = VIEW_TAG_PREFIX + view_key(scope, view)
        created = now
        try:
            created = int(json.loads(existing[tag])["createdAt"])
        except (KeyError, ValueError, TypeError):  # new, or not one of ours to keep
            pass
        client.set_experiment_tag(experiment_id, tag, envelope(
            f"{scope}: {view.title}", view_state(scope, view), created, now))
    first = VIEWS[0] if has_prunes else VIEWS[1]   # a study without prune runs: its training
    return Published(view_route(experiment_id, scope, first), views=True)


def _tag_runs(experiment_id: str, scope: str, networks: list[RunRecord],
              runs: Mapping[str, Run], log) -> None:
    """Each run's curves and colour; a run that left the scope (a study changed and run again
    under its name) is untagged, so that the views show what the study holds now."""
    client = MlflowClient()
    in_view = view_tag(scope)
    failed = 0
    for record in networks:
        tags = runs[record.run_id].data.tags
        new = [RunTag(in_view, PRUNING if record.stage in PRUNE_STAGES else TRAINING)]
        colour = run_colour(record.group or record.stage, record.seed)
        # A colour someone picked in the UI (not the one we gave) stays.
        if tags.get(RUN_COLOUR) in (None, tags.get(OUR_COLOUR)):
            new += [RunTag(RUN_COLOUR, colour), RunTag(OUR_COLOUR, colour)]
        try:
            client.log_batch(record.run_id, tags=new)
        except Exception as err:  # one run deleted meanwhile leaves the others their views
            if tracking.unreachable(err):
                raise
            failed += 1
    if failed:
        log(f"[views] {failed} run(s) could not be tagged for the views of {scope!r}")
    mine = {r.run_id for r in networks}
    for run in client.search_runs([experiment_id], f"tags.`{in_view}` LIKE '%'",
                                  max_results=5000):
        if run.info.run_id not in mine:
            client.delete_tag(run.info.run_id, in_view)


"""Do two tracking stores hold the same study? Every run matched by stage and run name, every
logged metric value compared step by step (timings and latencies left out: they are not
deterministic). Used to check that a refactor left the demo study unchanged:

    python benchmarks/same_metrics.py sqlite:///old/mlflow.db sqlite:///new/mlflow.db
"""
import sys
from mlflow.tracking import MlflowClient

TIMING = ("epoch_seconds", "images_per_second", "latency_", "speedup_", "onnx_speedup_")


def runs(uri):
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    out = {}
    for r in client.search_runs(exps, max_results=1000):
        stage = r.data.tags.get("mlprunes.stage")
        if stage in (None, "pipeline", "compare"):
            continue
        name = r.data.tags.get("mlflow.runName")
        hist = {}
        for key in r.data.metrics:
            if key.startswith(TIMING):
                continue
            hist[key] = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
        out[(stage, name)] = hist
    return out


old, new = runs(sys.argv[1]), runs(sys.argv[2])
print(f"runs: old {len(old)}, new {len(new)}; names equal: {sorted(old) == sorted(new)}")
mismatch = 0
values = 0
for k in sorted(old):
    if k not in new:
        print("missing in new:", k); mismatch += 1; continue
    for metric, hist in old[k].items():
        values += len(hist)
        if new[k].get(metric) != hist:
            mismatch += 1
            print("DIFF", k, metric, hist[-3:], new[k].get(metric, [])[-3:])
print(f"{values} metric values compared (timings excluded); {mismatch} differences")

"""RETRAIN_COMMAND of the tests: trains a tiny real XGBoost model on generated data and writes model.json and
metadata.json into OUTPUT_DIR, like the platform's training script.

    retrain_script.py MODE MODEL START_DATE OUTPUT_DIR

MODE: ok (a good model), fail (exits 3), hang (starts a child and sleeps past any timeout), bad (a model.json
that does not load), env (writes its environment to OUTPUT_DIR/env.json, then trains). It runs in the model
folder (its cwd) and reads the production metadata.json there for the feature names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

mode, model, start, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
print(f"retraining {model} on data from {start}", flush=True)
if mode == "fail":
    print("ERROR: not enough training rows", flush=True)
    sys.exit(3)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (out / "child.pid").write_text(str(child.pid))
    print("waiting for data...", flush=True)
    time.sleep(120)
if mode == "env":
    (out / "env.json").write_text(json.dumps(dict(os.environ)))

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

features = json.loads(Path("metadata.json").read_text())["features"]
rng = np.random.default_rng(7)
x = rng.normal(size=(300, len(features)))
y = x[:, 0] * 0.5 + rng.normal(scale=0.5, size=300)
booster = xgb.train({"max_depth": 2, "eta": 0.3, "nthread": 1}, xgb.DMatrix(x, label=y, feature_names=features),
                    num_boost_round=5)
for i in range(5):
    print(f"round {i}: ok", flush=True)
if mode == "bad":
    (out / "model.json").write_text('{"learner": ')
else:
    booster.save_model(str(out / "model.json"))
(out / "metadata.json").write_text(json.dumps({
    "training_date": date.today().isoformat(), "training_start": start,
    "performance": {"spearman_ic": 0.031, "sharpe_ratio": 1.7}, "features": features}))
print("done", flush=True)

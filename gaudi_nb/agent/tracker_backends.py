"""The trackers' clients: MLflow and W&B, each behind the same few calls (Backend), through its own library,
and the environment each library reads (sent with a run to its node). The thread that feeds them is trackers.py."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

# What each tracker's library reads from the environment, as docs/training.md lists it. A run on a
# node over SSH gets the client's values of these for the trackers its --report-to names (the node's
# SSH session has none of the notebook's environment). WANDB_DIR is a folder on the client: not sent.
SETTINGS = {
    "mlflow": ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
    "wandb": ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_INIT_TIMEOUT"),
}


class Backend:
    """One tracker's client: the calls a TrackerThread makes, each allowed to raise."""

    name = ""

    def start(self, run_name: str, tags: Dict[str, str], previous_run_id: Optional[str]) -> Dict[str, Any]:
        """Open (or reopen) the tracker run; returns tracker_run_id, url, experiment."""
        raise NotImplementedError

    def log_params(self, params: Dict[str, Any]) -> None:
        raise NotImplementedError

    def set_tags(self, tags: Dict[str, str]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_artifact(self, path: Path, name: str) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        raise NotImplementedError


class MlflowBackend(Backend):
    """MLflow's own client (MlflowClient): MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID."""

    name = "mlflow"

    def __init__(self) -> None:
        # MLflow retries a failed request 7 times with backoff (minutes): an unreachable server should
        # cost this thread seconds. The user's own settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # MLflow writes "View run … at: URL" to stdout when a run ends: in `gaudi-nb batch --json` that
        # would break the JSON; the address is in the gaudi_nb record's trackers instead
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError("--report-to mlflow needs mlflow: pip install 'gaudi_nb[tracking]'") from None
        self.mlflow = mlflow
        self.client = MlflowClient()
        self.run_id: Optional[str] = None

    def start(self, run_name: str, tags: Dict[str, str], previous_run_id: Optional[str]) -> Dict[str, Any]:
        uri = without_credentials(self.mlflow.get_tracking_uri())  # what is written down (events, store, show): never a user or password
        if previous_run_id:
            run = self.client.get_run(previous_run_id)  # a resumed gaudi_nb run goes on in the same MLflow run
            self.client.update_run(previous_run_id, status="RUNNING")
            experiment_id = run.info.experiment_id
        else:
            experiment_id = self._experiment_id()
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        url = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}" if uri.startswith(("http://", "https://")) else None
        return {"tracker_run_id": self.run_id, "url": url, "experiment": experiment_id, "tracking_uri": uri}

    def _experiment_id(self) -> str:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"  # MLflow's Default experiment, as mlflow.start_run() would use
        experiment = self.client.get_experiment_by_name(name)
        return experiment.experiment_id if experiment is not None else self.client.create_experiment(name)

    def log_params(self, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(str(self.run_id), params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def set_tags(self, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(str(self.run_id), tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(str(self.run_id), metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_artifact(self, path: Path, name: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(str(self.run_id), str(path), artifact_path=name)
        else:
            self.client.log_artifact(str(self.run_id), str(path), artifact_path=name)

    def finish(self, status: str) -> None:
        mlflow_status = {"succeeded": "FINISHED", "stopped": "KILLED", "budget_exceeded": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(str(self.run_id), status=mlflow_status)


class WandbBackend(Backend):
    """wandb's own library: WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE (offline writes files only), WANDB_DIR."""

    name = "wandb"

    def __init__(self, run_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("--report-to wandb needs wandb: pip install 'gaudi_nb[tracking]'") from None
        self.wandb = wandb
        self.run_dir = run_dir
        self.run: Any = None
        self._step = 0

    def start(self, run_name: str, tags: Dict[str, str], previous_run_id: Optional[str]) -> Dict[str, Any]:
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "gaudi_nb",
            name=run_name,
            id=previous_run_id,
            resume="allow" if previous_run_id else None,
            # without WANDB_DIR, beside the gaudi_nb run (the agent's working folder is no one's choice)
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config={"gaudi_nb": tags},
            tags=["gaudi_nb"],
            settings=self.wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 30)), console="off", x_disable_stats=True),
        )
        return {"tracker_run_id": self.run.id, "url": self.run.url, "experiment": self.run.project, "dir": self.run.dir}

    def log_params(self, params: Dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def set_tags(self, tags: Dict[str, str]) -> None:
        self.run.config.update(tags, allow_val_change=True)
        for key, value in tags.items():
            self.run.summary[key] = value

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        # W&B's step only grows: a step replayed after a restart is logged at the newest step seen
        self._step = max(self._step, step)
        self.run.log(metrics, step=self._step)

    def log_artifact(self, path: Path, name: str) -> None:
        artifact = self.wandb.Artifact(name=f"{self.run.id}-{name}", type="model")
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "succeeded" else 1)


def without_credentials(uri: str) -> str:
    """A tracking URI as it may be shown and stored: http://user:password@host/ (or postgresql://user:pw@host/db) loses its user and password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def settings_for(names: List[str], environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The client's settings of the named trackers (a spec's trackers()), to send with a run to its node."""
    found: Mapping[str, str] = os.environ if environ is None else environ
    return {key: found[key] for name in names for key in SETTINGS.get(name, ()) if found.get(key)}


def make_backend(name: str, run_dir: Path) -> Backend:
    if name == "mlflow":
        return MlflowBackend()
    if name == "wandb":
        return WandbBackend(run_dir)
    raise ValueError(f"unknown tracker {name}")


__all__ = ["Backend", "MlflowBackend", "WandbBackend", "make_backend", "SETTINGS", "settings_for"]

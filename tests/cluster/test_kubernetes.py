"""`--cluster kubernetes`: the DaskCluster spec is a pure function of the configuration, and the
manifest in deploy/kubernetes/ is that function's output. No Kubernetes runs here: creating a
cluster is checked only for its one-line refusal without credentials."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from zdask.cli import app
from zdask.cluster_kubernetes import VOLUME_NAME, kubernetes_cluster_spec
from zdask.config import Config, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _config(**fields) -> Config:
    return Config().replace(**{"cluster.kind": "kubernetes", **{f"cluster.{k}": v for k, v in fields.items()}})


def test_the_spec_sizes_the_worker_pods_and_mounts_the_data_volume():
    spec = kubernetes_cluster_spec(_config(jobs=3, cores=6, memory="12GiB", image="registry.example/zdask:1",
                                           volume_claim="survey", volume_path="/survey", no_workers_timeout=90),
                                   "zdask-run1")
    assert (spec["kind"], spec["metadata"]["name"]) == ("DaskCluster", "zdask-run1")
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 3
    [container] = worker["spec"]["containers"]
    assert container["image"] == "registry.example/zdask:1"
    assert container["args"][:6] == ["dask", "worker", "--nthreads", "6", "--memory-limit", str(12 * 2**30)]
    assert container["resources"] == {"requests": {"cpu": "6", "memory": str(12 * 2**30)},
                                      "limits": {"cpu": "6", "memory": str(12 * 2**30)}}
    assert container["volumeMounts"] == [{"name": VOLUME_NAME, "mountPath": "/survey"}]
    assert worker["spec"]["volumes"] == [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": "survey"}}]
    [scheduler] = spec["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["image"] == "registry.example/zdask:1" and "resources" not in scheduler
    assert {"name": "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT", "value": "90s"} in scheduler["env"]
    assert spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "zdask-run1"


def test_the_deployed_manifest_is_the_spec_of_the_deployed_config():
    config = load_config(DEPLOY / "zdask.toml")
    assert yaml.safe_load((DEPLOY / "daskcluster.yaml").read_text()) == kubernetes_cluster_spec(config, "zdask")
    # the run job's configuration is the same file's
    documents = list(yaml.safe_load_all((DEPLOY / "run-job.yaml").read_text()))
    [config_map] = [d for d in documents if d["kind"] == "ConfigMap"]
    job_config = config_map["data"]["zdask.toml"]
    assert [line for line in job_config.splitlines() if line] == [
        line.split("#")[0].rstrip() for line in (DEPLOY / "zdask.toml").read_text().splitlines()
        if line.strip() and not line.startswith("#")]


def test_kubernetes_without_credentials_is_refused_in_one_line(small_survey, tmp_path, monkeypatch):
    survey, _ = small_survey
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    result = CliRunner().invoke(app, ["run", str(survey / "frames"), "--out", str(tmp_path / "out"),
                                      "--cluster", "kubernetes"])
    assert result.exit_code == 2, result.output
    last = result.output.rstrip().splitlines()[-1]
    assert last.startswith("error: cluster.kind = 'kubernetes': cannot create DaskCluster zdask-"), result.output
    assert not (tmp_path / "out" / "mosaic.fits").exists()

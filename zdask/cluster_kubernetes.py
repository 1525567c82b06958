"""A run's dask cluster as a ``DaskCluster`` of the dask-kubernetes operator.

The spec is a pure function of the configuration (:func:`kubernetes_cluster_spec`): the same
function writes ``deploy/kubernetes/daskcluster.yaml`` (a test keeps the two equal), and
``--cluster kubernetes`` creates the cluster from it through ``KubeCluster``, which deletes it
when the run ends. The workers and the pod that runs ``zdask run`` mount one ReadWriteMany volume
at ``cluster.volume_path``, so the frames and the output folder (its work store included) are
at the same path in each of them.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

from distributed import Client

from zdask.config import Config
from zdask.clusterbase import ClusterError, SingleThreadedKernels, quietly_close, scheduler_dashboard_link

#: The name of the volume in the pod specs (the claim is ``cluster.volume_claim``).
VOLUME_NAME = "zdask-data"


def kubernetes_cluster_spec(config: Config, name: str) -> dict:
    """The ``DaskCluster`` resource (a dict, as for ``kubectl apply``) of a run's cluster.

    ``cluster.jobs`` worker pods, each with ``cluster.cores`` CPUs and ``cluster.memory``
    requested and as its limit, running one dask worker with that many threads and that memory
    limit, the data volume mounted at ``cluster.volume_path``; the scheduler with no resources
    reserved (it plans nothing, the client does) and its no-workers timeout from
    ``cluster.no_workers_timeout``.
    """
    from dask.utils import parse_bytes
    from dask_kubernetes.operator import make_cluster_spec

    c = config.cluster
    memory = parse_bytes(c.memory)
    resources = {"requests": {"cpu": str(c.cores), "memory": str(memory)},
                 "limits": {"cpu": str(c.cores), "memory": str(memory)}}
    spec = make_cluster_spec(
        name, image=c.image, n_workers=c.jobs, resources=resources,
        env={"DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT": f"{c.no_workers_timeout:g}s"},
        worker_command=f"dask worker --nthreads {c.cores} --memory-limit {memory}",
    )
    # The workers read the frames and read/write the work store; the scheduler touches no file.
    workers = spec["spec"]["worker"]["spec"]
    workers["volumes"] = [{"name": VOLUME_NAME, "persistentVolumeClaim": {"claimName": c.volume_claim}}]
    workers["containers"][0]["volumeMounts"] = [{"name": VOLUME_NAME, "mountPath": c.volume_path}]
    del spec["spec"]["scheduler"]["spec"]["containers"][0]["resources"]
    return spec


@contextlib.contextmanager
def kubernetes_client(config: Config, say=print) -> Iterator[Client]:
    """A Client on a DaskCluster created for this run (and deleted when it ends).

    Needs the dask-kubernetes operator in the Kubernetes cluster and the rights to create
    DaskCluster resources (deploy/kubernetes/ has both); refused in one line otherwise.
    """

    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:
        raise ClusterError("cluster.kind = 'kubernetes' needs dask-kubernetes: pip install "
                           "'zdask[kubernetes]'") from None
    import kr8s

    name = f"zdask-{uuid.uuid4().hex[:8]}"
    spec = kubernetes_cluster_spec(config, name)
    try:
        # Credentials first: a KubeCluster that fails half-made leaves dask-kubernetes an
        # exit-time clean-up that fails again, printing a traceback after the run's own line.
        kr8s.api(namespace=config.cluster.namespace)
        cluster = KubeCluster(custom_cluster_spec=spec, namespace=config.cluster.namespace,
                              shutdown_on_close=True, quiet=True)
    except Exception as exc:  # no kube config, no operator, no rights: many types
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ClusterError(f"cluster.kind = 'kubernetes': cannot create DaskCluster {name} ({text})") from None
    try:
        client = Client(cluster)
        try:
            client.register_plugin(SingleThreadedKernels())  # the run's own workers
            say(f"Kubernetes cluster {name}: {config.cluster.jobs} worker pod(s) of "
                f"{config.cluster.cores} CPU(s), {config.cluster.memory}; dashboard: {scheduler_dashboard_link(client)}")
            yield client
        finally:
            quietly_close(client)
    finally:
        quietly_close(cluster)

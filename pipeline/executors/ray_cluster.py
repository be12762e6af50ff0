"""A multi-node Ray cluster on one machine, for the Ray executor's tests and benchmark.

Each node is its own raylet (`ray.cluster_utils.Cluster`), CPU-only, with custom
resources standing in for the roles of a real cluster: the head is the `gpu_node` (the
encoder actors' node), the others `cpu_node`s (decode nodes), so that `--ray-encode-resource
gpu_node --ray-decode-resource cpu_node` tests placement. Not used by `run`.
"""

from __future__ import annotations

from typing import Any

ENCODE_ROLE = "gpu_node"
DECODE_ROLE = "cpu_node"


def start_cluster(decode_nodes: int, store_bytes: int = 100 * 2**20, cpus: int = 1, tries: int = 2) -> Any:
    """A head (ENCODE_ROLE) and `decode_nodes` nodes (DECODE_ROLE) of `cpus` CPUs each; this
    process connected as a driver. Ray gives a raylet a fixed 30 s to register, which a
    loaded 2-core machine can miss, so a failed start is tried again."""
    from ray.cluster_utils import Cluster

    for attempt in range(tries):
        c = Cluster()
        try:
            c.add_node(num_cpus=cpus, resources={ENCODE_ROLE: 1}, object_store_memory=store_bytes, include_dashboard=False)
            for _ in range(decode_nodes):
                c.add_node(num_cpus=cpus, resources={DECODE_ROLE: 1}, object_store_memory=store_bytes)
            c.wait_for_nodes()
            c.connect()
            return c
        except Exception:
            c.shutdown()
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def stop_cluster(c: Any) -> None:
    """Disconnect this driver, then stop every node (no Ray process is left behind)."""
    import ray

    ray.shutdown()
    c.shutdown()


def executor_args(c: Any) -> list[str]:
    """`run` options that put a job on cluster `c` with its roles."""
    return ["--executor", "ray", "--ray-address", c.address, "--ray-decode-resource", DECODE_ROLE,
            "--ray-encode-resource", ENCODE_ROLE]

"""The Ray executor on a cluster of two nodes (two raylets on this machine, joined by address, as
``--executor ray --address HOST:PORT`` joins a real cluster): tasks land on both nodes, share
the stage cache through its folder, and the results equal the serial run's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from eisbench.runs import executor
from eisbench.runs.store import Store


@pytest.fixture
def two_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray cluster of a head node and a worker node, 1 CPU each; yields its address."""
    # the `ray` extra is part of `test`: under CI a missing Ray fails, it never skips
    ray = __import__("ray") if os.environ.get("CI") else pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("EISBENCH_HOME", str(tmp_path / "home"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_tasks_spread_over_two_nodes_and_the_zoo_equals_serial(two_nodes: str,
                                                               tmp_path: Path) -> None:
    from eisbench.trojans.zoo import run_zoo, zoo_config

    def node_of(_: int) -> str:  # defined here: the workers cannot import this test module
        import time

        import ray

        time.sleep(0.5)  # held a moment, so the tasks spread
        return str(ray.get_runtime_context().get_node_id())

    ex = executor.RayExecutor(address=two_nodes)
    with executor.threads(1):  # a 1-CPU task per node; the same sums as the serial run
        assert ex.describe() == "ray (2 CPUs), 1 torch thread per task"
        assert len(set(ex.map(node_of, range(4)))) == 2  # both nodes ran tasks
        cfg = zoo_config("digits", epochs=1, n_clean=2)
        serial = run_zoo(cfg, Store(tmp_path / "serial"))
        with executor.using(ex):
            par = run_zoo(cfg, Store(tmp_path / "ray"))
    assert all(e["cached"] for e in par.log.entries)  # trained on the nodes, loaded here
    assert [m.to_dict() for m in par.metrics] == [m.to_dict() for m in serial.metrics]
    for (a, _), (b, _) in zip([*serial.models, *serial.clean], [*par.models, *par.clean],
                              strict=True):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=0)

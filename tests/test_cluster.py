"""Embedded cluster: validation before start, topology, teardown without leftovers."""

from __future__ import annotations

import pytest
from _wait import until

from labkit.cluster import ClusterConfig, connect_cluster, find_ray_processes, start_cluster
from labkit.errors import ClusterError, ConfigError

# A hang guard, not a measurement: the nodes register in seconds; a loaded machine can take minutes.
_START_TIMEOUT_S = 300.0


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"num_nodes": 0}, "num_nodes", "at least 1 node"),
        ({"num_nodes": -2}, "num_nodes", "num_nodes=-2"),
        ({"gpus_per_node": (1, 1, 1)}, "gpus_per_node", "names 3 worker nodes but the cluster has 2"),
        ({"gpus_per_node": -1}, "gpus_per_node", ">= 0"),
        ({"gpu_mode": "virtual"}, "gpu_mode", "Available: ['logical', 'physical']"),
        ({"gpus_per_node": 2, "gpu_mode": "physical"}, "gpus_per_node", "this machine has 0"),
        ({"object_store_mb_per_node": 10}, "object_store_mb_per_node", "minimum"),
        ({"worker_niceness": 20}, "worker_niceness", "worker_niceness=20 must be a whole number in 0..19"),
        ({"worker_niceness": -5}, "worker_niceness", "0..19"),
    ],
)
def test_bad_cluster_config_is_refused_before_start(overrides, field, words):
    from labkit.cluster import list_session_dirs

    before = list_session_dirs()
    with pytest.raises(ConfigError) as info:
        start_cluster(**overrides)
    assert info.value.field == field
    assert words in str(info.value)
    assert list_session_dirs() == before, "nothing may start before the config is checked"


def test_unreachable_address_names_the_address_and_the_fix():
    with pytest.raises(ClusterError) as info:
        connect_cluster("127.0.0.1:1", timeout_s=1)
    text = str(info.value)
    assert "127.0.0.1:1" in text and "ray start --head" in text


def test_bad_address_port_is_a_config_error():
    with pytest.raises(ConfigError, match="no valid port"):
        connect_cluster("127.0.0.1:notaport", timeout_s=1)


@pytest.mark.slow
def test_cluster_with_logical_gpus_places_tp_inside_nodes_and_pp_across():
    """3 nodes, 2 logical GPUs per worker: TP 2 x PP 2 bundles land 2 + 2 on the two workers."""
    from labkit.serve import ServeConfig, reserve_placement

    with start_cluster(gpus_per_node=2, start_timeout_s=_START_TIMEOUT_S) as handle:
        names = {n.name: n for n in handle.nodes()}
        assert set(names) == {"head", "worker-1", "worker-2"}
        assert names["worker-1"].gpus == 2 and names["head"].gpus == 0
        assert len({n.node_id for n in handle.nodes()}) == 3
        topo = handle.describe()
        assert topo["num_nodes"] == 3 and topo["total_gpus"] == 4
        placed = reserve_placement(
            ServeConfig(backend="gpu", num_replicas=1, tensor_parallel_size=2, pipeline_parallel_size=2)
        )
        assert sorted(placed[0]) == ["worker-1", "worker-1", "worker-2", "worker-2"]
        marker = handle._session_marker()
    # stop() kills what outlives its grace period; a process just killed may take a moment to go
    until(lambda: find_ray_processes(marker) == [], "no Ray process of the cluster left", 120)


@pytest.mark.slow
def test_teardown_after_exception_leaves_no_ray_process():
    marker = None
    with (
        pytest.raises(RuntimeError, match="boom"),
        start_cluster(num_nodes=2, start_timeout_s=_START_TIMEOUT_S, worker_niceness=0) as handle,
    ):
        marker = handle._session_marker()
        assert len(handle.nodes()) == 2
        import os

        import ray

        # worker_niceness reaches the processes Ray starts (Ray's own default is 15)
        assert ray.get(ray.remote(lambda: os.nice(0)).remote(), timeout=120) == 0
        raise RuntimeError("boom")
    # stop() kills what outlives its grace period; a process just killed may take a moment to go
    until(lambda: find_ray_processes(marker) == [], "no Ray process of the cluster left", 120)
    import ray

    assert not ray.is_initialized()


@pytest.mark.slow
def test_cli_cluster_starts_prints_and_stops_leaving_no_ray_process(capsys):
    """`labkit cluster`, as the README lists it: a real embedded cluster, its topology, then nothing left."""
    from labkit.cli import main

    assert main(["cluster", "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "ClusterHandle(embedded, 2 nodes)" in out and "worker-1" in out, out
    assert "stopped; Ray processes left: 0" in out, out


def test_config_defaults_fit_a_small_machine():
    config = ClusterConfig()
    config.validate()
    assert config.num_nodes == 3
    assert config.to_dict()["gpus_per_node"] == [0, 0]


def test_whole_cpu_counts_reach_ray_as_ints():
    # A raylet given num_cpus=4.0 beside a GPU exited at start-up on Ray 2.60 GPU hosts.
    from labkit.cluster.start import _whole

    assert _whole(4.0) == 4 and isinstance(_whole(4.0), int)
    assert _whole(2) == 2 and isinstance(_whole(2), int)
    assert _whole(0.5) == 0.5


def test_a_worker_past_rays_30_s_wait_is_waited_for_not_fatal():
    from labkit.cluster.start import _add_worker

    class SlowCluster:
        def add_node(self, **_):
            raise Exception("The current node timed out during startup. This could happen because ...")  # noqa: TRY002

    class BrokenCluster:
        def add_node(self, **_):
            raise ValueError("bad argument")

    slow: list[str] = []
    _add_worker(SlowCluster(), {}, "worker-1", slow)
    assert slow == ["worker-1"]
    with pytest.raises(ValueError, match="bad argument"):
        _add_worker(BrokenCluster(), {}, "worker-2", slow)
    assert slow == ["worker-1"]


# -- quiet, complete teardown ---------------------------------------------------------------------


def test_expected_serve_teardown_message_is_dropped_and_other_lines_pass():
    import io

    from labkit.cluster.handle import _LineFilter

    out = io.StringIO()
    stream = _LineFilter(out)
    stream.write(
        "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite retries "
        "remaining, so the task will be retried. Error: The actor is dead because it was killed by `ray.kill`.\n"
    )
    stream.write("(raylet) a real problem\npartial ")
    stream.write("line\n")
    stream.flush()
    assert out.getvalue() == "(raylet) a real problem\npartial line\n"


def test_ray_address_file_never_names_a_stopped_cluster(tmp_path, monkeypatch):
    from labkit.cluster import processes

    file = tmp_path / "ray_current_cluster"
    alive = {"10.0.0.1:1111"}
    monkeypatch.setattr(processes, "_address_file", lambda: str(file))
    monkeypatch.setattr(processes, "_address_answers", lambda address, timeout_s=0.5: address in alive)

    file.write_text("10.0.0.9:9999")  # a dead cluster's: removed before a start, silently
    assert processes._live_previous_address() is None and not file.exists()
    file.write_text("10.0.0.1:1111")  # a running cluster's: kept, and restored after ours stops
    assert processes._live_previous_address() == "10.0.0.1:1111"
    file.write_text("127.0.0.1:5000")  # ours, while it runs
    processes._restore_ray_address_file("127.0.0.1:5000", "10.0.0.1:1111", before="127.0.0.1:5000")
    assert file.read_text() == "10.0.0.1:1111"
    file.write_text("127.0.0.1:5000")
    processes._restore_ray_address_file("127.0.0.1:5000", None, before="127.0.0.1:5000")
    assert not file.exists()
    file.write_text("10.0.0.1:1111")  # another cluster wrote it after ours started: left alone
    processes._restore_ray_address_file("127.0.0.1:5000", None, before="10.0.0.1:1111")
    assert file.read_text() == "10.0.0.1:1111"


def test_session_folders_of_dead_owners_are_removed_others_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    import psutil

    from labkit.cluster import processes

    monkeypatch.setattr(processes, "_temp_root", lambda config: str(tmp_path))
    mine, dead, unknown = (tmp_path / name for name in ("mine", "dead", "unknown"))
    for folder in (mine, dead, unknown):
        folder.mkdir()
    processes._write_owner(str(mine))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    (dead / "owner.pid").write_text(f"{child.pid} {started:.3f}\n")
    assert processes._remove_stale_session_dirs() == [str(dead)]
    assert sorted(os.listdir(tmp_path)) == ["mine", "unknown"]


@pytest.mark.slow
def test_a_kernel_shows_no_teardown_noise_and_leaves_nothing_when_shut_down(tmp_path):
    """In a Jupyter kernel: deploy and stop print nothing to stderr nor Ray's teardown message; a kernel
    shut down while its cluster runs ends without a stack dump, Ray process, session folder or stale address."""
    import os

    from jupyter_client import KernelManager

    from labkit.cluster.processes import _read_ray_address_file

    kernel_err = open(tmp_path / "kernel.err", "w")  # noqa: SIM115 - closed below
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "k"))
    km.start_kernel(cwd=str(tmp_path), stderr=kernel_err)
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=120)

    def run(code: str, timeout: float = 600) -> dict[str, str]:
        msg_id = client.execute(code)
        seen = {"stdout": "", "stderr": "", "error": ""}
        while True:
            msg = client.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                seen[content["name"]] += content["text"]
            elif kind == "error":
                seen["error"] += f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                return seen

    try:
        seen = run(
            "import labkit\n"
            f"cluster = labkit.start_cluster(start_timeout_s={_START_TIMEOUT_S})\n"
            "dep = labkit.deploy(labkit.topology_preset('distributed', num_replicas=1))\n"
            "print('answer', bool(dep.complete('hello', max_tokens=4)['choices']))\n"
            "cluster.stop()\n"
            "print('stopped')\n"
        )
        assert seen["error"] == "" and "answer True" in seen["stdout"] and "stopped" in seen["stdout"], seen
        assert seen["stderr"] == "", seen["stderr"]
        assert "graceful_shutdown" not in seen["stdout"], seen["stdout"]
        seen = run(f"cluster = labkit.start_cluster(start_timeout_s={_START_TIMEOUT_S})\n"
                   "print(cluster.address, cluster.temp_dir)")
        address, folder = seen["stdout"].split()
        assert os.path.isdir(folder)
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=False)  # what JupyterLab's "Shut Down Kernel" does
        kernel_err.close()
    stderr = (tmp_path / "kernel.err").read_text()
    assert "SIGTERM" not in stderr, stderr[-2000:]
    assert not os.path.exists(folder), "the session folder was left"
    until(lambda: find_ray_processes(folder) == [], "no Ray process of the kernel's cluster left", 120)
    assert _read_ray_address_file() != address, "Ray's address file names the dead cluster"

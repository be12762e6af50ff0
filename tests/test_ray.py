"""The Ray executor on a real multi-node Ray cluster, and its faults.

One module-scoped `ray.cluster_utils.Cluster` (a head and two worker nodes, each its own
raylet, one CPU each, small object stores): the head carries the custom resource
`gpu_node` (the encoder's node), the workers `cpu_node` (decode nodes), so placement is
tested. Each fault leaves every video done exactly once with the local executor's
features. A video is held mid-decode, without any hook in the product, by a FIFO put
where a scanned video was (as tests/faults/test_decoders.py does): the Ray worker that
opens it blocks, so the fault lands while the run is provably mid-run, on a known node.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pipeline.executors.ray_cluster import executor_args, start_cluster, stop_cluster
from pipeline.reader import load_features
from pipeline.samples import make_clips
from tests.conftest import cli, cosine_rows, kill_group, model_args, start_cli, status_json, wait_until
from tests.faults.test_decoders import holders

pytestmark = pytest.mark.slow  # one Ray cluster (~20 s) and a Ray start-up per run

N = 6
STORE = 100 * 2**20
COMMON = ["--batch-size", "2", "--shard-size", "2", "--decode-timeout", "600"]


@pytest.fixture(scope="module")
def cluster():
    c = start_cluster(2, STORE)
    try:
        yield c
    finally:
        stop_cluster(c)


def ray_args(c) -> list[str]:
    return [*executor_args(c), *COMMON]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"), N, frames=12, vary=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, clips: Path, tiny_model) -> dict[str, np.ndarray]:
    """The local executor's features on the same clips, by file name."""
    out = tmp_path_factory.mktemp("ref")
    cli("scan", "--video-dir", str(clips), "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "2", *COMMON)
    got = load_features(out)
    return {Path(p).name: f for p, f in zip(got.paths, got.features)}


class Hold:
    """A scanned video replaced by a FIFO: the decode that opens it blocks until let go."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.real = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        self.fd: int | None = None  # our end, held open so the reader blocks in read(), not open()

    def reader(self, timeout: float = 180) -> int:
        """The pid of the Ray worker blocked on it, once there is one."""
        pids: list[int] = []

        def blocked() -> bool:
            if self.fd is None:
                try:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    return False
            pids[:] = [p for p in holders(self.path) if p != os.getpid()]
            return bool(pids)

        assert wait_until(blocked, timeout), "no decode task opened the held video"
        return pids[0]

    def restore(self) -> None:
        """The real file back under its name (the blocked reader keeps the FIFO)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(self.real)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def job_with_hold(tmp_path: Path, clips: Path, tiny) -> tuple[Path, Hold]:
    videos = tmp_path / "v"
    shutil.copytree(clips, videos)
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny))
    return out, Hold(sorted(videos.iterdir())[2])


def done_count(out: Path) -> int:
    try:
        with sqlite3.connect(out / "manifest.sqlite", timeout=5) as c:
            return c.execute("SELECT count(*) FROM videos WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def check_exactly_once(out: Path, reference: dict[str, np.ndarray], done: int = N, failed: int = 0) -> dict:
    st = status_json(out)
    assert (st["done"], st["failed"], st["pending"], st["running"]) == (done, failed, 0, 0)
    assert sum(r["videos_done"] for r in st["runs"]) == done, "a video was committed twice"
    with sqlite3.connect(out / "manifest.sqlite") as c:
        places = c.execute("SELECT count(DISTINCT shard || ':' || shard_index) FROM videos WHERE status='done'").fetchone()[0]
    assert places == done, "two rows point to one place in a shard"
    got = load_features(out)
    assert len(set(got.paths)) == done
    assert got.times is not None and all(got.times), "a Ray run's sidecars carry each video's frame times"
    names = [Path(p).name for p in got.paths]
    assert cosine_rows(got.features, np.stack([reference[n] for n in names])).min() >= 0.99999
    return st


def run_log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("run-*.log")))


def node_of(c, pid: int) -> object:
    """The cluster node whose raylet started worker `pid`."""
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for node in c.list_all_nodes():
        if node.all_processes["raylet"][0].process.pid == ppid:
            return node
    raise AssertionError(f"worker {pid} (parent {ppid}) belongs to no node of the cluster")


def test_decode_crash_is_charged_and_failed_and_placement_holds(cluster, clips, reference, tmp_path, tiny_model):
    """A Ray worker that dies under a video (here: SIGKILL) is charged like a local worker's
    crash: retried, then failed at --max-attempts; decoding ran on cpu_node nodes only and
    the encoder on the gpu_node one."""
    out, hold = job_with_hold(tmp_path, clips, tiny_model)
    run = start_cli("run", "--output-dir", str(out), *ray_args(cluster), "--max-attempts", "2", log=tmp_path / "run.log")
    try:
        for _ in range(2):  # one kill per attempt
            pid = hold.reader()
            assert node_of(cluster, pid) in cluster.worker_nodes, "a decode task ran off the cpu_node nodes"
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: pid not in holders(hold.path), 30)
        assert run.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()
    finally:
        hold.close()
        kill_group(run)
    st = check_exactly_once(out, reference, done=N - 1, failed=1)
    assert st["failures"][0]["path"] == str(hold.path)
    assert st["failures"][0]["error"].startswith("decoder process died")
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("SELECT attempts FROM videos WHERE path=?", (str(hold.path),)).fetchone()[0] == 2
    log = run_log(out)
    head = cluster.head_node.node_id
    workers = {n.node_id for n in cluster.worker_nodes}
    assert re.search(rf"encoder \S+ on cpu \(node {head[:12]}\)", log), log
    per_node = re.search(r"decoded per node (\{.*\})", log).group(1)
    assert set(re.findall(r"'([0-9a-f]+)'", per_node)) <= {w[:12] for w in workers}, per_node


def test_encoder_actor_lost_its_videos_are_done_by_another(cluster, clips, reference, tmp_path, tiny_model):
    import ray

    from tests.test_metrics import free_port, scrape, value

    out, hold = job_with_hold(tmp_path, clips, tiny_model)
    port = free_port()  # the Ray executor serves --metrics-port too; lingering, so its last counts are seen
    run = start_cli("run", "--output-dir", str(out), *ray_args(cluster), "--metrics-port", str(port),
                    "--metrics-linger", "120", log=tmp_path / "run.log")
    try:
        pid = hold.reader()  # the run cannot finish while this video is held
        assert wait_until(lambda: done_count(out) >= 2, 120)
        names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("clipfeat-encoder")]
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]))
        hold.restore()
        os.kill(pid, signal.SIGKILL)  # let the held video go: charged once, then decoded from the real file
        assert wait_until(lambda: value(scrape(port) or {}, "clipfeat_videos_done_total", engine="ray") >= N, 180)
        last = scrape(port)
        assert value(last, "clipfeat_videos_done_total", engine="ray") == N
        assert value(last, "clipfeat_videos_failed_total", engine="ray") == 0
        assert value(last, "clipfeat_videos_retried_total", engine="ray") == 1  # the held video, charged once
        frames = N * int(status_json(out)["settings"]["num_frames"])
        assert value(last, "clipfeat_frames_total", engine="ray") == frames
        assert value(last, "clipfeat_decode_seconds_count", engine="ray") >= N
        assert value(last, "clipfeat_encode_seconds_count", engine="ray") >= 1
        assert value(last, "clipfeat_claims_held", engine="ray") == 0
        run.send_signal(signal.SIGTERM)  # ends the linger; the finished run still exits 0
        assert run.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()
    finally:
        hold.close()
        kill_group(run)
    check_exactly_once(out, reference)
    log = run_log(out)
    assert re.search(r"encoder clipfeat-encoder-\S+-1 lost \(\w+\): starting clipfeat-encoder-\S+-2", log), log


def test_driver_killed_next_run_resumes(cluster, clips, reference, tmp_path, tiny_model):
    out, hold = job_with_hold(tmp_path, clips, tiny_model)
    run = start_cli("run", "--output-dir", str(out), *ray_args(cluster), log=tmp_path / "run.log")
    try:
        pid = hold.reader()
        assert wait_until(lambda: done_count(out) >= 2, 120)
        assert done_count(out) < N
        kill_group(run)  # SIGKILL the driver (its whole process group)
        assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60), "the dead driver's decode task lived on"
    finally:
        hold.close()
        kill_group(run)
    hold.restore()
    cli("run", "--output-dir", str(out), *ray_args(cluster))
    st = check_exactly_once(out, reference)
    assert [r["state"] for r in st["runs"]].count("finished") == 1
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("SELECT attempts FROM videos WHERE path=?", (str(hold.path),)).fetchone()[0] == 0


def test_bad_ray_settings_are_one_line_errors(cluster, clips, tmp_path, tiny_model):
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(clips), "--output-dir", str(out), *model_args(tiny_model))
    nvdec = cli("run", "--output-dir", str(out), "--executor", "ray", "--decoder", "nvdec", check=False)
    assert nvdec.returncode != 0 and "error: --decoder nvdec does not go with --executor ray" in nvdec.stderr
    missing = cli("run", "--output-dir", str(out), *ray_args(cluster), "--ray-encode-resource", "tpu_node", check=False)
    assert missing.returncode != 0
    assert "error: no node of the Ray cluster has the resource 'tpu_node'" in missing.stderr, missing.stderr
    st = status_json(out)
    assert (st["pending"], st["running"]) == (N, 0), "a refused run kept claims"


def test_decode_node_lost_its_video_is_decoded_elsewhere(cluster, clips, reference, tmp_path, tiny_model):
    """Last in the module: it removes one of the two decode nodes."""
    out, hold = job_with_hold(tmp_path, clips, tiny_model)
    run = start_cli("run", "--output-dir", str(out), *ray_args(cluster), log=tmp_path / "run.log")
    try:
        node = node_of(cluster, hold.reader())
        hold.restore()  # what the video's next decode, elsewhere, will open
        cluster.remove_node(node)  # its raylet and workers killed mid-decode
        assert run.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()
    finally:
        hold.close()
        kill_group(run)
    check_exactly_once(out, reference)
    with sqlite3.connect(out / "manifest.sqlite") as c:
        attempts = c.execute("SELECT attempts FROM videos WHERE path=?", (str(hold.path),)).fetchone()[0]
    assert attempts == 0, "a lost node was charged to its video"
    assert "decode node lost" in run_log(out)


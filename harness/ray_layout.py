"""The CPUs verl 0.9.1's Ray layout holds on a node, and the refusal of a run whose Ray has fewer.

verl places its trainer processes in one Ray placement group per node and waits for it (`ray.get(pg.ready())`,
verl/single_controller/ray/base.py:160) without a timeout: a node with too few CPUs for the group makes verl wait
forever, without a word. On `main_ppo`'s default path (the V1 trainer, `trainer.use_v1=true`, with the overrides of
harness/verl.py) these actors hold CPUs, each number read in the installed verl and transfer_queue 0.1.11:

    the GPU bundles    one bundle {"CPU": max_colocate_count, "GPU": 1} per GPU (single_controller/ray/base.py:146-151,
                       one STRICT_PACK group per node, :131, :155-160); max_colocate_count is ResourcePoolManager's
                       default 3 (base.py:192, passed on at :208-212), which the V1 trainer keeps
                       (trainer/ppo/v1/trainer_base.py:818-820 and :848: [n_gpus_per_node] * nnodes, no count given).
                       The FSDP workers and the hybrid SGLang rollout live inside these bundles (base.py:397-401,
                       :629), so they add nothing.
    TransferQueue      started before the placement group (trainer/main_ppo.py:149, the trainer at :152-153):
                       a controller, @ray.remote(num_cpus=1) (transfer_queue/controller.py:943), placed by Ray's
                       default policy (transfer_queue/interface.py:200-202), so on any node; and
                       num_data_storage_units storage units, @ray.remote(num_cpus=1)
                       (transfer_queue/storage/simple_storage.py:722), dealt round robin with hard node affinity over
                       the alive Ray nodes (storage/bootstrap/simple_storage_bootstrap.py:65-78,
                       utils/common.py:48-86); verl's default is 8 units (trainer/config/transfer_queue/
                       transfer_queue.yaml:29).

These hold none: an actor declared without resources holds 0 CPUs while it lives (ray/actor.py:2044-2063 with
ray/_private/ray_constants.py:329-330; its 1 placement CPU is checked against the node's total, not against what is
free: with every CPU of a node held, such an actor bound to that node still starts, tests/harness/test_ray_layout.py):

    TaskRunnerV1 (trainer/main_ppo.py:102); the agent-loop workers, rollout.agent.num_workers of them, default 8
    (trainer/ppo/v1/agent_loop_tq.py:52, experimental/agent_loop/agent_loop.py:1208-1228;
    trainer/config/rollout/rollout.yaml:246); the reward-loop workers, reward.num_workers, default 8
    (experimental/reward_loop/reward_loop.py:308, :324-340; trainer/config/reward/reward.yaml:5; the `dapo` reward
    manager starts no actors of its own); one SGLang server per rollout replica and node, gpus / rollout TP replicas
    (workers/rollout/llm_server.py:460; workers/rollout/sglang_rollout/async_sglang_server.py:790, :844-856); the
    request load balancer (workers/rollout/router.py:322).

So a node needs n_gpus_per_node x 3 + its storage units + the controller: for one node of 8 GPUs, 24 + 8 + 1 = 33.
Fewer agent or reward workers do not lower it. The count is the worst node's (the controller counted on the node
with the most storage units, since Ray picks its node).

Not counted, and not protected against: CPUs that processes use without Ray's accounting (the sandbox pools, the
data loader's workers, SGLang's own processes), a reward model or a teacher (their own pools; off here), the
legacy trainer (`trainer.use_v1=false`), and other jobs' actors on the same Ray cluster. Nothing here has run on a
GPU: verl's own TransferQueue and placement group were placed on a local Ray with logical GPUs (the slow test of
tests/harness/test_ray_layout.py), with the CPUs counted here and not with one fewer.

What the count cannot see (CPUs or GPUs held by another job's actors on the same cluster, a leftover actor) still
makes verl wait, so during the run a `PlacementWatch` reads Ray's placement group table and ends verl, naming what
it asks and what Ray has free, when one of its groups stays PENDING longer than `verl.placement_timeout_s`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from harness import schema

CPUS_PER_GPU_BUNDLE = 3  # ResourcePoolManager.max_colocate_count (verl/single_controller/ray/base.py:192)
TQ_CONTROLLER_CPUS = 1  # TransferQueueController's num_cpus (transfer_queue/controller.py:943)
TQ_STORAGE_CPUS = 1  # SimpleStorageUnit's num_cpus (transfer_queue/storage/simple_storage.py:722)
# verl's defaults for the keys harness/verl.py leaves alone on cluster=verl
VERL_STORAGE_UNITS = 8  # transfer_queue.backend.SimpleStorage.num_data_storage_units (transfer_queue.yaml:29)
VERL_REWARD_WORKERS = 8  # reward.num_workers (verl/trainer/config/reward/reward.yaml:5)
# the verl keys (as `overrides` writes them, without a leading +) that a Layout reads
KEYS = {"nodes": "trainer.nnodes", "gpus_per_node": "trainer.n_gpus_per_node",
        "rollout_tp": "actor_rollout_ref.rollout.tensor_model_parallel_size",
        "agent_workers": "actor_rollout_ref.rollout.agent.num_workers", "reward_workers": "reward.num_workers",
        "storage_units": "transfer_queue.backend.SimpleStorage.num_data_storage_units",
        "ray_cpus": "ray_kwargs.ray_init.num_cpus"}
DEFAULTS = {"reward_workers": VERL_REWARD_WORKERS, "storage_units": VERL_STORAGE_UNITS, "ray_cpus": None}


@dataclass(frozen=True)
class Layout:
    """What of verl's config places Ray actors, as harness/verl.py's overrides set it (verl's default where they
    leave a key alone)."""

    nodes: int  # trainer.nnodes
    gpus_per_node: int  # trainer.n_gpus_per_node: one bundle of CPUS_PER_GPU_BUNDLE CPUs each
    rollout_tp: int  # GPUs per SGLang replica; its servers hold no CPU
    agent_workers: int  # rollout.agent.num_workers; they hold no CPU
    reward_workers: int  # reward.num_workers; they hold no CPU
    storage_units: int  # TransferQueue storage units, TQ_STORAGE_CPUS each, dealt over the Ray nodes
    ray_cpus: int | None  # the CPUs of the Ray that verl starts itself (cluster=verl_cpu); None: the cluster's


@dataclass(frozen=True)
class Need:
    """The CPUs verl's actors hold on the worst node of a layout."""

    gpus: int  # GPU bundles on the node
    storage_units: int  # TransferQueue storage units on the node (the most any node gets)
    all_storage_units: int  # over all nodes
    controller: int  # the TransferQueue controller's CPUs (on whichever node Ray picks)

    @property
    def cpus(self) -> int:
        return self.gpus * CPUS_PER_GPU_BUNDLE + self.storage_units * TQ_STORAGE_CPUS + self.controller

    def text(self) -> str:
        units = (f"{self.storage_units}" if self.storage_units == self.all_storage_units
                 else f"{self.storage_units} of {self.all_storage_units}")
        return (f"{self.gpus} GPU bundles x {CPUS_PER_GPU_BUNDLE} + {units} TransferQueue storage units + "
                f"{self.controller} TransferQueue controller")


def cpus_per_node(layout: Layout, ray_nodes: int | None = None) -> Need:
    """The CPUs verl 0.9.1 holds on the worst node of `layout` (module docstring), the storage units dealt over
    `ray_nodes` alive Ray nodes (default: the layout's nodes)."""
    ray_nodes = ray_nodes or layout.nodes
    return Need(gpus=layout.gpus_per_node, storage_units=math.ceil(layout.storage_units / ray_nodes),
                all_storage_units=layout.storage_units, controller=TQ_CONTROLLER_CPUS)


def from_overrides(ovr: list[str]) -> Layout:
    """The Layout of verl's overrides `ovr` (`key=value`, as harness/verl.py writes them)."""
    given = {}
    for item in ovr:
        key, _, value = item.partition("=")
        given[key.lstrip("+")] = value
    values = {name: int(given[key]) if key in given and given[key] != "null" else DEFAULTS[name]
              for name, key in KEYS.items()}
    return Layout(**values)


def layout(cfg: DictConfig) -> Layout:
    """The Layout of the run config `cfg`, through harness/verl.py's translation (its data files are placeholders,
    which the layout does not read). Raises ConfigError where the translation refuses the config."""
    from harness import prepare_data, verl

    data = prepare_data.PreparedData(Path("train.parquet"), {"eval": Path("eval.parquet")}, {}, {})
    run_dir = Path(cfg.runs_root).resolve() / "layout"
    return from_overrides(verl.overrides(cfg, run_dir, data, run_dir / verl.ROLLOUTS_DIR))


@dataclass(frozen=True)
class Node:
    """A node as Ray counts it."""

    name: str  # how the refusal names it
    cpus: float  # Ray's CPUs there
    gpus: float  # Ray's GPUs there


def fix(layout: Layout, need: Need) -> str:
    """The remedy for a node with fewer CPUs than `need`."""
    if layout.ray_cpus is not None:  # verl's own Ray, with logical GPUs
        most = (layout.ray_cpus - need.storage_units * TQ_STORAGE_CPUS - need.controller) // CPUS_PER_GPU_BUNDLE
        return f"set cluster.gpus_per_node to at most {most} (each takes {CPUS_PER_GPU_BUNDLE} of Ray's CPUs)"
    return (f"give the job at least {need.cpus} CPUs per node (sbatch --cpus-per-task={need.cpus}: slurm/common.sh "
            "gives Ray SLURM_CPUS_PER_TASK), or spread the GPUs over more nodes (fewer --gpus-per-node); fewer agent "
            "or reward workers do not help (they hold no CPU)")


def shortfall(layout: Layout, nodes: list[Node]) -> tuple[str, str] | None:
    """Why the Ray `nodes` cannot hold `layout`, and the fix, or None when they can: it needs `layout.nodes` of them
    with `gpus_per_node` GPUs and `cpus_per_node` CPUs each."""
    need = cpus_per_node(layout, ray_nodes=len(nodes))
    hosts = sorted((n for n in nodes if n.gpus >= layout.gpus_per_node), key=lambda n: -n.cpus)
    fit = [n for n in hosts if n.cpus >= need.cpus]
    if len(fit) >= layout.nodes:
        return None
    if len(hosts) < layout.nodes:
        return (f"Ray counts {len(hosts)} node(s) with {layout.gpus_per_node} GPUs, verl's layout needs "
                f"{layout.nodes}: verl would wait for its placement groups forever",
                "start Ray on every node of the job with its GPUs (ray start --num-gpus)")
    short = hosts[len(fit)]
    return (f"{short.name} gives Ray {short.cpus:g} CPUs, but verl's layout for {layout.nodes} node(s) x "
            f"{layout.gpus_per_node} GPUs holds {need.cpus} on a node ({need.text()}): verl would wait for its "
            "placement group forever", fix(layout, need))


def ray_nodes(address: str) -> list[Node]:
    """The alive nodes of the Ray cluster at `address`, as Ray counts their CPUs and GPUs."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    return [Node(f"Ray node {n['NodeManagerAddress']}", n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0))
            for n in alive]


def check_cluster(cfg: DictConfig) -> None:
    """Refuse (ConfigError, one line) a run whose Ray has a node with fewer CPUs than verl's layout holds there,
    before verl starts and waits for it forever: the Ray that verl starts itself with `ray_init.num_cpus`
    (cluster=verl_cpu), else the cluster at RAY_ADDRESS (slurm/ starts one). Without either, nothing is checked:
    verl starts Ray over this machine's CPUs."""
    lay = layout(cfg)
    address = os.environ.get("RAY_ADDRESS")
    if lay.ray_cpus is not None:
        nodes = [Node("verl's own Ray (ray_kwargs.ray_init.num_cpus)", lay.ray_cpus, lay.gpus_per_node)]
    elif address:
        nodes = ray_nodes(address)
    else:
        return
    problem = shortfall(lay, nodes)
    if problem:
        raise schema.ConfigError("; ".join(problem))


def _node_name(total: dict[str, float]) -> str:
    """A node as Ray names it in its resources (`node:<ip>`)."""
    [ip] = [k.removeprefix("node:") for k in total if k.startswith("node:") and k != "node:__internal_head__"]
    return f"Ray node {ip}"


def placement_text(group: dict, waited_s: float, free: dict[str, dict[str, float]],
                   total: dict[str, dict[str, float]]) -> str:
    """One line: the placement group `group` (a row of `ray.util.placement_group_table()`) has waited `waited_s`
    for its bundles, Ray's `free` and `total` resources per node id, and the fix."""
    bundles = list(group["bundles"].values())
    keys = ["CPU", "GPU", *sorted({k for b in bundles for k in b} - {"CPU", "GPU"})]
    asks = Counter(tuple(sorted(b.items())) for b in bundles)
    ask = " + ".join(f"{n} x {{{', '.join(f'{k}: {v:g}' for k, v in b)}}}" for b, n in asks.items())

    def node(n: str) -> str:
        return f"{_node_name(total[n])}: " + ", ".join(f"{k} {free.get(n, {}).get(k, 0):g} of {total[n].get(k, 0):g}"
                                                       for k in keys)

    nodes = "; ".join(node(n) for n in sorted(total))
    return (f"a Ray placement group of verl's has waited {waited_s:.0f} s for {ask} ({group['strategy']}), but Ray "
            f"has free: {nodes} (`ray status` on the head shows what holds the rest: verl's other actors, another "
            "job's, a leftover one); fix: end what holds them, or give the job more CPUs or GPUs per node; "
            "verl.placement_timeout_s sets how long the harness waits")


def pending_placement(pending_since: dict[str, float], ignore: set[str], timeout_s: float) -> str | None:
    """One look at the placement group table of the Ray this process is connected to: `placement_text` for the
    first group, not in `ignore`, that `pending_since` (group id -> when first seen PENDING, updated here) has
    seen PENDING for `timeout_s` or longer, else None. Ray's table holds no creation time, so the wait is counted
    from the first look that saw it. Per-node free resources are Ray's DeveloperAPI (`ray._private.state`): its
    public per-node view (`ray.util.state`) needs the dashboard, which a Ray cluster may not run."""
    import ray
    from ray._private import state

    now = time.monotonic()
    table = ray.util.placement_group_table()
    for pg_id in set(pending_since) - {i for i, g in table.items() if g["state"] == "PENDING"}:
        del pending_since[pg_id]
    for pg_id, group in table.items():
        if group["state"] == "PENDING" and pg_id not in ignore:
            waited_s = now - pending_since.setdefault(pg_id, now)
            if waited_s >= timeout_s:
                return placement_text(group, waited_s, state.available_resources_per_node(),
                                      state.total_resources_per_node())
    return None


class PlacementWatch:
    """verl waits for its placement groups without a timeout (`ray.get(pg.ready())`, module docstring); this
    watches them from the harness. Made before verl starts: it joins the Ray cluster at `address` as a client
    (starting no Ray; as its driver, Ray sets PYTHONBREAKPOINT in this process's environment) and notes the
    groups already there (not verl's). `start` looks every `poll_s` (at most a quarter of `timeout_s`) in a thread;
    a group of verl's PENDING for `timeout_s` gets `end` called and its line kept in `stuck`. Not protected against:
    a group that another job creates on the same cluster during the run is taken for verl's."""

    def __init__(self, address: str, timeout_s: float, poll_s: float = 5.0):
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        self.ignore = set(ray.util.placement_group_table())
        self.timeout_s, self.poll_s = timeout_s, min(poll_s, timeout_s / 4)  # at least 4 looks per timeout
        self.stuck: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, end: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._watch, args=(end,), daemon=True)
        self._thread.start()

    def _watch(self, end: Callable[[], None]) -> None:
        since: dict[str, float] = {}
        while not self._stop.wait(self.poll_s):
            self.stuck = pending_placement(since, self.ignore, self.timeout_s)
            if self.stuck:
                end()
                return

    def stop(self) -> str | None:
        """Stop looking and leave Ray; the line of the group that ended verl, or None."""
        import ray

        self._stop.set()
        if self._thread:
            self._thread.join()
        ray.shutdown()
        return self.stuck

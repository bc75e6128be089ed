"""profiles/slurm against a real Slurm.

The slow test starts a single-node Slurm on localhost from Debian's packages
(tests/slurm/local-slurm.sh: munged, slurmctld and slurmd as root, no cgroups,
a ``cpu`` and a ``gpu`` partition, four stand-in GPUs, a filetxt job-completion
log), runs the data and feature stages of config/test.yaml through
``--workflow-profile`` pointing at a copy of profiles/slurm with its
placeholders filled in, and checks that

* every Snakemake job went through Slurm: the job-completion log has one
  COMPLETED record per job, and they are the Slurm jobs Snakemake reported;
* each job got what the profile says for its rule (``scontrol show job``, which
  keeps finished jobs for MinJobAge): partition, account, time limit, memory,
  and for the GPU rule one GPU with its CPUs per GPU;
* the per-shard jobs ran as Slurm array jobs;
* the outputs equal those of a local run (the session's run of config/test.yaml,
  conftest.test_config_run: files byte for byte, HDF5 feature stores by keys,
  attributes and arrays).

The fast test checks the profile with a dry run (no Slurm needed).
The packages come from .ci/slurm-deps; without them the slow test is skipped.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "config" / "test.yaml"
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
LOCAL_SLURM = REPO / "tests" / "slurm" / "local-slurm.sh"

SLURM_EXECUTABLES = (
    "munged", "mungekey", "slurmctld", "slurmd",
    "sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel",
)  # fmt: skip

# What the test cluster calls the profile's placeholders.
ACCOUNT = "pipeline_test"
CPU_PARTITION = "cpu"
GPU_PARTITION = "gpu"
PLACEHOLDERS = {
    "CHANGE_ME_account": ACCOUNT,
    "CHANGE_ME_cpu_partition": CPU_PARTITION,
    "CHANGE_ME_gpu_partition": GPU_PARTITION,
}
# Added for this cluster only; every key of profiles/slurm stays as it is.
LOCAL_CLUSTER_SETTINGS = {
    # No slurmdbd here, so sacct cannot answer; squeue can, because MinJobAge
    # keeps finished jobs listed for an hour.
    "slurm-status-command": "squeue",
    # Jobs take seconds, not hours: look at them sooner.
    "slurm-init-seconds-before-status-checks": 2,
    "seconds-between-status-checks": 2,
}
SLURM_RUN_TIMEOUT = 900  # seconds; the run takes about 2 min on 2 cores


# --------------------------------------------------------------------- helpers
def snakemake(workdir: Path, *args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def fill_placeholders(obj):
    """Every CHANGE_ME_* string in the profile replaced by this cluster's name."""
    if isinstance(obj, dict):
        return {k: fill_placeholders(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill_placeholders(v) for v in obj]
    if isinstance(obj, str):
        for placeholder, value in PLACEHOLDERS.items():
            obj = obj.replace(placeholder, value)
    return obj


def derive_profile(dest: Path) -> dict:
    """Write profiles/slurm with filled-in placeholders (+ test settings) to dest/config.yaml."""
    original = load_profile()
    profile = fill_placeholders(original)
    assert "CHANGE_ME" not in json.dumps(profile), "a placeholder the test does not know"
    assert profile.keys() == original.keys()
    assert not set(LOCAL_CLUSTER_SETTINGS) & set(original)
    profile.update(LOCAL_CLUSTER_SETTINGS)
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def at_attempt(value, attempt: int = 1) -> int:
    """A profile value (15, or an expression like '60 * attempt') at an attempt."""
    if isinstance(value, int):
        return value
    return int(eval(value, {"__builtins__": {}}, {"attempt": attempt}))


def rule_resources(profile: dict, rule: str) -> dict:
    """default-resources overlaid by the rule's set-resources (as the profile states them)."""
    return {**profile["default-resources"], **profile["set-resources"].get(rule, {})}


def job_total(dry_run_stdout: str) -> int:
    m = re.search(r"^total\s+(\d+)\s*$", dry_run_stdout, re.MULTILINE)
    assert m, f"no job total in dry run:\n{dry_run_stdout}"
    return int(m.group(1))


def key_values(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def jobcomp_records(path: Path) -> list[dict[str, str]]:
    """The filetxt job-completion log: one 'Key=Value Key=Value ...' line per finished job."""
    if not path.exists():
        return []
    return [key_values(line) for line in path.read_text().splitlines() if line.strip()]


def scontrol_jobs(env) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [key_values(line) for line in out.stdout.splitlines() if line.startswith("JobId=")]


def megabytes(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", value)
    assert m, value
    return float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]


def minutes(limit: str) -> int:
    """A Slurm time limit: [D-]HH:MM:SS, or plain minutes."""
    if limit.isdigit():
        return int(limit)
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days) if days else 0) * 1440 + h * 60 + m + (s > 0)


def rule_of(job: dict[str, str]) -> str:
    """The executor's job comment is rule_<rule>[_wildcards_<...>]."""
    comment = job["Comment"]
    assert comment.startswith("rule_"), job
    return comment[len("rule_"):].split("_wildcards_")[0]


def assert_same_outputs(local: Path, on_slurm: Path) -> int:
    """Every file under on_slurm/data equals the local run's (which may hold more):
    byte-equal files, except HDF5 stores: equal keys, attributes and arrays. Returns
    how many were compared."""
    from pipeline.store import FeatureStore

    files = sorted(p.relative_to(local) for p in (local / "data").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(on_slurm) for p in (on_slurm / "data").rglob("*") if p.is_file())
    assert set(theirs) <= set(files), sorted(set(theirs) - set(files))
    for rel in theirs:
        a, b = local / rel, on_slurm / rel
        if rel.suffix == ".h5":
            with FeatureStore(a) as sa, FeatureStore(b) as sb:
                assert sa.keys == sb.keys, rel
                assert sa.dtype == sb.dtype and sa.shape == sb.shape, rel
                assert {k: str(v) for k, v in sa.attrs.items()} == {k: str(v) for k, v in sb.attrs.items()}, rel
                assert np.array_equal(sa.all(), sb.all()), f"{rel}: features differ"
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
    return len(theirs)


# ------------------------------------------------------------------- fast test
def test_profile_dry_run_resources_and_gpu_settings(tmp_path):
    profile = load_profile()
    assert profile["executor"] == "slurm"
    # placeholders: documented at the top, used as values
    text = PROFILE.read_text()
    for placeholder in PLACEHOLDERS:
        assert text.count(placeholder) >= 2, placeholder
    # GPU rules: their partition, one GPU, CPUs per GPU; and no cpus_per_task,
    # which the executor would use instead of cpus_per_gpu
    assert "cpus_per_task" not in profile["default-resources"]
    for rule in ("train_decoder", "train_autoencoder", "invert_mv", "extract_features", "reconstruct"):
        res = profile["set-resources"][rule]
        assert res["slurm_partition"] == "CHANGE_ME_gpu_partition", rule
        assert res["gpu"] == 1 and isinstance(res["cpus_per_gpu"], int) and res["cpus_per_gpu"] >= 1, rule
        assert "cpus_per_task" not in res, rule
    for rule, threads in profile["set-threads"].items():
        assert threads == profile["set-resources"][rule]["cpus_per_gpu"], rule
    # array batches are never cut short by Snakemake's own limits (plugin issue #473)
    assert profile["jobs"] >= 100_000
    assert int(profile["max-jobs-per-timespan"].split("/")[0]) >= 100_000

    # every rule the profile names exists; the dry run resolves the resources
    rules = set(
        snakemake(tmp_path, "--list-rules", "--configfile", str(TEST_CONFIG)).stdout.split()
    )  # fmt: skip
    array_rules = {r.strip() for r in profile["slurm-array-jobs"].split(",")}
    assert {"make_shard", "extract_features"} <= array_rules <= rules
    assert set(profile["set-resources"]) <= rules
    assert set(profile["set-threads"]) <= rules
    proc = snakemake(
        tmp_path, "-n", "--workflow-profile", str(PROFILE.parent),
        "data/features/hog/train/00000.h5", "data/shards/32px/val/manifest.json", "--configfile", str(TEST_CONFIG),
        env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"},
    )  # fmt: skip
    seen = {}
    for block in proc.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        res = re.search(r"resources: (.*)", block).group(1)
        seen[rule] = dict(kv.split("=", 1) for kv in res.split(", "))
    assert set(seen) == {"list_images", "make_shard", "shard_manifest", "extract_features"}
    for rule, res in seen.items():
        want = rule_resources(profile, rule)
        assert res["slurm_account"] == "CHANGE_ME_account", rule
        assert res["slurm_partition"] == want["slurm_partition"], rule
        assert int(res["runtime"]) == at_attempt(want["runtime"]), rule
        assert int(res["mem_mb"]) == at_attempt(want["mem_mb"]), rule
    assert seen["extract_features"]["gpu"] == "1" and "gpu" not in seen["make_shard"]


# ------------------------------------------------------------------- slow test
@dataclass
class LocalSlurm:
    dir: Path
    conf: Path
    jobcomp: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    missing = [exe for exe in SLURM_EXECUTABLES if shutil.which(exe) is None]
    if missing:
        pytest.skip(f"Slurm packages absent ({', '.join(missing)} not found); install them with .ci/slurm-deps")
    base = tmp_path_factory.mktemp("slurm")
    if len(str(base / "munge" / "munge.sock")) > 100:  # unix socket paths are short
        base = Path(tempfile.mkdtemp(prefix="slurm-"))
    # the node has as many CPUs as the largest GPU job asks for (at least the machine's)
    profile = load_profile()
    cpus = max([os.cpu_count() or 1] + [r.get("cpus_per_gpu", 1) for r in profile["set-resources"].values()])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "LOCAL_SLURM_CPU_PARTITION": CPU_PARTITION,
        "LOCAL_SLURM_GPU_PARTITION": GPU_PARTITION,
        "LOCAL_SLURM_CPUS": str(cpus),
        "LOCAL_SLURM_GPUS": "4",  # the extraction jobs (2 CPUs each on 8) run 4 at a time
        "LOCAL_SLURM_MIN_JOB_AGE": "3600",
        "LOCAL_SLURM_START_TIMEOUT": "60",
    }
    start_log = base.parent / f"{base.name}-start.log"
    try:
        # output to a file, not a pipe: the daemons must not hold our pipe open
        with open(start_log, "w") as log:
            rc = subprocess.run(
                ["bash", str(LOCAL_SLURM), "start", str(base)], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=120,
            ).returncode  # fmt: skip
        if rc != 0:
            pytest.fail(f"local Slurm did not start ({rc}):\n{start_log.read_text()}")
        yield LocalSlurm(dir=base, conf=base / "etc" / "slurm.conf", jobcomp=base / "log" / "jobcomp.log")
    finally:
        with open(base.parent / f"{base.name}-stop.log", "w") as log:
            subprocess.run(
                ["bash", str(LOCAL_SLURM), "stop", str(base)], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=120,
            )  # fmt: skip
        status = subprocess.run(["bash", str(LOCAL_SLURM), "status", str(base)], capture_output=True, text=True)
        assert "running" not in status.stdout, f"daemons left running:\n{status.stdout}"


def feature_reps() -> list[str]:
    """The shallow representations of config/test.yaml that are implemented (hog, lbp)."""
    from pipeline.features import available

    reps = yaml.safe_load(TEST_CONFIG.read_text())["representations"]
    chosen = [r for r in ("hog", "lbp") if reps[r]["feature"] in available()]
    assert chosen, "neither hog nor lbp is registered"
    return chosen


@pytest.mark.slow
def test_data_and_feature_stages_through_slurm_equal_a_local_run(test_config_run, local_slurm, tmp_path):
    reps = feature_reps()
    n_shards = yaml.safe_load(TEST_CONFIG.read_text())["dataset"]["shards"]
    shards = {split: [f"{i:05d}" for i in range(n)] for split, n in n_shards.items()}
    assert len(shards["train"]) >= 2  # so that make_shard has an array to make
    n_all = sum(n_shards.values())  # shards over both splits
    size = yaml.safe_load(TEST_CONFIG.read_text())["representations"][reps[0]]["image_size"]
    targets = [f"data/shards/{size}px/{split}/manifest.json" for split in shards]
    targets += [f"data/features/{rep}/{split}/{s}.h5" for rep in reps for split in shards for s in shards[split]]
    common = [*targets, "--configfile", str(TEST_CONFIG)]  # --configfile takes several values: last
    # on Slurm also one decoder: the GPU rule (a few steps on the CPU; not compared)
    train = f"results/models/{reps[0]}/decoder.pt"

    # the reference: the local run of config/test.yaml (conftest.test_config_run), which
    # made these targets (and more: the Slurm run's outputs are compared with their namesakes)
    local = test_config_run
    assert all((local / t).is_file() for t in targets)

    # through Slurm, with the derived profile
    profile = derive_profile(tmp_path / "profile")
    on_slurm = tmp_path / "on_slurm"
    n_jobs = job_total(snakemake(on_slurm, "-n", "--cores", "1", train, *common).stdout)
    assert n_jobs == 2 + n_all + 2 + n_all * len(reps) + 1  # list_images, make_shard, manifest, extract, train
    started = time.time()
    proc = snakemake(
        on_slurm, "--workflow-profile", str(tmp_path / "profile"), train, *common,
        env=local_slurm.env(), timeout=SLURM_RUN_TIMEOUT,
    )  # fmt: skip
    elapsed = time.time() - started
    log = proc.stdout + proc.stderr
    assert f"{n_jobs} of {n_jobs} steps (100%) done" in log

    # What Snakemake says it submitted: plain jobs and array tasks.
    reported = set(re.findall(r"has been submitted with SLURM jobid (\d+)", log))
    for array_id, first, last in re.findall(
        r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)\. The individual task IDs are (\d+)-(\d+)",
        log,
    ):
        reported |= {f"{array_id}_{t}" for t in range(int(first), int(last) + 1)}
    assert len(reported) == n_jobs

    def slurm_id(job):  # Snakemake's name for a Slurm job: <id>, or <array id>_<task> for array tasks
        return f"{job['ArrayJobId']}_{job['ArrayTaskId']}" if job.get("ArrayJobId") else job["JobId"]

    # What Slurm ran: the job-completion log (written as each job ends; bounded wait).
    deadline = time.time() + 60
    while True:
        done = [r for r in jobcomp_records(local_slurm.jobcomp) if r.get("WorkDir") == str(on_slurm)]
        if len(done) >= n_jobs or time.time() > deadline:
            break
        time.sleep(1)
    assert len(done) == n_jobs, f"{len(done)} Slurm job records for {n_jobs} Snakemake jobs:\n{done}"
    for r in done:
        assert r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0", r
        assert r["Account"] == ACCOUNT, r
    assert len({r["Name"] for r in done}) == 1  # the executor names every job by the run's id
    assert {slurm_id(r) for r in done} == reported

    # What each job asked for: the profile's resources for its rule.
    jobs = [j for j in scontrol_jobs(local_slurm.env()) if j.get("WorkDir") == str(on_slurm)]
    assert {slurm_id(j) for j in jobs} == reported
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        by_rule.setdefault(rule_of(j), []).append(j)
    assert {r: len(js) for r, js in by_rule.items()} == {
        "list_images": 2, "make_shard": n_all, "shard_manifest": 2, "extract_features": n_all * len(reps),
        "train_decoder": 1,
    }  # fmt: skip
    for rule, rule_jobs in by_rule.items():
        want = rule_resources(profile, rule)
        for j in rule_jobs:
            assert j["Partition"] == want["slurm_partition"] and j["Account"] == ACCOUNT, (rule, j)
            assert minutes(j["TimeLimit"]) == at_attempt(want["runtime"]), (rule, j)
            mem = megabytes(j["MinMemoryNode"])
            if j.get("ArrayJobId"):  # + a small allowance for the array's encoded commands
                assert at_attempt(want["mem_mb"]) <= mem <= at_attempt(want["mem_mb"]) + 64, (rule, j)
            else:
                assert mem == at_attempt(want["mem_mb"]), (rule, j)
            if want.get("gpu"):
                assert j.get("TresPerJob") == f"gres:gpu:{want['gpu']}", (rule, j)
                assert j.get("CpusPerTres") == f"gres:gpu:{want['cpus_per_gpu']}", (rule, j)
                assert int(j["NumCPUs"]) == want["gpu"] * want["cpus_per_gpu"], (rule, j)
            else:
                assert "gpu" not in j.get("TresPerJob", ""), (rule, j)
                assert j["NumCPUs"] == "1", (rule, j)  # threads: 1
    assert by_rule["extract_features"][0]["Partition"] == GPU_PARTITION
    assert by_rule["train_decoder"][0]["Partition"] == GPU_PARTITION
    assert by_rule["make_shard"][0]["Partition"] == CPU_PARTITION
    assert (on_slurm / train).stat().st_size > 0
    # the training command uses the CPUs it got (set-threads = cpus_per_gpu)
    threads = profile["set-threads"]["train_decoder"]
    assert re.search(rf"python -m pipeline train .* --threads {threads} ", log), "train_decoder threads"

    # The per-shard rules ran as array jobs: both train shards become ready
    # together, and so do each shard's representations.
    assert sum(1 for j in by_rule["make_shard"] if j.get("ArrayJobId")) >= len(shards["train"])
    if len(reps) >= 2:
        assert sum(1 for j in by_rule["extract_features"] if j.get("ArrayJobId")) >= len(reps)

    # Same results as the local run: index (2), shard tars and jsons, manifests (2), stores.
    assert assert_same_outputs(local, on_slurm) == 2 + 2 * n_all + 2 + n_all * len(reps)
    print(f"{n_jobs} Snakemake jobs through Slurm in {elapsed:.0f} s")

"""profiles/slurm against a real Slurm.

The slow test starts a single-node Slurm on localhost from Debian's packages
(tests/slurm/local-slurm.sh: munged, slurmctld and slurmd as root, no cgroups,
a filetxt job-completion log), runs the data and feature stages of
config/test.yaml through ``--workflow-profile`` pointing at a copy of
profiles/slurm with its placeholders filled in, and checks that

* every Snakemake job went through Slurm: the job-completion log has one
  COMPLETED record per job, in the profile's partition and account, with the
  per-rule time limits of the profile, and the Slurm ids Snakemake reported are
  exactly those records;
* the per-shard jobs ran as Slurm array jobs;
* the outputs equal those of a local run (shards byte for byte, feature arrays
  exactly).

The fast test checks the profile itself with a dry run (no Slurm needed).
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
    # The per-rule Slurm logs are how the test maps Slurm jobs to rules.
    "slurm-keep-successful-logs": True,
}
SLURM_RUN_TIMEOUT = 900  # seconds; the run takes about 1.5 min on 2 cores


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
    profile.update(LOCAL_CLUSTER_SETTINGS)
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def minutes(value, attempt: int = 1) -> int:
    """A profile runtime/mem value ('60 * attempt', 15, '24h' not needed here) at an attempt."""
    if isinstance(value, int):
        return value
    return int(eval(value, {"__builtins__": {}}, {"attempt": attempt}))


def job_total(dry_run_stdout: str) -> int:
    m = re.search(r"^total\s+(\d+)\s*$", dry_run_stdout, re.MULTILINE)
    assert m, f"no job total in dry run:\n{dry_run_stdout}"
    return int(m.group(1))


def jobcomp_records(path: Path) -> list[dict[str, str]]:
    """The filetxt job-completion log: one 'Key=Value Key=Value ...' line per job."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            records.append(dict(f.split("=", 1) for f in line.split() if "=" in f))
    return records


def tres_mem_mb(tres: str) -> float:
    m = re.search(r"(?:^|,)mem=([\d.]+)([KMGT])", tres)
    assert m, tres
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)]


def time_limit_minutes(limit: str) -> int:
    """A time limit as the job-completion log writes it: minutes, or [D-]HH:MM:SS."""
    if limit.isdigit():
        return int(limit)
    days, _, hms = limit.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days) if days else 0) * 1440 + h * 60 + m + (s > 0)


def slurm_jobs_by_rule(slurm_logdir: Path):
    """From the kept Slurm logs: rule -> regular job ids, and rule -> {(array id, task)}.

    The executor writes .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log
    for a job and rule_<rule>/<arrayid>_<task>.log for an array task.
    """
    regular, arrays = {}, {}
    for log in slurm_logdir.rglob("*.log"):
        rule = next(p for p in log.relative_to(slurm_logdir).parts if p.startswith("rule_"))[len("rule_"):]
        if m := re.fullmatch(r"(\d+)_(\d+)\.log", log.name):
            arrays.setdefault(rule, set()).add((m.group(1), m.group(2)))
        elif m := re.fullmatch(r"(\d+)\.log", log.name):
            regular.setdefault(rule, set()).add(m.group(1))
    return regular, arrays


def assert_same_outputs(local: Path, on_slurm: Path) -> int:
    """Byte-equal files, except HDF5 stores: equal keys, attributes and arrays."""
    from pipeline.store import FeatureStore

    files = sorted(p.relative_to(local) for p in (local / "data").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(on_slurm) for p in (on_slurm / "data").rglob("*") if p.is_file())
    assert files == theirs
    for rel in files:
        a, b = local / rel, on_slurm / rel
        if rel.suffix == ".h5":
            with FeatureStore(a) as sa, FeatureStore(b) as sb:
                assert sa.keys == sb.keys, rel
                assert sa.dtype == sb.dtype and sa.shape == sb.shape, rel
                assert {k: str(v) for k, v in sa.attrs.items()} == {k: str(v) for k, v in sb.attrs.items()}, rel
                assert np.array_equal(sa.all(), sb.all()), f"{rel}: features differ"
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
    return len(files)


# ------------------------------------------------------------------- fast test
def test_profile_dry_run_resources_and_gpu_settings(tmp_path):
    profile = load_profile()
    assert profile["executor"] == "slurm"
    # placeholders are there to be replaced, and documented at the top
    text = PROFILE.read_text()
    for placeholder in PLACEHOLDERS:
        assert placeholder in text and text.count(placeholder) >= 2, placeholder
    # the GPU rule: its partition, one GPU, CPUs per GPU; no default cpus_per_task,
    # which the executor would use instead of cpus_per_gpu
    train = profile["set-resources"]["train_decoder"]
    assert train["slurm_partition"] == "CHANGE_ME_gpu_partition"
    assert train["gpu"] == 1 and isinstance(train["cpus_per_gpu"], int) and train["cpus_per_gpu"] >= 1
    assert "cpus_per_task" not in profile["default-resources"]
    assert "cpus_per_task" not in train
    # the per-shard rules are batched as array jobs
    array_rules = {r.strip() for r in profile["slurm-array-jobs"].split(",")}
    assert array_rules == {"make_shard", "extract_features"}

    # the dry run resolves the profile's resources per rule (attempt 1)
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
        assert res["slurm_account"] == "CHANGE_ME_account", rule
        assert res["slurm_partition"] == "CHANGE_ME_cpu_partition", rule
        want = profile["set-resources"][rule]
        assert int(res["runtime"]) == minutes(want["runtime"]), rule
        assert int(res["mem_mb"]) == minutes(want["mem_mb"]), rule
    assert int(seen["extract_features"]["mem_mb"]) == 8000


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
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "LOCAL_SLURM_CPU_PARTITION": CPU_PARTITION,
        "LOCAL_SLURM_GPU_PARTITION": GPU_PARTITION,
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
def test_data_and_feature_stages_through_slurm_equal_a_local_run(local_slurm, tmp_path):
    reps = feature_reps()
    n_shards = yaml.safe_load(TEST_CONFIG.read_text())["dataset"]["shards"]
    shards = {split: [f"{i:05d}" for i in range(n)] for split, n in n_shards.items()}
    assert len(shards["train"]) >= 2  # so that make_shard has an array to make
    n_all = sum(n_shards.values())  # shards over both splits
    targets = [f"data/shards/32px/{split}/manifest.json" for split in shards]
    targets += [f"data/features/{rep}/{split}/{s}.h5" for rep in reps for split in shards for s in shards[split]]
    common = [*targets, "--configfile", str(TEST_CONFIG)]  # --configfile takes several values: last

    # the reference: the same targets run locally
    local = tmp_path / "local"
    snakemake(local, "--cores", "2", *common)

    # through Slurm, with the derived profile
    profile = derive_profile(tmp_path / "profile")
    on_slurm = tmp_path / "on_slurm"
    n_jobs = job_total(snakemake(on_slurm, "-n", "--cores", "1", *common).stdout)
    assert n_jobs == 2 + n_all + 2 + n_all * len(reps)  # list_images, make_shard, manifest, extract
    started = time.time()
    proc = snakemake(
        on_slurm, "--workflow-profile", str(tmp_path / "profile"), *common,
        env=local_slurm.env(), timeout=SLURM_RUN_TIMEOUT,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert f"{n_jobs} of {n_jobs} steps (100%) done" in log

    # What Snakemake says it submitted: regular jobs and array tasks.
    regular_ids = set(re.findall(r"has been submitted with SLURM jobid (\d+)", log))
    array_tasks = set()
    for array_id, first, last in re.findall(
        r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)\. The individual task IDs are (\d+)-(\d+)",
        log,
    ):
        array_tasks |= {(array_id, str(t)) for t in range(int(first), int(last) + 1)}
    assert len(regular_ids) + len(array_tasks) == n_jobs

    # What Slurm ran: the job-completion log (written as each job ends; bounded wait).
    deadline = time.time() + 60
    while True:
        records = [r for r in jobcomp_records(local_slurm.jobcomp) if r.get("WorkDir") == str(on_slurm)]
        if len(records) >= n_jobs or time.time() > deadline:
            break
        time.sleep(1)
    assert len(records) == n_jobs, f"{len(records)} Slurm records for {n_jobs} jobs:\n{records}"
    for r in records:
        assert r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0", r
        assert r["Partition"] == CPU_PARTITION and r["Account"] == ACCOUNT, r
    assert len({r["Name"] for r in records}) == 1  # the run's id, the executor's job name
    slurm_regular = {r["JobId"] for r in records if not r.get("ArrayJobId")}
    slurm_array = {(r["ArrayJobId"], r["ArrayTaskId"]) for r in records if r.get("ArrayJobId")}
    assert slurm_regular == regular_ids
    assert slurm_array == array_tasks

    # Per rule (from the kept Slurm logs): the per-shard rules ran as array jobs,
    # and every job got the profile's time limit and memory for its rule.
    regular_by_rule, arrays_by_rule = slurm_jobs_by_rule(on_slurm / ".snakemake" / "slurm_logs")
    assert len(arrays_by_rule.get("make_shard", ())) >= 2  # both train shards, one array
    if len(reps) >= 2:  # each shard's representations become ready together
        assert len(arrays_by_rule.get("extract_features", ())) >= 2
    by_regular = {r["JobId"]: r for r in records if not r.get("ArrayJobId")}
    by_task = {(r["ArrayJobId"], r["ArrayTaskId"]): r for r in records if r.get("ArrayJobId")}
    resources = profile["set-resources"]
    checked = 0
    for rule in set(regular_by_rule) | set(arrays_by_rule):
        want_runtime, want_mem = minutes(resources[rule]["runtime"]), minutes(resources[rule]["mem_mb"])
        for job_id in regular_by_rule.get(rule, ()):
            r = by_regular[job_id]
            assert time_limit_minutes(r["TimeLimit"]) == want_runtime, (rule, r)
            assert tres_mem_mb(r["Tres"]) == want_mem, (rule, r)
            checked += 1
        for task in arrays_by_rule.get(rule, ()):
            r = by_task[task]
            assert time_limit_minutes(r["TimeLimit"]) == want_runtime, (rule, r)
            assert tres_mem_mb(r["Tres"]) >= want_mem, (rule, r)  # + the executor's payload allowance
            checked += 1
    assert checked == n_jobs

    # Same results as the local run.
    # index (2), shard tar + json, manifests (2), stores
    assert assert_same_outputs(local, on_slurm) == 2 + 2 * n_all + 2 + n_all * len(reps)
    print(f"{n_jobs} jobs through Slurm in {time.time() - started:.0f} s; arrays: {sorted(arrays_by_rule)}")

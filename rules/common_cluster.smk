# Helpers only (no rules): what each heavy job asks a cluster for, sized from the config.
# The formula is in src/winnow/resources.py and docs/cluster.md; `snakemake -n --workflow-profile
# profiles/slurm` prints every job's request.
from winnow.resources import job_sizes, memory_mb, runtime_min  # noqa: E402
from winnow.workflow_env import set_aside_logs  # noqa: E402

# config key `cluster`: gpu (false: every GPU job runs on CPUs), the caps a retry never exceeds,
# and where GPU jobs go. Defaults come from the schema.
# `--config cluster={gpu: false}` passes strings; the schema accepts them, read here as values.
CLUSTER = dict(config.get("cluster") or {})
CLUSTER["gpu"] = str(CLUSTER.get("gpu", True)).lower() == "true"
for _key, _default in (("max_mem_mb", 128000), ("max_runtime", 2880)):
    CLUSTER[_key] = int(CLUSTER.get(_key, _default))
_JOB_SIZES = job_sizes(config)


def job_resources(kind):
    """`resources:` of heavy jobs of ``kind`` (a key of winnow.resources.KINDS): GPU count and
    CPUs per GPU (or CPUs per task on a CPU-only cluster), memory and runtime as functions of the
    attempt (doubling on a retry, capped by cluster.max_mem_mb / cluster.max_runtime).
    """
    shape, sizes, tokens = _JOB_SIZES[kind]
    cap_mb, cap_min = CLUSTER["max_mem_mb"], CLUSTER["max_runtime"]
    gpu = CLUSTER["gpu"]
    res = {
        "gpu": 1 if gpu else 0,
        "mem_mb": lambda wildcards, attempt: memory_mb(
            kind, shape, sizes, attempt, gpu, cap_mb
        ),
        "runtime": lambda wildcards, attempt: runtime_min(
            kind, shape, tokens, attempt, gpu, cap_min
        ),
    }
    if gpu:
        res["cpus_per_gpu"] = lambda wildcards, threads: threads
        if CLUSTER.get("gpu_model"):
            res["gpu_model"] = CLUSTER["gpu_model"]
        if CLUSTER.get("gpu_partition"):
            res["slurm_partition"] = CLUSTER["gpu_partition"]
    else:
        res["cpus_per_task"] = lambda wildcards, threads: threads
    return res

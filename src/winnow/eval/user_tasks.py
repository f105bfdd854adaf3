"""Standard lm-eval tasks and the user's own task YAMLs (config ``eval.harness``), offline.

Three steps, each its own function so that a bad name or missing data fails early and clearly:

* :func:`check_config` (parse time, no lm-eval import): names are plain task names, none starts
  with ``winnow_`` (Winnow's own tasks), the include path exists and lies inside the project.
* :func:`resolve` (rule ``eval_harness_check``, once per run): every name resolves with lm-eval's
  ``TaskManager`` over the include path and lm-eval's own tasks (an unknown name is an error naming
  ``eval.harness.tasks`` and the closest names), and every task's data loads offline (an error
  names the task and the missing file or dataset, never a network traceback).
* :func:`run_tasks` (rule ``eval_harness_tasks``, per model): ``lm_eval.simple_evaluate`` on them.

Relative ``data_files`` in an include-path YAML are looked up next to the YAML first (so a task
folder is self-contained, as lm-eval already does for ``include:`` and ``!function``), then in
the working directory (lm-eval's own rule).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from winnow.eval.harness import TASK_PREFIX, _harness_env, _items, evaluate, load_hflm, task_metrics

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Dataset builders that read local files (dataset_path: json + data_files, ...).
_LOCAL_BUILDERS = {"json", "parquet", "csv", "text", "arrow"}


def _inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r.resolve() or r.resolve() in real.parents for r in roots)


def check_config(harness: dict, project_dirs: list[Path]) -> list[str]:
    """Problems of the ``eval.harness`` block (empty: fine). ``project_dirs``: the workflow's
    checkout and the working directory; include paths elsewhere are refused because lm-eval runs
    their ``!function`` hooks, i.e. they are code as trusted as the workflow itself."""
    problems = []
    tasks = harness.get("tasks") or []
    for name in tasks:
        if not NAME.match(str(name)):
            problems.append(f"config key eval.harness.tasks: {name!r} is not a task name (letters, digits, _ . -)")
        elif str(name).startswith(TASK_PREFIX):
            problems.append(
                f"config key eval.harness.tasks: {name!r}: names starting with {TASK_PREFIX!r} are Winnow's own tasks"
            )
    if len(set(tasks)) != len(tasks):
        problems.append(f"config key eval.harness.tasks lists a task twice: {tasks}")
    for key in ("include_path", "datasets_cache"):
        value = harness.get(key)
        if not value:
            continue
        path = Path(value)
        if not path.is_dir():
            problems.append(f"config key eval.harness.{key}: {value!r} is not a folder")
        elif key == "include_path" and not _inside(path, project_dirs):
            problems.append(
                f"config key eval.harness.include_path: {value!r} lies outside the project"
                f" ({', '.join(str(p) for p in project_dirs)}); its YAMLs can run Python (!function),"
                " so they must live with the workflow (copy them into the project)"
            )
    return problems


@contextlib.contextmanager
def _datasets_env(datasets_cache: str | os.PathLike | None) -> Iterator[None]:
    """Offline (``_harness_env``) and, when given, the user's HF datasets cache."""
    import datasets.config as dconfig  # reads HF_DATASETS_CACHE once, at import: patched too

    saved, saved_attr = os.environ.get("HF_DATASETS_CACHE"), dconfig.HF_DATASETS_CACHE
    if datasets_cache:
        os.environ["HF_DATASETS_CACHE"] = str(Path(datasets_cache).resolve())
        dconfig.HF_DATASETS_CACHE = Path(datasets_cache).resolve()
    try:
        with _harness_env():
            yield
    finally:
        dconfig.HF_DATASETS_CACHE = saved_attr
        if saved is None:
            os.environ.pop("HF_DATASETS_CACHE", None)
        else:
            os.environ["HF_DATASETS_CACHE"] = saved


def task_manager(include_path: str | os.PathLike | None, include_defaults: bool = True):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)


def _local_files(data_files: Any) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    if isinstance(data_files, (list, tuple)):
        return [f for v in data_files for f in _local_files(v)]
    return []


def _anchor(data_files: Any, yaml_dir: Path) -> Any:
    """Relative paths found next to the YAML made absolute; others left as they are."""
    if isinstance(data_files, str):
        near = yaml_dir / data_files
        return str(near.resolve()) if not Path(data_files).is_absolute() and near.exists() else data_files
    if isinstance(data_files, dict):
        return {k: _anchor(v, yaml_dir) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_anchor(v, yaml_dir) for v in data_files]
    return data_files


def task_spec(tm, name: str) -> dict[str, Any]:
    """How ``name`` resolved: ``{"name", "kind", "yaml", "builtin", "dataset_path", "data_files"}``."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = tm.task_index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, tm.all_tasks, n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        where = f" in eval.harness.include_path ({tm.include_path}) or lm-eval's tasks" if tm.include_path else ""
        raise ValueError(f"config key eval.harness.tasks: unknown lm-eval task {name!r}{where}{hint}")
    spec: dict[str, Any] = {"name": name, "kind": entry.kind.name.lower(), "yaml": None, "builtin": True}
    if entry.yaml_path is not None:
        import lm_eval.tasks

        spec["yaml"] = str(entry.yaml_path)
        spec["builtin"] = Path(lm_eval.tasks.__file__).parent.resolve() in Path(entry.yaml_path).resolve().parents
    if entry.kind == Kind.TASK and entry.yaml_path is not None:
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
        spec["dataset_path"] = cfg.get("dataset_path")
        spec["dataset_name"] = cfg.get("dataset_name")
        files = (cfg.get("dataset_kwargs") or {}).get("data_files")
        if files is not None:
            spec["data_files"] = _anchor(files, Path(entry.yaml_path).parent)
    return spec


def _load_spec(spec: dict[str, Any]) -> str | dict[str, Any]:
    """What to hand ``TaskManager.load``: the name, or the full config with anchored data files."""
    if "data_files" not in spec or spec["yaml"] is None:
        return spec["name"]
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(spec["yaml"], resolve_func=True)  # includes merged, !function hooks resolved
    cfg.pop("tag", None)
    cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "data_files": spec["data_files"]}
    return cfg


def check_data(tm, spec: dict[str, Any]) -> int:
    """Load one task's data offline; the number of evaluation docs. Errors name what is missing."""
    path = spec.get("dataset_path")
    if path in _LOCAL_BUILDERS:
        for f in _local_files(spec.get("data_files")):
            if not any(ch in f for ch in "*?[") and not Path(f).exists():
                raise FileNotFoundError(
                    f"lm-eval task {spec['name']!r} ({spec['yaml']}): data file {f!r} does not exist"
                    " (relative paths are looked up next to the YAML, then in the working directory)"
                )
    try:
        loaded = tm.load([_load_spec(spec)])
    except Exception as err:  # noqa: BLE001 - reworded below, the cause kept
        text = f"{type(err).__name__}: {err}"
        causes, e = [], err
        while e is not None and len(causes) < 20:  # a chain may loop through __context__
            causes.append(f"{type(e).__name__}: {e}")
            e = e.__cause__ or e.__context__
        offline = any(
            "ConnectionError" in c or "OfflineModeIsEnabled" in c or "Couldn't find cache" in c for c in causes
        )
        if isinstance(err, KeyError):
            raise RuntimeError(
                f"lm-eval task {spec['name']!r} ({spec['yaml']}): its data has no split {err}; the task's"
                " YAML names it (training_split / validation_split / test_split / fewshot_split)"
            ) from err
        if offline and path and path not in _LOCAL_BUILDERS and not Path(str(path)).exists():
            cache = os.environ.get("HF_DATASETS_CACHE", "the default HF datasets cache")
            raise FileNotFoundError(
                f"lm-eval task {spec['name']!r}: dataset {path!r}"
                + (f" (config {spec['dataset_name']!r})" if spec.get("dataset_name") else "")
                + f" is not available offline: it is not in {cache} (set eval.harness.datasets_cache to a"
                " datasets cache made where it was downloaded, or point the task at local files with"
                f" dataset_path: json/parquet + dataset_kwargs.data_files). lm-eval said: {text[:300]}"
            ) from err
        raise RuntimeError(f"lm-eval task {spec['name']!r} ({spec['yaml']}) failed to load: {text}") from err
    return sum(len(list(task.eval_docs)) for task in loaded["tasks"].values())


def write_datasets_cache(
    files: dict[str, str | os.PathLike], repo_id: str, config_name: str, cache_dir: str | os.PathLike
) -> Path:
    """Put local files (``{split: .jsonl/.parquet}``) into ``cache_dir`` as ``datasets`` caches a
    Hub dataset ``repo_id`` / ``config_name`` when it downloads it, so that lm-eval's built-in task
    of that dataset (e.g. ``arc_easy``: allenai/ai2_arc, ARC-Easy) loads them by name offline
    (``eval.harness.datasets_cache``). Returns the cached folder."""
    import shutil
    import tempfile

    from datasets.packaged_modules.json.json import Json
    from datasets.packaged_modules.parquet.parquet import Parquet

    suffixes = {Path(f).suffix for f in files.values()}
    builder_cls = Parquet if suffixes == {".parquet"} else Json
    namespace, _, name = repo_id.rpartition("/")
    final = Path(cache_dir) / "___".join(p for p in (namespace, name) if p) / config_name / "0.0.0" / "local"
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        builder = builder_cls(
            cache_dir=tmp,
            dataset_name=name,
            config_name=config_name,
            data_files={k: str(Path(v).resolve()) for k, v in files.items()},
            hash="local",
        )
        builder.download_and_prepare()
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(builder.cache_dir, final)
    return final


def resolve(
    tasks: list[str],
    include_path: str | os.PathLike | None,
    datasets_cache: str | os.PathLike | None = None,
    tm=None,
) -> dict[str, Any]:
    """Resolve every name and load its data offline; ``{"tasks": {name: spec + n_docs}, ...}``.

    ``tm``: a ``TaskManager`` already built over ``include_path`` (default: one over it and
    lm-eval's own tasks)."""
    with _datasets_env(datasets_cache):
        tm = tm or task_manager(include_path, include_defaults=True)
        specs = {name: task_spec(tm, name) for name in tasks}
        for spec in specs.values():
            spec["n_docs"] = check_data(tm, spec)
    return {
        "tasks": specs,
        "include_path": str(Path(include_path).resolve()) if include_path else None,
        "datasets_cache": str(Path(datasets_cache).resolve()) if datasets_cache else None,
    }


def local_inputs(resolved: dict[str, Any]) -> list[str]:
    """The user's YAMLs and local data files of resolved tasks (for provenance)."""
    files = []
    for spec in resolved["tasks"].values():
        if spec.get("yaml") and not spec["builtin"]:
            files.append(spec["yaml"])
        files += [f for f in _local_files(spec.get("data_files")) if Path(f).is_file()]
    return sorted(set(files))


def run_tasks(
    model_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    resolved: dict[str, Any],
    device: str,
    batch_size: int,
    limit: int | None,
    *,
    bootstrap_iters: int = 1000,
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """lm-eval on the tasks :func:`resolve` checked. ``{"tasks": {task: {metric: value}}, "items":
    {task: per-item values}, "n_samples": {...}, "lm_eval_version": str}``; a group's subtasks and
    the group itself each get their own entry."""
    with _datasets_env(resolved.get("datasets_cache")):
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        specs = resolved["tasks"]
        # lm-eval's ~15,000 tasks are indexed only when needed: a built-in task, or a group or tag
        # (whose members may be built-in tasks).
        defaults = any(s["builtin"] or s["kind"] != "task" for s in specs.values())
        tm = task_manager(resolved.get("include_path"), include_defaults=defaults)
        lm = load_hflm(HFLM, model_dir, tokenizer_dir, device, batch_size, dtype, trust_remote_code)
        out = evaluate(lm, [_load_spec(specs[name]) for name in sorted(specs)], tm, limit, bootstrap_iters)
    metrics = {task: task_metrics(values) for task, values in sorted(out["results"].items())}
    samples = out.get("samples", {})
    n_samples = out.get("n-samples", {})
    result = {
        "tasks": metrics,
        "items": {task: _items(samples[task]) for task in sorted(samples)},
        "n_samples": {task: int(v.get("effective", 0)) for task, v in sorted(n_samples.items())},
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
    }
    log.info("lm-eval: %s", json.dumps(metrics, sort_keys=True))
    return result

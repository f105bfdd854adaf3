# Helpers only (no rules) of rules/eval_tasks.smk: config eval.harness (docs/evaluation.md),
# checked here at parse time as far as it can be without lm-eval.
import os

from winnow.eval.user_tasks import check_config as _harness_config_problems

HARNESS = config["eval"].get("harness") or {}
HARNESS_TASKS = list(HARNESS.get("tasks") or [])
# Include-path YAMLs may run Python (!function): only folders of the checkout or the working
# directory are accepted, as trusted as the workflow itself.
_problems = _harness_config_problems(
    HARNESS, [Path(workflow.basedir), Path(os.getcwd())]
)
if _problems:
    raise ValueError("\n".join(_problems))
if HARNESS.get("include_path"):  # its files are the check's inputs
    check_input_path("eval.harness.include_path", HARNESS["include_path"])


def harness_task_evals(base):
    """The user-task eval file of one model folder ``base`` (none without eval.harness.tasks)."""
    return [f"{base}/harness-tasks.json"] if HARNESS_TASKS else []


def harness_include_files():
    """Every file of the include path: an edited YAML or data file re-runs the check."""
    root = HARNESS.get("include_path")
    if not root:
        return []
    return sorted(
        str(p)
        for p in Path(root).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )

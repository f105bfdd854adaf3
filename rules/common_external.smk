# Helpers only (no rules) for rules/external.smk: score files made elsewhere, one method arm each.
from winnow.methods.external import detect_format  # noqa: E402

# config external: {<name>: {path, key, score_column, format, missing, select}}; each name is the
# method arm `external-<name>` (folders results/{run}/{scores,selected,models,eval}/external-<name>/).
EXTERNAL = config.get("external") or {}
EXTERNAL_NAME = r"[a-z0-9][a-z0-9_]*"
if "external" in config["methods"] and not EXTERNAL:
    raise ValueError(
        "config key external is required when methods include external (a map of name → score file)"
    )
for _name, _spec in EXTERNAL.items():
    if not re.fullmatch(EXTERNAL_NAME, str(_name)):
        raise ValueError(
            f"config key external.{_name}: the name becomes the folder external-<name>; use"
            " lowercase letters, digits and _ (starting with a letter or digit)"
        )
    check_input_path(f"external.{_name}.path", _spec["path"])
    if "external" in config["methods"] and not Path(_spec["path"]).is_file():
        raise ValueError(
            f"config key external.{_name}.path names {_spec['path']!r}, which is not a file"
            " (relative paths are read from the working directory)"
        )
    try:
        detect_format(_spec["path"], _spec.get("format", "auto"))
    except ValueError as e:
        raise ValueError(f"config key external.{_name}.format: {e}") from None


def external_select_spec(name):
    """The select block of arm external-<name>: random's budget, direction higher and
    temperature 0, overridden by select.external, then by external.<name>.select."""
    spec = {"direction": "higher", "temperature": 0.0}
    spec.update(
        {k: v for k, v in config["select"]["random"].items() if k in ("ratio", "k")}
    )
    for over in (
        config["select"].get("external") or {},
        EXTERNAL[name].get("select") or {},
    ):
        if "ratio" in over or "k" in over:
            spec.pop("ratio", None)
            spec.pop("k", None)
        spec.update(over)
    return spec


def _external_size_key(name):
    size = "ratio" if "ratio" in external_select_spec(name) else "k"
    if size in (EXTERNAL[name].get("select") or {}):
        return f"external.{name}.select.{size}"
    if size in (config["select"].get("external") or {}):
        return f"select.external.{size}"
    return f"select.random.{size}"


EXTERNAL_ARMS = []
if "external" in config["methods"]:
    EXTERNAL_ARMS = [f"external-{n}" for n in EXTERNAL]
    SELECTION_METHODS += EXTERNAL_ARMS
    for _name in EXTERNAL:
        _spec = external_select_spec(_name)
        if "ratio" in _spec and "k" in _spec:
            raise ValueError(
                f"config key external.{_name}.select: give ratio or k, not both"
            )
        if "bakeoff" in config["methods"] and _spec.get("ratio") != config["select"][
            "random"
        ].get("ratio"):
            raise ValueError(
                f"config key {_external_size_key(_name)} must equal select.random.ratio when"
                " methods include bakeoff (the leaderboard compares arms at one budget)"
            )


def external_name(wildcards):
    return wildcards.method.removeprefix("external-")


def external_select_args(wildcards):
    """Arguments of `select select` for arm external-<name> (a list, quoted by the rule)."""
    name = external_name(wildcards)
    spec = external_select_spec(name)
    return spec_select_args(spec, _external_size_key(name))  # rules/common.smk


def external_file(wildcards):
    return EXTERNAL[wildcards.name]["path"]


def external_args(wildcards):
    """Arguments of `select external-scores` (a list, quoted by the rule; free strings as --opt=value)."""
    spec = EXTERNAL[wildcards.name]
    return [
        f"--key={spec.get('key', 'doc_id')}",
        f"--score-column={spec.get('score_column', 'score')}",
        f"--format={spec.get('format', 'auto')}",
        f"--missing={spec.get('missing', 'error')}",
        f"--direction={external_select_spec(wildcards.name)['direction']}",
        f"--where=external.{wildcards.name}",
    ]


def external_targets():
    """The external arms' evals, comparisons and reports (none unless methods include external:
    the arms are trained as methods of the spine only then)."""
    files = []
    for arm in EXTERNAL_ARMS:
        files += method_targets(arm) + [
            f"results/{RUN}/external/{arm.removeprefix('external-')}/report.json"
        ]
    return files

"""The workflow config keys each command reads, declared once.

A command's params class names the keys it reads; the rule hands exactly those keys to the command
as one JSON object (``--params``, built by :func:`command_params`), and the command validates it
(:meth:`Params.from_json`). Adding a key to a method is then: the schema (with its description,
from which docs/configuration-reference.md is generated), config/config.yaml, a field here and its
use — no rule param, no shell string, no argparse flag.

Only the declared keys travel: Snakemake reruns a job when its params change, so a key another
command reads (e.g. mates.stages) must not reach this command's job. Values a rule derives per
wildcard (a stage number, a per-stage seed) stay separate arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

# The workflow config's schema (the checkout's; the package is installed from it in place).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of a command's params: a field per config key, read from ``<BLOCK>.<field name>``, or
    from the dotted path in the field's ``metadata["key"]`` when the key lives in another block."""

    BLOCK: ClassVar[str] = ""
    COMMAND: ClassVar[str] = ""

    @classmethod
    def config_key(cls, field: dataclasses.Field) -> str:
        return field.metadata.get("key", f"{cls.BLOCK}.{field.name}")

    @classmethod
    def from_dict(cls, value: Any) -> Params:
        """Validate one JSON object: unknown, missing and mistyped keys are errors naming the key."""
        if not isinstance(value, dict):
            raise ValueError(f"{cls.COMMAND} params: expected a JSON object, got {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"{cls.COMMAND} params: unknown key {unknown[0]!r} (declared: {sorted(fields)})")
        hints = typing.get_type_hints(cls)
        for name, field in fields.items():
            if name not in value:
                raise ValueError(f"{cls.COMMAND} params: missing key {name!r} (config {cls.config_key(field)})")
            if not _is_instance(value[name], hints[name]):
                raise ValueError(
                    f"{cls.COMMAND} params: {name!r} (config {cls.config_key(field)}) must be {hints[name]}, "
                    f"got {value[name]!r}"
                )
        return cls(**value)

    @classmethod
    def from_json(cls, text: str) -> Params:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.COMMAND} params: not JSON: {err}") from err
        return cls.from_dict(value)

    @classmethod
    def argtype(cls, text: str) -> Params:
        """``type=`` of the ``--params`` option: a validation error becomes an argparse usage error."""
        try:
            return cls.from_json(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_instance(value: Any, hint: Any) -> bool:
    """A JSON value against a field's type: int, float (an int is accepted), str, bool, dict, list,
    ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin)


# Every command that reads config keys, by its CLI name ("group command"); filled by @command.
COMMANDS: dict[str, type[Params]] = {}


def command(name: str, block: str):
    """Class decorator: a frozen dataclass of ``Params`` registered as the params of CLI ``name``."""

    def wrap(cls):
        cls.COMMAND, cls.BLOCK = name, block
        cls = dataclasses.dataclass(frozen=True)(cls)
        COMMANDS[name] = cls
        return cls

    return wrap


def _lookup(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"config key {key} is not set")
        node = node[part]
    return node


def _config_value(config: dict, key: str, field: dataclasses.Field) -> Any:
    """The config's value of ``key``; a field's own default where the config leaves it out."""
    try:
        return _lookup(config, key)
    except KeyError:
        if field.default is not dataclasses.MISSING:
            return field.default
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        raise


def command_params(config: dict, name: str, **given: Any) -> str:
    """The compact, key-sorted JSON of exactly the keys command ``name`` declares, read from the
    (validated, defaults filled) workflow ``config``; ``given`` overrides a key's value (a rule that
    feeds the command from another block, e.g. the bake-off's n_probe)."""
    cls = COMMANDS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise KeyError(f"{name} declares no param {unknown[0]!r}")
    value = {k: given[k] if k in given else _config_value(config, cls.config_key(f), f) for k, f in fields.items()}
    cls.from_dict(value)  # a bad value fails in the dry run, not in the job
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def schema_params(name: str, **given: Any) -> str:
    """``--params`` of command ``name`` for a caller without a workflow config (a test, a benchmark,
    a command run by hand): each key's default from the workflow schema, ``given`` overriding."""
    import yaml

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    cls = COMMANDS[name]
    value = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            value[f.name] = given[f.name]
            continue
        node = schema
        for part in cls.config_key(f).split("."):
            node = node.get("properties", {}).get(part, {})
        if "default" not in node:
            raise KeyError(f"{name}: config key {cls.config_key(f)} has no schema default; give {f.name}=")
        value[f.name] = node["default"]
    return json.dumps(cls.from_dict(value).as_dict(), sort_keys=True, separators=(",", ":"))


def add_params(p: argparse.ArgumentParser, name: str) -> None:
    """``--params``: the command's config keys as one JSON object (the rule's ``block_params``)."""
    cls = COMMANDS[name]
    keys = ", ".join(cls.config_key(f) for f in dataclasses.fields(cls))
    p.add_argument(
        "--params",
        type=cls.argtype,
        required=True,
        help=f"JSON object of the workflow config keys this command reads: {keys} (by field name)",
    )


# ---- the commands' params ------------------------------------------------------------------------


@command("data ingest", "corpus")
class IngestParams(Params):
    text_field: str
    domain_field: str | None
    id_field: str | None
    default_domain: str | None
    max_chars: int
    split_seed: int
    split_fractions: dict


@command("data tokenizer", "tokenizer")
class TokenizerParams(Params):
    vocab_size: int
    min_frequency: int
    max_train_chars: int
    trust_remote_code: bool


@command("data tokenize", "tokenize")
class TokenizeParams(Params):
    """The token store's layout: its writer (tokenize) and its reader (merge-examples) read the same keys."""

    seq_len: int
    num_shards: int
    shards_per_block: int


@command("data merge-examples", "tokenize")
class MergeExamplesParams(TokenizeParams):
    pass


@command("mates pools", "mates")
class PoolsParams(Params):
    stage_size: int
    probe_size: int
    seed: int


@command("mates reference", "mates")
class ReferenceParams(Params):
    seed: int
    seq_len: int = dataclasses.field(metadata={"key": "tokenize.seq_len"})


@command("mates oracle", "mates")
class OracleParams(Params):
    n_probe: int
    oracle: dict = dataclasses.field(default_factory=dict)


@command("pds solve", "pds")
class SolveParams(Params):
    solver: dict


@command("ablation partition", "ablation")
class PartitionParams(Params):
    column: str


@command("ablation mix", "ablation")
class MixParams(Params):
    seed: int


@command("data eval-tasks", "eval")
class EvalTasksParams(Params):
    split: str
    n_lastword: int
    n_choice: int
    task_seed: int


@command("eval ppl", "eval")
class PplParams(Params):
    split: str
    max_docs_per_domain: int
    batch_size: int


@command("eval harness", "eval")
class HarnessParams(Params):
    batch_size: int
    harness_limit: int | None = None


@command("eval harness-tasks", "eval")
class HarnessTasksParams(HarnessParams):
    pass


@command("eval target", "eval")
class TargetParams(Params):
    batch_size: int


@command("eval harness-check", "eval.harness")
class HarnessCheckParams(Params):
    tasks: list
    include_path: str | None = None
    datasets_cache: str | None = None


@command("eval leaderboard", "bakeoff")
class LeaderboardParams(Params):
    primary: str = "target/pds_target_eval"


@command("less data", "less")
class LessDataParams(Params):
    data: dict
    seq_len: int = dataclasses.field(metadata={"key": "tokenize.seq_len"})


@command("less train", "less.warmup")
class LessTrainParams(Params):
    # The warm-up's seeded fraction of --ids; a fine-tune rule passes None (all of --ids).
    fraction: float | None = None


@command("less features", "less.features")
class LessFeaturesParams(Params):
    dim: int
    seed: int = 0
    dtype: str = "float16"
    batch_size: int = 16
    method: str = "hooks"


@command("less match", "less")
class LessMatchParams(Params):
    aggregate: str = "subtask_max"


@command("less predict", "less.predictor")
class LessPredictParams(Params):
    ratio: float = dataclasses.field(metadata={"key": "select.less.ratio"})
    fit_fraction: float = 0.5
    seed: int = 0


@command("less prefilter-sample", "less.predictor")
class PrefilterSampleParams(Params):
    fit_fraction: float = 0.5
    seed: int = 0


@command("less prefilter-predict", "less.predictor")
class PrefilterPredictParams(Params):
    featurize_fraction: float = 0.15
    seed: int = 0


@command("less prefilter", "less.predictor")
class PrefilterParams(Params):
    ratio: float = dataclasses.field(metadata={"key": "select.less.ratio"})
    mode: str = "full"
    fit_fraction: float = 0.5
    featurize_fraction: float = 0.15


@command("less eval", "eval")
class LessEvalParams(Params):
    batch_size: int

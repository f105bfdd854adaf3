"""LESS: LoRA gradient features, their projection and matching, and a learned score predictor.

Parts: :mod:`.lora` (adapters, checkpoints, per-example gradients), :mod:`.projection` (the seeded
±1 map :class:`RademacherProjector`), :mod:`.features` (features per example and their store),
:mod:`.matching` (:func:`less_scores`) and :mod:`.predictor` (:func:`fit_ridge` on
:func:`mean_hidden_states`, used by :mod:`winnow.methods.less_prefilter`). Checkpoint weights and
moments are keyed by peft's parameter names (``base_model.model.<module>.lora_A.default.weight``;
moments under ``<name>.exp_avg`` / ``.exp_avg_sq``).

See docs/methods/less.md for the equations, the differences from LESS's released code and the
checks.
"""

from winnow.methods.less.features import (
    SIDECAR_KEYS,
    featurize,
    read_features,
    read_sidecar,
    sidecar_path,
    write_features,
)
from winnow.methods.less.lora import (
    DEFAULT_TARGET_MODULES,
    KINDS,
    adam_features,
    add_lora,
    flat_moments,
    load_lora_checkpoint,
    lora_param_names,
    lora_size,
    per_example_lora_grads,
    per_example_lora_grads_hooks,
)
from winnow.methods.less.matching import AGGREGATES, checkpoint_weights, less_scores
from winnow.methods.less.predictor import (
    _ridge_coefs,
    fit_ridge,
    mean_hidden_states,
    predict_ridge,
    regression_report,
)
from winnow.methods.less.projection import RademacherProjector, _fmix32, _unpack_gather, _unpack_where

__all__ = [
    "AGGREGATES",
    "DEFAULT_TARGET_MODULES",
    "KINDS",
    "SIDECAR_KEYS",
    "RademacherProjector",
    "_fmix32",
    "_ridge_coefs",
    "_unpack_gather",
    "_unpack_where",
    "adam_features",
    "add_lora",
    "checkpoint_weights",
    "featurize",
    "fit_ridge",
    "flat_moments",
    "less_scores",
    "load_lora_checkpoint",
    "lora_param_names",
    "lora_size",
    "mean_hidden_states",
    "per_example_lora_grads",
    "per_example_lora_grads_hooks",
    "predict_ridge",
    "read_features",
    "read_sidecar",
    "regression_report",
    "sidecar_path",
    "write_features",
]

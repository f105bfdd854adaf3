"""Fit a small model to expensive per-example labels, then score the pool with it.

Shared by PDS, MATES and the LESS predictor; docs/methods/README.md ("The data scorer") explains
the model and the label normalisation. Every score written is in z units of the training labels
(``raw ≈ mean + std · score``, up to the clipping); higher score = higher label.

Saved folder (``fit_scorer`` → ``out_dir``)::

    model.safetensors   "backbone.<HF name>" + "head.weight" (1, hidden) + "head.bias" (1,)
    config.json         the backbone's HF config (AutoModel.from_config rebuilds it)
    scorer.json         ScorerConfig, label normalisation, tokenizer info, inputs, best step,
                        validation metrics and curve
    val.parquet         example_id, label (raw), target (z, clipped), prediction (z, best step)
    tokenizer/          the scorer tokenizer's HF folder (only when ``tokenizer`` was given)

Nothing is fetched from a hub: ``pretrained`` must be a local folder, and ``trust_remote_code``
comes from the workflow config, never from a fitted folder's own scorer.json.

Parts: :mod:`.model` (config, model, build/load), :mod:`.inputs` (encoders, retokenization),
:mod:`.inference` (batching, CUDA path), :mod:`.fit` and :mod:`.score` (resumable pool scoring).
"""

from winnow.scorer.fit import VAL_TABLE, fit_scorer, split_ids
from winnow.scorer.inference import (
    CAUSAL_BACKBONES,
    _check_vocab,
    _CudaScorer,
    _predict_batch,
    _scored_batches,
    _use_bf16,
    pad_batch,
    predict,
)
from winnow.scorer.inputs import (
    TOKEN_LISTS,
    Encoder,
    dict_encoder,
    input_encoder,
    read_token_lists,
    retokenize,
    roundtrip_check,
    store_encoder,
    tokenizer_info,
    write_token_lists,
)
from winnow.scorer.model import (
    POOLINGS,
    SCORER_FORMAT,
    LabelNorm,
    ScorerConfig,
    ScorerModel,
    build_scorer,
    load_scorer,
    val_metrics,
)
from winnow.scorer.score import score_ids
from winnow.stats import pearson, spearman

__all__ = [
    "CAUSAL_BACKBONES",
    "POOLINGS",
    "SCORER_FORMAT",
    "TOKEN_LISTS",
    "VAL_TABLE",
    "Encoder",
    "LabelNorm",
    "ScorerConfig",
    "ScorerModel",
    "_CudaScorer",
    "_check_vocab",
    "_predict_batch",
    "_scored_batches",
    "_use_bf16",
    "build_scorer",
    "dict_encoder",
    "fit_scorer",
    "input_encoder",
    "load_scorer",
    "pad_batch",
    "pearson",
    "predict",
    "read_token_lists",
    "retokenize",
    "roundtrip_check",
    "score_ids",
    "spearman",
    "split_ids",
    "store_encoder",
    "tokenizer_info",
    "val_metrics",
    "write_token_lists",
]

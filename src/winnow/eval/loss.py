"""Mean loss of a model on a set of examples (the target loss J of PDS, the reference loss of MATES).

J = mean over examples of ℓ(x), with ℓ(x) the token-mean next-token cross-entropy (nats) over the
example's loss positions: the same per-example loss the PMP solver differentiates.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from winnow.progress import Progress
from winnow.train.batches import ExampleStore, collate


@torch.no_grad()
def per_example_losses(
    model: torch.nn.Module, store: ExampleStore, ids, seq_len: int, pad_id: int, batch_size: int, device
) -> np.ndarray:
    """``(n,)`` float64 token-mean CE (nats) of each example, in ``ids`` order."""
    model.eval()
    out = np.zeros(len(ids), dtype=np.float64)
    prog = Progress("loss", total=len(ids), unit="examples")
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(store, chunk, seq_len, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        ce = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), batch["input_ids"][:, 1:].reshape(-1), reduction="none"
        ).view(len(chunk), -1)
        mask = batch["loss_mask"][:, 1:].float()
        out[start : start + len(chunk)] = ((ce * mask).sum(1) / mask.sum(1).clamp(min=1)).double().cpu().numpy()
        prog.update(len(chunk))
    prog.done()
    return out

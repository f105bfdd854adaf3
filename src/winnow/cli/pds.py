"""``winnow pds solve``: the PMP solver on the proxy sample → gamma table + solver report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from winnow.cli._common import add_args, add_runtime, add_store, resolve_device, sidecars
from winnow.io.atomic import write_json
from winnow.params import add_params

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("solve", help="PMP solver: trajectory, costates, per-example contributions")
    add_store(p)
    add_args(
        p,
        """
        --init      model.safetensors of θ0 (an HF model folder)
        --pool      ids the trajectory batches are drawn from
        --proxy     ids to score (gamma)
        --target    ids whose mean loss is J
        --work-dir  trajectory files (θ every k steps, batches)
        --gamma     parquet written: grad_gamma of every proxy id (and gamma, variant paper): the scorer's labels
        --report    JSON written: the solver's settings, objective and timings
        """,
    )
    add_params(p, "pds solve")
    add_runtime(p)
    p.set_defaults(func=solve)


def solve(args) -> None:
    import pyarrow as pa
    import torch

    from winnow.io.tables import IDS, read_table, write_table
    from winnow.methods.pds import PMPConfig
    from winnow.methods.pds import solve as run
    from winnow.models.build import load_pretrained
    from winnow.train.batches import open_store

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    store, manifest = open_store(args.examples, args.manifest)
    cfg = PMPConfig(**args.params.solver)
    pool = np.sort(read_table(args.pool, IDS)["example_id"].to_numpy())
    proxy = read_table(args.proxy, IDS)["example_id"].to_numpy()
    target = read_table(args.target, IDS)["example_id"].to_numpy()
    # The released solver reads T·B corpus batches in order: a seeded draw from the pool, fixed here.
    n_traj = cfg.steps * cfg.batch_size
    if cfg.variant == "released" and n_traj > pool.size:
        raise ValueError(f"the solver needs {n_traj} trajectory ids (steps × batch_size), the pool has {pool.size}")
    trajectory = pool[np.random.default_rng(cfg.seed).permutation(pool.size)[: min(n_traj, pool.size)]]
    model = load_pretrained(Path(args.init).parent, trust_remote_code=args.trust_remote_code).to(device)
    if cfg.variant == "paper":
        trajectory = None  # the paper's solver trains full-batch on the γ-weighted proxy set
    grad_gamma, report = run(
        model,
        store,
        trajectory,
        proxy,
        target,
        cfg,
        args.work_dir,
        seq_len=manifest["seq_len"],
        pad_id=manifest["pad_token_id"],
    )
    cols = {"example_id": proxy.astype(np.int64), "grad_gamma": np.asarray(grad_gamma, dtype=np.float64)}
    if "gamma" in report:  # paper variant: the projected-simplex weights after the last epoch
        cols["gamma"] = np.asarray(report["gamma"], dtype=np.float64)
    schema = pa.schema([(k, pa.int64() if k == "example_id" else pa.float64()) for k in cols])
    write_table(args.gamma, pa.table(cols, schema=schema), schema)
    write_json(args.report, report)
    log.info("gamma: %d proxy examples; J %s → %s", proxy.size, report.get("J", [None])[0], report.get("J", [None])[-1])
    sidecars(
        args,
        "pds solve",
        [args.gamma, args.report],
        [args.examples, args.init, args.pool, args.proxy, args.target],
        seed=cfg.seed,
    )

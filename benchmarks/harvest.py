"""Harvest speed vs a bare forward pass, on the embedded model and default corpus.

Prints one JSON line. The three jobs run interleaved, chunk by chunk, in one process, so that
the noisy 2-core machine slows them alike and only the ratios matter:
- bare_forward_tok_s: the full model, no hooks, logits computed (what any harvester starts from);
- harvest_all_tok_s:  `mlp_in` + `mlp_out` at all layers, written as fp16 shards;
- harvest_l12_tok_s:  only `resid_post.12` (the forward stops after block 12).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from circuitdb.config import CorpusConfig, HarvestConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.harvest import harvest
from circuitdb.models import load_model, resolve_hooks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per job")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved chunks per job")
    args = parser.parse_args()

    lm = load_model("embedded")
    corpus = tokenize_corpus(lm, CorpusConfig(context=args.context, max_tokens=args.tokens, eval_fraction=0.0))
    blocks = corpus.blocks
    cfg = HarvestConfig(batch_size=args.batch_size)
    all_hooks = resolve_hooks(lm, [f"{kind}.{layer}" for kind in ("mlp_in", "mlp_out") for layer in range(lm.n_layers)])
    l12_hooks = resolve_hooks(lm, ["resid_post.12"])

    def bare(chunk: torch.Tensor, _: Path) -> None:
        with torch.inference_mode():
            for start in range(0, chunk.shape[0], args.batch_size):
                lm.model(input_ids=chunk[start : start + args.batch_size].long().to(lm.device), use_cache=False)

    jobs = {
        "bare_forward": bare,
        "harvest_all": lambda chunk, out: harvest(lm, chunk, all_hooks, out, cfg, progress=False),
        "harvest_l12": lambda chunk, out: harvest(lm, chunk, l12_hooks, out, cfg, progress=False),
    }
    seconds = dict.fromkeys(jobs, 0.0)
    bare(blocks[: args.batch_size], Path())  # warm-up: first calls allocate and pick kernels
    chunks = torch.tensor_split(blocks, args.rounds)
    with tempfile.TemporaryDirectory() as scratch:
        for round_index, chunk in enumerate(chunks):
            for name, job in jobs.items():
                start = time.perf_counter()
                job(chunk, Path(scratch) / f"{name}-{round_index}")
                seconds[name] += time.perf_counter() - start
    n_tokens = blocks.numel()
    speed = {name: n_tokens / s for name, s in seconds.items()}
    print(
        json.dumps(
            {
                "n_tokens": n_tokens,
                "context": args.context,
                "bare_forward_tok_s": round(speed["bare_forward"], 1),
                "harvest_all_tok_s": round(speed["harvest_all"], 1),
                "harvest_l12_tok_s": round(speed["harvest_l12"], 1),
                "ratio_all": round(speed["harvest_all"] / speed["bare_forward"], 3),
                "ratio_l12": round(speed["harvest_l12"] / speed["bare_forward"], 3),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Dictionary training speed and quality on the embedded model, layer 12, ~100k train tokens.

Prints one JSON line per job. Each job runs in its own process (so its peak RSS is its own):
harvest the hooks it needs (train + held-out split) into a scratch store, train, evaluate.
- sae:        TopK SAE on resid_post.12, 4096 latents, k=32;
- transcoder: TopK transcoder mlp_in.12 → mlp_out.12, 4096 latents, k=32.
end_to_end_tok_s = train tokens / (harvest + training seconds); train_only_tok_s counts every
token the optimizer saw (all epochs) over the training seconds alone. The model is released
after the harvest and loaded again (from the plain cache, ~0.2 s) for the ΔCE evaluation, as the
pipeline's separate activation and dictionary steps do.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time

from circuitdb.config import CorpusConfig, DictionaryConfig, HarvestConfig, TrainConfig
from circuitdb.corpus import tokenize_corpus
from circuitdb.dictionaries import ActivationSource, train_dictionary
from circuitdb.dictionaries.metrics import dictionary_splice, reconstruction_metrics, spliced_metrics
from circuitdb.harvest import harvest_layers
from circuitdb.models import load_model
from circuitdb.store import Store

JOBS = {"sae": ("sae", "resid_post", "resid_post"), "transcoder": ("plt", "mlp_in", "mlp_out")}


def run_job(job: str, args: argparse.Namespace) -> dict:
    kind, hook_in, hook_out = JOBS[job]
    lm = load_model("embedded")
    eval_fraction = 0.1
    max_tokens = int(args.train_tokens / (1 - eval_fraction))
    corpus = tokenize_corpus(lm, CorpusConfig(context=args.context, max_tokens=max_tokens, eval_fraction=eval_fraction))
    train_tokens = corpus.split("train").numel()
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(scratch)
        started = time.perf_counter()
        harvest_layers(
            store, lm, corpus, [args.layer], HarvestConfig(hooks=sorted({hook_in, hook_out})), progress=False
        )
        harvest_seconds = time.perf_counter() - started
        del lm  # training needs no model: its weights leave memory until the ΔCE evaluation
        gc.collect()
        input_hook, target_hook = f"{hook_in}.{args.layer}", f"{hook_out}.{args.layer}"
        source = ActivationSource(store.activation_run(f"{corpus.name}-train"), [input_hook], [target_hook])
        cfg = DictionaryConfig(kind=kind, n_latents=args.n_latents, k=args.k, skip=kind == "plt" and not args.no_skip)
        tcfg = TrainConfig(batch_size=args.batch_size, lr=args.lr, epochs=args.epochs)
        started = time.perf_counter()
        result = train_dictionary(cfg, source, tcfg, progress=False)
        train_seconds = time.perf_counter() - started
        held_out = ActivationSource(store.activation_run(f"{corpus.name}-eval"), [input_hook], [target_hook])
        inputs, targets = held_out.sequences()
        metrics = reconstruction_metrics(result.coder, inputs[:, :, 0], targets[:, :, 0])
        lm = load_model("embedded")
        splice = dictionary_splice(lm, result.coder, input_hook)
        delta_ce, _ = spliced_metrics(lm, splice, corpus.split("eval")[: args.ce_blocks])
    return {
        "job": job,
        "end_to_end_tok_s": round(train_tokens / (harvest_seconds + train_seconds), 1),
        "train_only_tok_s": round(result.tokens / train_seconds, 1),
        "fvu": round(metrics["fvu"], 4),
        "fvu_excl_pos0": round(metrics["fvu_excl_pos0"], 4),
        "l0": round(metrics["l0"], 2),
        "dead_frac": round(metrics["dead_frac"], 4),
        "delta_ce": round(delta_ce, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "train_tokens": train_tokens,
        "harvest_seconds": round(harvest_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "job"} | {"train": dataclasses.asdict(tcfg)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job", choices=sorted(JOBS), help="run one job in this process (default: both, one process each)"
    )
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--n-latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--no-skip", action="store_true", help="transcoder without the linear skip")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--ce-blocks", type=int, default=8, help="held-out blocks for delta_ce")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args)), flush=True)
        return
    passthrough = [a for a in sys.argv[1:]]
    for job in JOBS:
        subprocess.run([sys.executable, __file__, "--job", job, *passthrough], check=True)


if __name__ == "__main__":
    main()

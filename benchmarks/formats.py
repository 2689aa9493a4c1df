"""Our readers against the owners' own code: SAELens and sparsify build, save and encode dictionaries in a
side environment; circuitdb reads the saved folders through its format registry and encodes the same
activations. Prints one JSON line: the largest absolute difference in latents and reconstructions per case.

    python benchmarks/formats.py [--side-venv DIR] [--tokens 512]

The side environment (created on first use: torch==2.13.0, sae-lens, eai-sparsify from the package
registry) never meets this one: only files cross (weights, activations, the owners' latents).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import venv
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from circuitdb.dictionaries.formats import read_dictionaries  # noqa: E402

SIDE_PACKAGES = ["torch==2.13.0", "sae-lens", "eai-sparsify"]
D, LAYER = 64, 3

# Runs in the side environment: argv[1] = output folder holding x.npy. Each case saves a folder with the
# library's own save code, and <case>.latents.npy / <case>.recon.npy from the library's own encode/decode.
OWNERS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sparsify import SparseCoder, SparseCoderConfig
    import importlib.metadata as md
    import json

    out = Path(sys.argv[1])
    x = torch.from_numpy(np.load(out / "x.npy"))
    torch.manual_seed(0)
    D, LAYER = x.shape[1], int(sys.argv[2])

    def randomize(module):
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1))

    def save(case, latents, recon):
        np.save(out / f"{case}.latents.npy", latents.detach().numpy())
        np.save(out / f"{case}.recon.npy", recon.detach().numpy())

    meta = lambda: SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_post")
    for case, sae in (
        ("saelens_standard", StandardSAE(StandardSAEConfig(d_in=D, d_sae=256, metadata=meta()))),
        ("saelens_topk", TopKSAE(TopKSAEConfig(d_in=D, d_sae=256, k=12, metadata=meta()))),
        ("saelens_jumprelu", JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=256, metadata=meta()))),
    ):
        randomize(sae)
        if case == "saelens_jumprelu":
            with torch.no_grad():
                sae.threshold.copy_(torch.rand(256) * 0.5)
        sae.eval()
        sae.save_model(out / case)
        with torch.no_grad():
            latents = sae.encode(x)
            save(case, latents, sae.decode(latents))

    for case, cfg, hook in (
        ("sparsify_sae", SparseCoderConfig(num_latents=256, k=12), f"layers.{LAYER}"),
        ("sparsify_transcoder", SparseCoderConfig(num_latents=256, k=12, transcode=True, skip_connection=True),
         f"layers.{LAYER}.mlp"),
    ):
        coder = SparseCoder(D, cfg)
        randomize(coder)
        coder.save_to_disk(out / case / hook)
        with torch.no_grad():
            encoded = coder.encode(x)
            latents = torch.zeros(len(x), 256).scatter_(1, encoded.top_indices, encoded.top_acts)
            recon = coder.decode(encoded.top_acts, encoded.top_indices)
            if coder.W_skip is not None:
                recon = recon + x @ coder.W_skip.mT
        save(case, latents, recon)
    print(json.dumps({"sae_lens": md.version("sae-lens"), "eai_sparsify": md.version("eai-sparsify")}))
    """
)


def side_python(folder: Path) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        venv.create(folder, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "-q", SIDE_PACKAGES[0]], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *SIDE_PACKAGES[1:]], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side-venv", type=Path, default=Path(tempfile.gettempdir()) / "circuitdb-format-owners")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="formats-"))
    x = (torch.randn(args.tokens, D, generator=torch.Generator().manual_seed(1)) + 0.3).numpy()
    np.save(out / "x.npy", x)
    script = out / "owners.py"
    script.write_text(OWNERS)
    done = subprocess.run(
        [side_python(args.side_venv), script, out, str(LAYER)], check=True, capture_output=True, text=True
    )
    versions = json.loads(done.stdout.strip().splitlines()[-1])  # the libraries' versions, as the side printed
    result: dict[str, object] = {"tokens": args.tokens, **versions}
    for case in ("saelens_standard", "saelens_topk", "saelens_jumprelu", "sparsify_sae", "sparsify_transcoder"):
        dictionaries = read_dictionaries(out / case)
        coder = dictionaries.coders[LAYER]
        with torch.no_grad():
            recon, latents = coder(torch.from_numpy(x))
        theirs = np.load(out / f"{case}.latents.npy")
        result[f"{case}_format"] = dictionaries.format
        result[f"{case}_active"] = int((theirs > 0).sum())
        result[f"{case}_latents_max_abs_diff"] = float(np.abs(latents.numpy() - theirs).max())
        result[f"{case}_recon_max_abs_diff"] = float(np.abs(recon.numpy() - np.load(out / f"{case}.recon.npy")).max())
    print(json.dumps(result))


if __name__ == "__main__":
    main()

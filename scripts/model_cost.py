"""Parameters and multiply-accumulates (MACs) of one network evaluation per image, for exported teachers and
generators. A sampler's cost per image is this times its NFE.

    python scripts/model_cost.py --models runs/a/exports/denoiser_ema0.999.pt,runs/b/exports/generator_ema0.99.pt

MACs: convolutions, linear layers and attention products (torch.utils.flop_counter counts these; norms and
activations are left out, as in published MAC counts), one image at the model's input size, on the meta device.
Prints a markdown table; --out also writes it as JSON.
"""

import json
import os

import torch
from torch.utils.flop_counter import FlopCounterMode

from pagoda import checkpoint, script_util
from pagoda.model_io import build_network

F, _c = script_util.Flag, script_util
GROUPS = {"cost": dict(
    models=F((), "comma list of exports (a .pt with its .json sidecar: teachers, generators); required"),
    out=F("", "also write the table as JSON to this file; '': print only"),
)}


def model_cost(path):
    """{model, kind, architecture, parameters, macs_per_forward} of the export at `path`, built from its sidecar
    alone (no weights are read)."""
    side = checkpoint.read_sidecar(path) if os.path.exists(path) else None
    if side is None:
        raise FileNotFoundError(f"{path}: no export with a sidecar there ({checkpoint.sidecar_path(path)}); pass "
                                "a file from <run_dir>/exports/")
    with torch.device("meta"):
        net = build_network(side)
        cfg = net.config
        x = torch.empty(1, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        y = torch.zeros(1, dtype=torch.long) if cfg["num_classes"] else None
        with FlopCounterMode(display=False) as counter:
            net(x, torch.ones(1), y)
    arch = "dimr" if "dimr" in side else "unet"
    return {"model": path, "kind": side["kind"], "architecture": arch,
            "parameters": sum(p.numel() for p in net.parameters()), "macs_per_forward": counter.get_total_flops() // 2}


def markdown(costs):
    lines = ["| model | kind | network | parameters | MACs per forward (M) |", "|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['kind']} | {c['architecture']} | {c['parameters']:,} | "
              f"{c['macs_per_forward'] / 1e6:.1f} |" for c in costs]
    return "\n".join(lines)


def main(argv=None):
    _, args = script_util.parse_cli(GROUPS, argv, description=__doc__, required={"models": "the exports to count"})
    costs = [model_cost(path) for path in args.models]
    print(markdown(costs))
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(costs, f, indent=1)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()

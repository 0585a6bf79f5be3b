"""How hard do EKD's distillation terms pull on the shared weights? (issue 36's look for a cause in our code)

The ablation's `distil / CE` compares loss *values*. Near its minimum a KL term is small in value (it is about
quadratic in the gap between the two distributions) while its gradient is only linear in that gap, so the value
ratio understates the pull. This script measures, at the last checkpoint of each given DDNN run (train mode, one
batch of its training split, the run's normalisation), the gradient norms on the shared weights (every conv and
the classifier; BN excluded, which `bn: switchable` keeps per path) of the terms `losses.ekd` computes (the
method's own forward, every term at weight 1 and the run's T): the full net's CE, and the sub-nets' CE, KL to the
detached full net and attention terms, each summed over the sub-nets; and the
cosine between each distillation gradient and the full net's CE gradient (near 0: the term spends the steps on
making the paths agree, not on the full net's task).

    python benchmarks/ekd_gradients.py runs/evidence-ddnn/no-distil/ekd-seed2 runs/evidence-ddnn/ekd/ekd-seed2
"""

from __future__ import annotations

import argparse
import sys

import torch


def shared_gradients(run: str, batch: int = 256, seed: int = 0) -> dict[str, float]:
    from kdforge.config import config_from_dict
    from kdforge.data import load_dataset, normalize
    from kdforge.engine.checkpoint import load_model
    from kdforge.features import FeatureTaps
    from kdforge.methods.base import StepOutputs
    from kdforge.methods.ekd import EKD
    from kdforge.methods.losses import parse_loss_spec

    net, ckpt = load_model(run, "last")
    cfg = config_from_dict(ckpt["config"])
    _, _, params = parse_loss_spec("ekd", cfg.losses["ekd"])
    # every term at weight 1 (also those the run switched off), at the run's T and attention map
    ekd = EKD(T=params.get("T", 1.0), attention=params.get("attention", "at"), subnets=params.get("subnets"))
    ekd.bind(net, None)
    data = load_dataset(cfg.data.name, cfg.data.root, "train", **(cfg.data.options or {}))
    pick = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))[:batch]
    x = normalize(data.images[pick], data.mean, data.std)
    net.train()
    with FeatureTaps(net, ekd.student_layers) as taps:
        logits, features = taps(x)
    parts = ekd(StepOutputs(images=x, labels=data.labels[pick].long(), student_logits=logits,
                            student_features=features, student=net))
    terms = {"full CE": parts["full_ce"]}
    for name, kind in (("sub CE", "ce"), ("sub KL", "kl"), ("sub AT", "at")):  # summed over the sub-nets
        terms[name] = sum(v for k, v in parts.items() if k.endswith(f"/{kind}"))
    shared = [p for p in net.parameters() if p.ndim > 1]  # convs and the classifier (shared by the paths)

    def grad(loss: torch.Tensor) -> torch.Tensor:
        g = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
        return torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten() for gi, p in zip(g, shared)])

    grads = {name: grad(loss) for name, loss in terms.items()}
    out = {f"|g {name}|": float(g.norm()) for name, g in grads.items()}
    out.update({f"{name} value": float(loss.detach()) for name, loss in terms.items()})
    full = grads["full CE"]
    for name in ("sub CE", "sub KL", "sub AT"):
        g = grads[name]
        out[f"cos({name}, full CE)"] = float(g @ full / (g.norm() * full.norm() + 1e-12))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="DDNN run folders (their checkpoints/last.pt)")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args(argv)
    rows = {run: shared_gradients(run, args.batch) for run in args.runs}
    keys = list(next(iter(rows.values())))
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for run, values in rows.items():
        print(f"| {run} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

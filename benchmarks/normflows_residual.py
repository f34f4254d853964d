"""normflows' ``Residual`` flow against our ResFlow inside normflows (``plugins.normflows``).

    .venv/bin/python benchmarks/normflows_residual.py [--smoke]

Both models are ``nf.NormalizingFlow`` s of ``ActNorm -> residual block`` x ``blocks`` with the
same networks (2-128-128-2, LipSwish, coeff 0.97) and estimator (roulette, Geometric(0.5), 2
exact terms, one probe, Neumann gradient, memory-efficient): normflows' ``Residual(net,
reduce_memory=True)`` and our ``plugins.normflows.ResFlow(2, [128, 128],
activation="lipswish")``. Three measurements:

1. **Weighted objective** ``sum_i w_i (-log q(x_i))`` with per-sample weights (log-normal,
   fixed seed): the gradient averaged over ``--draws`` independent draws of the stochastic
   log-det against the exact gradient (autograd through the exact 2-D log-det of the same
   weights). Relative error ``|mean - exact| / |exact|``, next to its Monte Carlo standard
   error. normflows' memory-efficient backward multiplies every parameter's log-det gradient
   by the first sample's upstream gradient, so its mean converges to the wrong vector; with
   equal weights (the ``forward_kld`` mean) it is right, which the table shows too.
2. **Time**: a training step (``forward_kld``, backward, Adam; batch 500) and 10,000 samples
   (``model.sample``, after the training below), medians of CPU time over interleaved rounds
   in one process and one thread; round-trip error of each library's sampled points.
3. **Lipschitz bound after training** with normflows' own loop (Adam 1e-3, ``forward_kld``,
   ``--train-steps`` steps on the checkerboard) that never calls
   ``nf.utils.update_lipschitz``: the largest Lipschitz bound of a residual network, the
   product of the exact spectral norms (``torch.linalg.matrix_norm(ord=2)``) of the weights
   its forward pass uses (ours: the same product, and :func:`~implicit_transforms.certify`).
   Above 1 the block is not guaranteed invertible.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import checkerboard, interleaved


def build(which: str, blocks: int, hidden: list[int], actnorm: bool = True) -> Any:
    """A normflows ``NormalizingFlow`` with normflows' residual blocks or ours."""
    import normflows as nf
    from implicit_transforms.plugins.normflows import ResFlow

    flows: list[Any] = []
    for _ in range(blocks):
        if actnorm:
            flows.append(nf.flows.ActNorm(2))
        if which == "normflows":
            # init_zeros=False: random last layers like ours (zeros: a trivial first inverse)
            net = nf.nets.LipschitzMLP([2, *hidden, 2], lipschitz_const=0.97, init_zeros=False)
            flows.append(nf.flows.Residual(net, reduce_memory=True))
        else:
            flows.append(ResFlow(2, hidden, activation="lipswish", coeff=0.97))
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)


def _exact_twin(model: Any, which: str) -> Any:
    """The same weights with the exact 2-D log-det (autograd gives the exact gradient)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if which == "normflows" and type(m).__name__ == "iResBlock":
            m.brute_force = True
        if which == "ours" and hasattr(m, "logdet_train"):
            from implicit_transforms.logdet import ExactLogDet

            m.logdet_train = ExactLogDet()
    return twin


def _grad(model: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad and p.dim() > 0]
    loss = -(w * model.log_prob(x)).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                      for g, p in zip(grads, params, strict=True)])  # fmt: skip


def weighted_gradients(blocks: int, hidden: list[int], draws: int, batch: int) -> list[str]:
    """Rows of section 1."""
    rows = []
    torch.manual_seed(0)
    x = checkerboard(batch, seed=3).double() / 2.31  # about unit scale, as standardising does
    weights = {
        "log-normal weights": torch.exp(torch.randn(batch, generator=torch.Generator().manual_seed(4))),
        "equal weights": torch.ones(batch),
    }  # fmt: skip
    for which in ("normflows", "ours"):
        torch.manual_seed(1)
        model = build(which, blocks, hidden, actnorm=False).double().train()
        # Only normflows' geom_p and lamb (the series-length distribution) carry no gradient
        # from the log-det; they are excluded by dim() > 0 above.
        exact_model = _exact_twin(model, which)
        for label, w in weights.items():
            w = w / w.mean()
            exact = _grad(exact_model, x, w)
            samples = torch.stack([_grad(model, x, w) for _ in range(draws)])
            mean = samples.mean(0)
            err = float((mean - exact).norm() / exact.norm())
            se = float(samples.std(0).norm() / math.sqrt(draws) / exact.norm())
            rows.append(f"| {which} | {label} (w_0 = {float(w[0]):.2f}) | {err:.3f} | {se:.3f} |")
    return rows


def _round_trip(model: Any, x: torch.Tensor) -> float:
    with torch.no_grad():
        z = model.inverse(x)
        return float((model.forward(z) - x).abs().max())


def _bound(model: Any, which: str) -> tuple[float, float | None]:
    """(largest product of exact spectral norms of the weights used, our certificate)."""
    from implicit_transforms import certify
    from implicit_transforms.lipschitz import LipschitzNet

    products, certs = [], []
    with torch.no_grad():
        if which == "normflows":
            for m in model.modules():
                if type(m).__name__ == "LipschitzMLP":
                    norms = [torch.linalg.matrix_norm(layer.compute_weight(update=False), ord=2)
                             for layer in m.modules() if type(layer).__name__ == "InducedNormLinear"]  # fmt: skip
                    products.append(float(torch.stack(norms).prod()))
            return max(products), None
        for m in model.modules():
            if isinstance(m, LipschitzNet):
                lin = [layer for layer in m.modules() if hasattr(layer, "normalized_weight")]
                if lin:
                    norms = [torch.linalg.matrix_norm(layer.normalized_weight(), ord=2)
                             for layer in lin]  # fmt: skip
                    products.append(float(torch.stack(norms).prod()))
                certs.append(certify(m).bound)
    return (max(products) if products else float("nan")), max(certs)


def timing_and_bound(
    blocks: int, hidden: list[int], repeats: int, train_steps: int, n_samples: int
) -> list[str]:
    """Rows of sections 2 and 3."""
    torch.manual_seed(0)
    data = checkerboard(20000) / 2.31
    models = {w: build(w, blocks, hidden) for w in ("ours", "normflows")}
    opts = {w: torch.optim.Adam(m.parameters(), lr=1e-3) for w, m in models.items()}
    gen = torch.Generator().manual_seed(1)

    def step(which: str) -> None:
        x = data[torch.randint(0, data.shape[0], (500,), generator=gen)]
        opts[which].zero_grad()
        loss = models[which].forward_kld(x)
        if torch.isfinite(loss):  # normflows' loop skips non-finite losses
            loss.backward()
            opts[which].step()

    t = interleaved({w: (lambda w=w: step(w)) for w in models}, repeats)
    rows = [f"| training step, batch 500 | {1e3 * t['ours']:.1f} ms | {1e3 * t['normflows']:.1f} "
            f"ms | {t['ours'] / t['normflows']:.2f} |"]  # fmt: skip
    for _ in range(train_steps):  # normflows' loop: no nf.utils.update_lipschitz anywhere
        for w in models:
            step(w)
    for m in models.values():
        m.eval()

    def sample(which: str) -> None:
        with torch.no_grad():
            models[which].sample(n_samples)

    t = interleaved({w: (lambda w=w: sample(w)) for w in models}, max(2, repeats // 3), 1)
    with torch.no_grad():
        pts = {w: m.sample(n_samples)[0] for w, m in models.items()}
    errs = {w: _round_trip(models[w], pts[w]) for w in models}
    rows.append(f"| {n_samples:,} samples (trained {train_steps} steps) | {t['ours']:.2f} s | "
                f"{t['normflows']:.2f} s | {t['ours'] / t['normflows']:.2f} |")  # fmt: skip
    rows.append(f"| max round-trip error of those samples | {errs['ours']:.1e} | "
                f"{errs['normflows']:.1e} | |")  # fmt: skip
    ours_product, ours_cert = _bound(models["ours"], "ours")
    theirs_product, _ = _bound(models["normflows"], "normflows")
    rows.append(f"| largest Lipschitz bound of a residual network after training (exact "
                f"spectral norms; ours also certified: {ours_cert:.4f}) | {ours_product:.4f} | "
                f"{theirs_product:.4f} | |")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny settings (seconds; for the tests)")
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--draws", type=int, default=400, help="log-det draws per gradient mean")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--train-steps", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    hidden, batch, n_samples = [128, 128], 256, 10_000
    if args.smoke:
        args.blocks, args.draws, args.repeats, args.train_steps = 2, 3, 2, 3
        hidden, batch, n_samples = [16], 32, 200
    print(f"torch {torch.__version__}, one thread, CPU time; {args.blocks} blocks, {hidden}")
    print("\n| library | objective | relative error of the mean gradient | Monte Carlo s.e. |")
    print("|---|---|---|---|")
    for row in weighted_gradients(args.blocks, hidden, args.draws, batch):
        print(row, flush=True)
    print("\n| measurement | ours | normflows | ratio |\n|---|---|---|---|")
    for row in timing_and_bound(args.blocks, hidden, args.repeats, args.train_steps, n_samples):
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

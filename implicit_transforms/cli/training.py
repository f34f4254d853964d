"""The training loop: Adam with warm-up, clipping, optional EMA, validation, exact resume.

Model selection uses the **validation** split only; the test split is touched once, by the
final report. Every random choice comes from a seed stored in the config or from a generator
whose state is in the checkpoint, so ``--resume`` continues bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from implicit_transforms.cli.evaluation import SolveLog, log_prob, refine_spectral_norms
from implicit_transforms.cli.rundir import RunDir
from implicit_transforms.cli.session import Session
from implicit_transforms.errors import ConvergenceError

__all__ = ["EMA", "TrainingStopped", "batch_indices", "lr_factor", "train", "validate"]

CHECKPOINT_FORMAT = 1


class TrainingStopped(RuntimeError):
    """Training hit a non-finite loss or gradient, or a solver failure.

    Attributes:
        step: the step that failed (1-based).
        last_good_step: the step of the checkpoint that was kept.
    """

    def __init__(self, message: str, step: int, last_good_step: int) -> None:
        super().__init__(message)
        self.step, self.last_good_step = step, last_good_step

    @classmethod
    def at(cls, step: int, reason: str, last_good_step: int, checkpoint: Path) -> TrainingStopped:
        """The error for a failure at ``step``, its message naming the kept checkpoint."""
        return cls(
            f"training stopped at step {step}: {reason}; the last good checkpoint (step "
            f"{last_good_step}) is kept in {checkpoint} (try a smaller --lr, --clip-grad or "
            "--coeff, then --resume)",
            step,
            last_good_step,
        )


class EMA:
    r"""Exponential moving average of the parameters, ``s <- d s + (1 - d) p``.

    The effective decay ``min(d, (1 + t) / (10 + t))`` at update ``t`` lets the average follow
    the fast early changes.

    Args:
        model: the module whose parameters are averaged.
        decay: ``d`` in ``[0, 1)``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step with the current parameters."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for n, p in model.named_parameters():
            self.shadow[n].mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Use the averaged parameters inside the body; the trained ones are restored after."""
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(saved[n])

    def state_dict(self) -> dict[str, Any]:
        """Decay, update count and the averages."""
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.decay, self.updates = state["decay"], state["updates"]
        for n, t in state["shadow"].items():
            self.shadow[n].copy_(t)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak learning rate before optimisation step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` for ``step < warmup``; then 1 (``"constant"``) or a
    cosine decay from 1 to 0 at ``total`` (``"cosine"``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Rows of training batch ``step`` (0-based): epochs of seeded permutations, last partial
    batch dropped. A function of its arguments only, so a resumed run sees the same batches."""
    b = min(batch_size, n)
    per_epoch = n // b
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)[pos * b : (pos + 1) * b]


def validate(session: Session, ema: EMA | None) -> float:
    """Mean validation NLL (nats per sample) with the weights used for model selection."""
    with ema.applied(session.flow) if ema is not None else nullcontext():
        refine_spectral_norms(session.flow)
        lp = log_prob(
            session.flow, session.to_model(session.splits.validation), session.cfg.eval_batch_size
        )
    return float(-lp.double().mean())


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _weights(session: Session, ema: EMA | None) -> dict[str, Tensor]:
    with ema.applied(session.flow) if ema is not None else nullcontext():
        return {k: v.detach().clone() for k, v in session.flow.state_dict().items()}


@dataclass
class _Progress:
    total: int
    initial: int
    enabled: bool
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        self.bar: Any = None
        if self.enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                self.bar = None
            else:
                self.bar = tqdm(
                    total=self.total, initial=self.initial, unit="step", file=sys.stderr
                )

    def update(self, step: int, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(info, refresh=False)
            self.bar.update(1)
        elif self.enabled and (step % 100 == 0 or step == self.total):
            self.log(f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in info.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    session: Session,
    run: RunDir,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``session.flow`` for ``session.cfg.steps`` steps, writing into ``run``.

    Writes ``metrics.jsonl`` (a line per step, a line per validation), ``checkpoint.pt`` after
    every validation and ``best.pt`` whenever the validation NLL improves. With ``resume`` the
    state of ``checkpoint.pt`` is restored first and the metrics after it are discarded.

    Returns:
        ``{"best_step", "best_val_nll", "steps", "wall_time_s"}``.

    Raises:
        TrainingStopped: on a non-finite loss or gradient or a solver failure; the last good
            checkpoint is kept.
    """
    cfg, flow = session.cfg, session.flow
    train_x = session.to_model(session.splits.train)
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=cfg.warmup, total=cfg.steps, schedule=cfg.schedule)
    )
    ema = EMA(flow, cfg.ema) if cfg.ema > 0 else None
    state: dict[str, Any] = {"step": 0, "best_step": None, "best_val_nll": math.inf, "wall": 0.0}

    def checkpoint() -> None:
        _save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.to_json(),
                "model": flow.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "estimator_rng": session.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                **state,
            },
            run.checkpoint,
        )

    def stop(step: int, reason: str) -> TrainingStopped:
        return TrainingStopped.at(step + 1, reason, state["step"], run.checkpoint)

    if resume:
        ckpt = torch.load(run.checkpoint, map_location=session.device, weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{run.checkpoint}: unknown checkpoint format {ckpt.get('format')!r}")
        flow.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt["ema"] is not None:
            ema.load_state_dict(ckpt["ema"])
        session.generator.set_state(ckpt["estimator_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        state.update({k: ckpt[k] for k in state})
        _truncate_metrics(run.metrics, state["step"])
        log(f"resuming {run.root} from step {state['step']}")
    else:
        run.metrics.write_text("")
        checkpoint()  # step 0: a last good state exists before the first step

    if state["step"] >= cfg.steps:
        return _summary(state)
    bar = _Progress(cfg.steps, state["step"], progress, log)
    metrics = run.metrics.open("a")
    t_start = time.perf_counter() - state["wall"]
    val_bits = None
    try:
        for step in range(state["step"], cfg.steps):
            idx = batch_indices(step, train_x.shape[0], cfg.batch_size, cfg.seed)
            flow.train()
            solves = SolveLog()
            try:
                with solves.watch(flow):
                    loss = -flow.log_prob(train_x[idx.to(train_x.device)]).mean()
            except (ConvergenceError, ValueError) as err:
                # A diverged step shows up here as a solver failure or as NaN/Inf reaching a
                # block's input check: stop and keep the last good checkpoint either way.
                raise stop(step, _first_line(err)) from err
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise stop(step, f"the loss is {loss_value}")
            opt.zero_grad(set_to_none=True)
            try:
                loss.backward()
            except (ConvergenceError, ValueError) as err:
                raise stop(step, f"in the backward pass, {_first_line(err)}") from err
            max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(flow.parameters(), max_norm))
            if not math.isfinite(grad_norm):
                raise stop(step, f"the gradient norm is {grad_norm}")
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(flow)
            done = step + 1
            row = {
                "step": done,
                "loss": loss_value,
                "bits": loss_value / math.log(2),
                "lr": lr,
                "grad_norm": grad_norm,
                "solver_iters": solves.mean,
            }
            metrics.write(json.dumps(row) + "\n")
            if done % cfg.eval_every == 0 or done == cfg.steps:
                val_nll = validate(session, ema)
                val_bits = val_nll / math.log(2)
                improved = val_nll < state["best_val_nll"]
                if improved:
                    state["best_step"], state["best_val_nll"] = done, val_nll
                    _save(
                        {"step": done, "val_nll": val_nll, "model": _weights(session, ema)},
                        run.best,
                    )
                metrics.write(
                    json.dumps(
                        {"step": done, "val_nll": val_nll, "val_bits": val_bits, "best": improved}
                    )
                    + "\n"
                )
                metrics.flush()
                state["step"], state["wall"] = done, time.perf_counter() - t_start
                checkpoint()
            info = {"loss": f"{loss_value:.3f}", "bits": f"{row['bits']:.3f}"}
            if solves.mean is not None:
                info["iters"] = f"{solves.mean:.1f}"
            if val_bits is not None:
                info["val_bits"] = f"{val_bits:.3f}"
            bar.update(done, info)
    finally:
        metrics.close()
        bar.close()
    return _summary(state)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _summary(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "best_step": state["best_step"],
        "best_val_nll": state["best_val_nll"],
        "steps": state["step"],
        "wall_time_s": state["wall"],
    }


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))

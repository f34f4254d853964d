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

from implicit_transforms.cli.distributed import check_in_sync
from implicit_transforms.cli.evaluation import SolveLog, refine_spectral_norms, split_nll
from implicit_transforms.cli.rundir import RunDir, json_line
from implicit_transforms.cli.session import Session
from implicit_transforms.errors import ConvergenceError
from implicit_transforms.images import dequantize
from implicit_transforms.plugins.nflows import initialize_actnorm

__all__ = [
    "EMA",
    "TrainingStopped",
    "batch_indices",
    "checkpoint_step",
    "flow_input",
    "lr_factor",
    "noise_seed",
    "step_seed",
    "train",
    "validate",
]

CHECKPOINT_FORMAT = 2


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


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the log-det estimator's randomness at ``step`` on process ``rank``: a
    function of its arguments, so resumed runs draw the same numbers and every process of a
    distributed run draws its own."""
    return (seed * 1_000_003 + step) * 1_009 + rank


def noise_seed(seed: int, step: int) -> int:
    """The seed of the dequantisation noise of the global batch of ``step`` (all processes
    draw the whole batch's noise and take their share)."""
    return (seed * 1_000_003 + step) * 1_009 + 997_001


VALIDATION_SEED_OFFSET = 7_919


def validate(session: Session, ema: EMA | None) -> float:
    """Mean validation NLL (nats per sample) with the weights used for model selection.

    In a distributed run every process evaluates its share and the results are summed."""
    cfg = session.cfg
    with ema.applied(session.model) if ema is not None else nullcontext():
        refine_spectral_norms(session.model)
        nll = split_nll(session, "validation", cfg.eval_batch_size,
                        cfg.seed + VALIDATION_SEED_OFFSET, shard=True)  # fmt: skip
    return float(nll.mean())


def checkpoint_step(path: Path) -> int:
    """The number of optimisation steps done by the run whose ``checkpoint.pt`` is ``path``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a checkpoint of this trainer (format {CHECKPOINT_FORMAT})")
    return int(ckpt["step"])


def _save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _weights(session: Session, ema: EMA | None) -> dict[str, Any]:
    with ema.applied(session.model) if ema is not None else nullcontext():
        deq = session.model.dequantizer
        return {
            "model": {k: v.detach().clone() for k, v in session.flow.state_dict().items()},
            "dequantizer": None if deq is None else {k: v.detach().clone()
                                                     for k, v in deq.state_dict().items()},
        }  # fmt: skip


def flow_input(session: Session, data: Tensor, noise: Tensor | None) -> Tensor:
    """What the flow itself sees for a batch: vectors as they are, images dequantised to
    ``[0, 1]`` (with the variational dequantiser's ``u`` when there is one)."""
    if session.images is None or noise is None:
        return data
    deq = session.model.dequantizer
    u = noise if deq is None else deq(data, noise)[0]
    return dequantize(data, session.images.levels, u)


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
    """Train ``session.model`` for ``session.cfg.steps`` steps, writing into ``run``.

    Writes ``metrics.jsonl`` (a line per step, a line per validation), ``checkpoint.pt`` after
    every validation and ``best.pt`` whenever the validation NLL improves. With ``resume`` the
    state of ``checkpoint.pt`` is restored first and the metrics after it are discarded.

    In a distributed run (``session.world``) every process takes an equal share of each global
    batch of ``--batch-size``, the gradients are averaged by DDP, and only rank 0 writes files.
    The ActNorm layers are initialised on the first global batch before training (the same on
    every rank), and the log-det estimators draw from a seed of (seed, step, rank).

    Returns:
        ``{"best_step", "best_val_nll", "steps", "wall_time_s"}``.

    Raises:
        TrainingStopped: on a non-finite loss or gradient or a solver failure; the last good
            checkpoint is kept.
    """
    cfg, flow, model, world = session.cfg, session.flow, session.model, session.world
    data = session.split("train")
    n = int(data.shape[0])
    if min(cfg.batch_size, n) % world.size:
        raise ValueError(
            f"--batch-size {min(cfg.batch_size, n)} (the global batch) must be divisible by the "
            f"{world.size} processes"
        )
    train_data = data.to(session.device)
    if cfg.lr is None or cfg.warmup is None:
        raise ValueError("training needs a resolved config: pass cfg.resolved()")
    warmup = cfg.warmup
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=warmup, total=cfg.steps, schedule=cfg.schedule)
    )
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    state: dict[str, Any] = {"step": 0, "best_step": None, "best_val_nll": math.inf, "wall": 0.0}

    def batch(step: int, share: bool = True) -> tuple[Tensor, Tensor | None]:
        """This process's share of the global batch of ``step`` (or all of it)."""
        idx = batch_indices(step, n, cfg.batch_size, cfg.seed)
        noise = session.noise((len(idx), *data.shape[1:]), noise_seed(cfg.seed, step))
        if share:
            idx = idx.chunk(world.size)[world.rank]
            noise = None if noise is None else noise.chunk(world.size)[world.rank]
        return session.to_model(train_data[idx.to(session.device)]), noise

    def checkpoint() -> None:
        if not world.main:
            return
        deq = model.dequantizer
        _save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.to_json(),
                "model": flow.state_dict(),
                "dequantizer": None if deq is None else deq.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "world_size": world.size,
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
        if model.dequantizer is not None:
            model.dequantizer.load_state_dict(ckpt["dequantizer"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        # The stored learning rate followed the schedule of the stored --steps; a resume to a
        # new total goes on along the new total's schedule (the same numbers when unchanged).
        for group, base in zip(opt.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * lr_factor(
                ckpt["step"], warmup=warmup, total=cfg.steps, schedule=cfg.schedule
            )
        if ema is not None and ckpt["ema"] is not None:
            ema.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["torch_rng"])
        state.update({k: ckpt[k] for k in state})
        if world.main:
            _truncate_metrics(run.metrics, state["step"])
            log(f"resuming {run.root} from step {state['step']}")
    else:
        # Data-dependent initialisation on the first global batch, identically on every rank.
        x0, u0 = batch(0, share=False)
        session.generator.manual_seed(step_seed(cfg.seed, -1, world.rank))
        with torch.no_grad():
            initialize_actnorm(flow, flow_input(session, x0, u0))
        if ema is not None:
            ema = EMA(model, cfg.ema)
        if world.main:
            run.metrics.write_text("")
        checkpoint()  # step 0: a last good state exists before the first step

    if state["step"] >= cfg.steps:
        return _summary(state)
    net: nn.Module = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [session.device] if session.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    bar = _Progress(cfg.steps, state["step"], progress and world.main, log)
    metrics = run.metrics.open("a") if world.main else None
    t_start = time.perf_counter() - state["wall"]
    val_bits = None
    scale = 1 / (math.log(2) * (session.features if session.is_image else 1))
    try:
        for step in range(state["step"], cfg.steps):
            x, noise = batch(step)
            session.generator.manual_seed(step_seed(cfg.seed, step, world.rank))
            model.train()
            solves = SolveLog()
            try:
                with solves.watch(flow):
                    loss = net(x, noise).mean()
            except (ConvergenceError, ValueError) as err:
                # A diverged step shows up here as a solver failure or as NaN/Inf reaching a
                # block's input check: stop and keep the last good checkpoint either way.
                raise stop(step, _first_line(err)) from err
            loss_value = float(world.sum(loss.detach().reshape(1))) / world.size
            if not math.isfinite(loss_value):
                raise stop(step, f"the loss is {loss_value}")
            opt.zero_grad(set_to_none=True)
            try:
                loss.backward()
            except (ConvergenceError, ValueError) as err:
                raise stop(step, f"in the backward pass, {_first_line(err)}") from err
            max_norm = cfg.clip_grad if cfg.clip_grad > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            if not math.isfinite(grad_norm):
                raise stop(step, f"the gradient norm is {grad_norm}")
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            done = step + 1
            row: dict[str, Any] = {
                "step": done,
                "loss": loss_value,
                "bits": loss_value / math.log(2),
                "lr": lr,
                "grad_norm": grad_norm,
                "solver_iters": solves.mean,
            }
            if session.is_image:
                row["bits_per_dim"] = loss_value * scale
            if metrics is not None:
                metrics.write(json_line(row))
            if done % cfg.eval_every == 0 or done == cfg.steps:
                check_in_sync(world, model)
                val_nll = validate(session, ema)
                val_bits = val_nll * scale
                improved = val_nll < state["best_val_nll"]
                if improved:
                    state["best_step"], state["best_val_nll"] = done, val_nll
                    weights = _weights(session, ema)
                    if world.main:
                        _save({"step": done, "val_nll": val_nll, **weights}, run.best)
                if metrics is not None:
                    val_row = {"step": done, "val_nll": val_nll, "val_bits": val_nll / math.log(2),
                               "best": improved}  # fmt: skip
                    if session.is_image:
                        val_row["val_bits_per_dim"] = val_bits
                    metrics.write(json_line(val_row))
                    metrics.flush()
                state["step"], state["wall"] = done, time.perf_counter() - t_start
                checkpoint()
            info = {"loss": f"{loss_value:.3f}", "bits/dim" if session.is_image else "bits":
                    f"{loss_value * scale:.3f}"}  # fmt: skip
            if solves.mean is not None:
                info["iters"] = f"{solves.mean:.1f}"
            if val_bits is not None:
                info["val_bpd" if session.is_image else "val_bits"] = f"{val_bits:.3f}"
            bar.update(done, info)
    finally:
        if metrics is not None:
            metrics.close()
        bar.close()
    world.barrier()
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

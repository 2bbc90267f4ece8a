"""The prune-while-fine-tuning loop: the paper's method in one place, free of any tracking store.

For p = 0 .. N prunes done: fine-tune `prune_every` steps (recovering from the last prune while
the saliency of the next one accumulates), validate every `val_every` prunes (and at the start,
at each save and at the end), save every `save_every` prunes (and at the end), then prune one
channel. Given a test loader, the point at each save before the last also has the test error,
so that a network the study compares is measured as networks trained to the end are. The loop
reports through callbacks, as `fit` does: each validation point to `on_point`, each checkpoint to
`on_save` (its tensors are the live model's: write it out before returning). A checkpoint holds
everything the loop needs (weights, masks, optimiser, data position, saliency, RNG, history,
curve), so `restore` continues a killed loop where it saved and it ends with the same history
as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mlprunes.counting import Size, count, size_metrics, training_macs
from mlprunes.engine.checkpoint import make_checkpoint, restore_rng
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.trainer import Trainer
from mlprunes.pruning.history import apply_history, spec_after
from mlprunes.pruning.pruner import Pruner

Point = dict[str, Any]
PointCallback = Callable[[Point], None]
SaveCallback = Callable[[int, dict[str, Any]], None]   # (prunes done, checkpoint)

CURVE_COLUMNS = ("prunes", "channels_left", "params", "flops", "val_error", "val_loss",
                 "test_error", "finetune_epochs", "train_macs")


@dataclass(frozen=True)
class PruneSchedule:
    prunes: int            # prunes to make (the Pruner's round_to channels each)
    prune_every: int       # fine-tuning steps before each prune
    val_every: int = 10    # prunes between validation passes
    save_every: int = 100  # prunes between checkpoints

    def __post_init__(self) -> None:
        for name in ("prune_every", "save_every", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}")
        if self.prunes < 0:
            raise ValueError(f"prunes must be >= 0, got {self.prunes}")

    def validates_at(self, p: int) -> bool:
        return p % self.val_every == 0 or self.saves_at(p)

    def saves_at(self, p: int) -> bool:
        return (p > 0 and p % self.save_every == 0) or p == self.prunes


# The paper's schedule for WRN-40-2 on CIFAR-10: 1,300 prunes of its 1,344 channels, one
# each, after 100 fine-tuning steps of batch 128, on a base trained 200 epochs of 50,000 images.
PAPER_PRUNES, PAPER_CHANNELS, PAPER_STEPS, PAPER_BATCH = 1300, 1344, 100, 128
PAPER_BASE_IMAGES = 200 * 50_000


def finetune_share(prunes: int, prune_every: int, batch_size: int, base_epochs: float,
                   train_images: int) -> float:
    """Fine-tuning while pruning over the base network's training, in compute. The masked
    network computes at full width throughout, so this is a ratio of images seen."""
    return prunes * prune_every * batch_size / max(1.0, base_epochs * train_images)


PAPER_FINETUNE_SHARE = finetune_share(PAPER_PRUNES, PAPER_STEPS, PAPER_BATCH, 200, 50_000)
PAPER_CHANNEL_SHARE = 1 / PAPER_CHANNELS     # of the channels, removed by each prune


def schedule_caveat(share: float, per_prune: float) -> str:
    """A pruning schedule set against the paper's: its fine-tuning over the base's training,
    and the share of channels each prune removes; and, if it is much shorter or coarser, why
    that matters."""
    text = (f"fine-tuning while pruning is {share:.2f}x the base network's training (the "
            f"paper's: {PAPER_FINETUNE_SHARE:.2f}x for WRN-40-2), and each prune removes "
            f"{100 * per_prune:.3g}% of the channels (the paper's: "
            f"{100 * PAPER_CHANNEL_SHARE:.3g}%)")
    if share < PAPER_FINETUNE_SHARE / 2 or per_prune > 2 * PAPER_CHANNEL_SHARE:
        text += ("; a much shorter or coarser schedule than the paper's, so the pruned "
                 "networks had less fine-tuning to recover from each prune than the paper's")
    return text


def prune_while_finetuning(trainer: Trainer, pruner: Pruner, schedule: PruneSchedule,
                           eval_loader, image_size: Size, *, start: int = 0,
                           curve: Sequence[Point] = (), macs_before: float = 0.0,
                           on_point: Sequence[PointCallback] = (),
                           on_save: Sequence[SaveCallback] = (),
                           test_loader=None, progress: bool = False) -> list[Point]:
    """Run the loop from `start` prunes done (0, or where `restore` left it) to the
    schedule's end; return the validation curve. `macs_before` is the training cost already
    spent on the network (its base training), so that `train_macs` counts the whole history.
    The last save has no test error here: the final network's is the caller's to measure."""
    from tqdm import tqdm

    curve = list(curve)
    bar = tqdm(total=schedule.prunes, initial=start, desc="prune", unit="prune",
               disable=not progress, mininterval=1.0, dynamic_ncols=True)
    for p in range(start, schedule.prunes + 1):
        resumed_here = p == start and start > 0
        if not resumed_here:  # a restored loop saved after this point's fine-tuning
            trainer.train_steps(schedule.prune_every)
            if schedule.validates_at(p):
                point = validation_point(p, trainer, pruner, eval_loader, image_size,
                                         macs_before)
                if test_loader is not None and schedule.saves_at(p) and p < schedule.prunes:
                    point["test_error"] = (  # with no validation split, it was just measured
                        point["val_error"] if test_loader is eval_loader else
                        evaluate(trainer.model, test_loader, trainer.amp_dtype)["error"])
                curve.append(point)
                for callback in on_point:
                    callback(point)
                bar.set_postfix(val_err=f"{point['val_error']:.2f}%",
                                params=f"{point['params']:,.0f}", refresh=False)
            if schedule.saves_at(p):
                checkpoint = loop_checkpoint(p, trainer, pruner, curve)
                for callback in on_save:
                    callback(p, checkpoint)
        if p < schedule.prunes:
            pruner.prune()
            bar.update(1)
    bar.close()
    pruner.detach()
    return curve


def finetune_macs(trainer: Trainer, pruner: Pruner, image_size: Size) -> float:
    """Fine-tuning so far. The masked network computes at full width whatever its masks say,
    so this is the full network's cost: what the loop really spent."""
    images = trainer.position.step * trainer.loader.batch_size
    return training_macs(count(pruner.spec, image_size).flops, images)


def validation_point(p: int, trainer: Trainer, pruner: Pruner, eval_loader, image_size: Size,
                     macs_before: float = 0.0) -> Point:
    result = evaluate(trainer.model, eval_loader, trainer.amp_dtype)
    loader = trainer.loader
    return {"prunes": p, "val_error": result["error"], "val_loss": result["loss"],
            "finetune_epochs": trainer.position.step * loader.batch_size / loader.num_samples,
            "train_macs": macs_before + finetune_macs(trainer, pruner, image_size),
            **size_metrics(spec_after(pruner.spec, pruner.history), image_size)}


def loop_checkpoint(p: int, trainer: Trainer, pruner: Pruner,
                    curve: Sequence[Point]) -> dict[str, Any]:
    return make_checkpoint(trainer.model, trainer_state=trainer.state_dict(),
                           prune_history=pruner.history,
                           meta={"prunes": p, "saliency": pruner.saliency.state_dict(),
                                 "curve": list(curve)})


def restore(checkpoint: dict[str, Any], trainer: Trainer,
            pruner: Pruner) -> tuple[int, list[Point]]:
    """Put the trainer and pruner back where a loop checkpoint left them; return (prunes done,
    curve so far) to pass on as `start` and `curve`."""
    trainer.load_state_dict({"model": checkpoint["model"], **checkpoint["trainer"]})
    history = checkpoint["prune_history"]
    apply_history(trainer.model, history)
    pruner.history = list(history)
    pruner.saliency.load_state_dict(checkpoint["meta"]["saliency"])
    restore_rng(checkpoint)
    return checkpoint["meta"]["prunes"], list(checkpoint["meta"]["curve"])

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

With `shrink_every` K > 0, every K prunes the network being fine-tuned is replaced by its cut
form (`mlprunes.pruning.shrink`): the same computation on fewer channels, so the loop's cost
falls as channels go. Its checkpoints stay full-width masked checkpoints, which every later
stage reads as it reads a run that never shrank; the optimiser and criterion state in them are
the cut network's (`meta["shrunk"]` says after how many entries of the prune history it was
cut: prunes x round_to channels), which only `restore` reads, after cutting the network again
where it was cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from mlprunes.counting import Size, count, size_metrics, training_macs
from mlprunes.engine.checkpoint import make_checkpoint, restore_rng
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.trainer import Trainer
from mlprunes.pruning.history import apply_held_history, apply_history, spec_after
from mlprunes.pruning.pruner import Pruner
from mlprunes.pruning.shrink import cut, cut_tensor, expand

Point = dict[str, Any]
PointCallback = Callable[[Point], None]
SaveCallback = Callable[[int, dict[str, Any]], None]   # (prunes done, checkpoint)

CURVE_COLUMNS = ("prunes", "channels_left", "params", "flops", "val_error", "val_loss",
                 "test_error", "finetune_epochs", "train_macs")


# The default of `shrink_every`, chosen by measurement (docs/benchmarks.md, "A network that
# shrinks"): a cut costs a few of the demo's fine-tuning steps, and K prunes left masked cost
# K/2 prunes' channels of extra compute per step, under 1% at 10 of a WRN-40-2's 1,344.
SHRINK_EVERY = 10


@dataclass(frozen=True)
class PruneSchedule:
    prunes: int            # prunes to make (the Pruner's round_to channels each)
    prune_every: int       # fine-tuning steps before each prune
    val_every: int = 10    # prunes between validation passes
    save_every: int = 100  # prunes between checkpoints
    shrink_every: int = 0  # prunes between cuts of the network to its surviving channels (0: never)

    def __post_init__(self) -> None:
        for name in ("prune_every", "save_every", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got "
                                 f"{getattr(self, name)}")
        if self.prunes < 0:
            raise ValueError(f"prunes must be >= 0, got {self.prunes}")
        if self.shrink_every < 0:
            raise ValueError(f"shrink-every must be >= 0 (0: never), got {self.shrink_every}")

    def shrinks_at(self, done: int) -> bool:
        """Whether the network is cut once `done` prunes are done."""
        return self.shrink_every > 0 and done > 0 and done % self.shrink_every == 0

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
    """Fine-tuning while pruning over the base network's training, in images seen (what the
    paper's schedule is compared by; a shrinking run computes less per image as it goes)."""
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
                           spent: "Spent | None" = None,
                           on_point: Sequence[PointCallback] = (),
                           on_save: Sequence[SaveCallback] = (),
                           test_loader=None, progress: bool = False) -> list[Point]:
    """Run the loop from `start` prunes done (0, or where `restore` left it, with the `Spent` it
    gave) to the schedule's end; return the validation curve. `macs_before` is the training
    cost already spent on the network (its base training), so that `train_macs` counts the whole
    history. The last save has no test error here: the final network's is the caller's to
    measure (its `train_macs` is the last point's)."""
    from tqdm import tqdm

    curve = list(curve)
    if spent is None:   # steps already taken were the full network's (a run that never shrank)
        spent = Spent(training_macs(count(pruner.spec, image_size).flops,
                                    trainer.position.step * trainer.loader.batch_size),
                      trainer.position.step)
    bar = tqdm(total=schedule.prunes, initial=start, desc="prune", unit="prune",
               disable=not progress, mininterval=1.0, dynamic_ncols=True)
    for p in range(start, schedule.prunes + 1):
        resumed_here = p == start and start > 0
        if not resumed_here:  # a restored loop saved after this point's fine-tuning
            trainer.train_steps(schedule.prune_every)
            if schedule.validates_at(p):
                point = validation_point(p, trainer, pruner, eval_loader, image_size,
                                         macs_before + spent.update(trainer, pruner, image_size))
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
                checkpoint = loop_checkpoint(p, trainer, pruner, curve,
                                             spent.update(trainer, pruner, image_size))
                for callback in on_save:
                    callback(p, checkpoint)
        if p < schedule.prunes:
            pruner.prune()
            bar.update(1)
            if schedule.shrinks_at(p + 1):
                spent.update(trainer, pruner, image_size)   # at the widths it trained at
                shrink(trainer, pruner, image_size)
    bar.close()
    pruner.detach()
    return curve


class Spent:
    """Fine-tuning compute so far: each step at the MACs of the network it trained, the full
    network's while it is only masked (a masked network computes at full width whatever its
    masks say), the cut network's once it is cut. What the loop really spent."""

    def __init__(self, macs: float = 0.0, step: int = 0):
        self.macs = macs
        self.step = step   # the trainer's step `macs` counts to

    def update(self, trainer: Trainer, pruner: Pruner, image_size: Size) -> float:
        steps = trainer.position.step - self.step
        if steps:
            flops = count(pruner.held_spec, image_size).flops
            self.macs += training_macs(flops, steps * trainer.loader.batch_size)
            self.step = trainer.position.step
        return self.macs


def shrink(trainer: Trainer, pruner: Pruner, image_size: Size | None = None) -> None:
    """Replace the network being fine-tuned by the one of its surviving channels, carrying its
    weights, BatchNorm statistics, momentum and the criterion's state; the pruner goes on in
    it, speaking of the original network's channels. Right after a prune."""
    state = pruner.saliency.state_dict()
    keeps = [(b.mask.detach().cpu() > 0).nonzero().flatten() for b in pruner.blocks]
    pruner.detach()   # no criterion hook may be copied with the network
    smaller, maps = cut(trainer.model, input_size(trainer.model.spec, image_size))
    trainer.replace_model(smaller, lambda name, old, new: cut_tensor(old, maps[name], new))
    pruner.bind(trainer.model, len(pruner.history))
    carried = pruner.saliency.cut_state(state, keeps)
    if carried is not None:
        pruner.saliency.load_state_dict(carried)


def input_size(spec, image_size: Size | None) -> tuple[int, ...] | None:
    """(channels, height, width) of the images a network of `spec` takes at `image_size`."""
    if image_size is None:
        return None
    return (getattr(spec, "input_size", (3,))[0], *image_size)


def validation_point(p: int, trainer: Trainer, pruner: Pruner, eval_loader, image_size: Size,
                     train_macs: float) -> Point:
    result = evaluate(trainer.model, eval_loader, trainer.amp_dtype)
    loader = trainer.loader
    return {"prunes": p, "val_error": result["error"], "val_loss": result["loss"],
            "finetune_epochs": trainer.position.step * loader.batch_size / loader.num_samples,
            "train_macs": train_macs,
            **size_metrics(spec_after(pruner.spec, pruner.history), image_size)}


def loop_checkpoint(p: int, trainer: Trainer, pruner: Pruner, curve: Sequence[Point],
                    finetune_macs: float) -> dict[str, Any]:
    """The full-width masked checkpoint (`expand` of a cut network), with the trainer's and
    criterion's state as they are."""
    model = trainer.model
    state = None
    if pruner.shrunk:
        state = expand(model, pruner.spec, pruner.history[:pruner.shrunk], pruner.history)
    return make_checkpoint(model, trainer_state=trainer.state_dict(),
                           prune_history=pruner.history, state_dict=state, spec=pruner.spec,
                           meta={"prunes": p, "saliency": pruner.saliency.state_dict(),
                                 "curve": list(curve), "shrunk": pruner.shrunk,
                                 "finetune_macs": finetune_macs})


def restore(checkpoint: dict[str, Any], trainer: Trainer, pruner: Pruner,
            image_size: Size | None = None) -> tuple[int, list[Point], Spent]:
    """Put the trainer and pruner back where a loop checkpoint left them (the trainer's model
    the full masked network, as built; the network cut again where the run had cut it).
    Return (prunes done, curve so far, compute spent) to pass on as `start`, `curve` and
    `spent`."""
    meta = checkpoint["meta"]
    history = list(checkpoint["prune_history"])
    shrunk = int(meta.get("shrunk", 0))
    trainer.model.load_state_dict(checkpoint["model"])
    pruner.history = history
    if shrunk:
        pruner.detach()
        apply_history(trainer.model, history[:shrunk])
        smaller, _ = cut(trainer.model, input_size(trainer.model.spec, image_size))
        trainer.replace_model(smaller, lambda name, old, new: torch.zeros_like(new))   # loaded next
    apply_held_history(trainer.model, pruner.spec, history, shrunk)
    pruner.bind(trainer.model, shrunk)
    trainer.load_state_dict({"model": trainer.model.state_dict(), **checkpoint["trainer"]})
    pruner.saliency.load_state_dict(meta["saliency"])
    restore_rng(checkpoint)
    step = trainer.position.step
    macs = meta.get("finetune_macs")
    if macs is None:   # a checkpoint from before the count was kept: a run that never shrank
        macs = training_macs(count(pruner.spec, image_size or 32).flops,
                             step * trainer.loader.batch_size)
    return meta["prunes"], list(meta["curve"]), Spent(macs, step)

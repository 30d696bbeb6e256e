"""Quantization-aware fine-tuning at a policy's widths, and the integer model it saves.

:func:`finetune` takes a task's trained float model, applies the policy with calibration
(the post-training model, scored first), swaps every quantized layer for its LSQ/PACT
counterpart (:mod:`bitsearch.quant.learnable`: learned weight steps, learned activation
clipping, both starting from the post-training quantizers) and trains everything with
AdamW under a discrete cyclic learning rate, optionally with a Lipschitz-style weight
regularizer -- the two training methods the holistic study of quantized networks
(Yun, Kang, Sung) recommends for low-bit fine-tuning.

**Schedule** (:func:`cyclic_lr`): cycles of ``8`` constant steps whose learning rate moves
exponentially between ``lr * 10**-3`` and ``lr`` and back (up, then down), so the
ratio of the largest to the smallest rate is 1000, as the study's 100x / 0.1x bounds
around the last training rate.  One cycle spans ``cycle_epochs`` epochs (default: all of
them), and the run starts and ends at the low rate.

**Checkpoints**: after every epoch the whole state (weights, steps, clips, optimizer, RNG,
history) is written atomically to ``<out>.ckpt``; a run started again with the same
arguments resumes after the last finished epoch and ends with the same model, bit for bit,
as a run never interrupted.  Shuffling uses a generator seeded per epoch.

**The saved model** (``torch.save`` of plain tensors, strings and numbers; loads with
``torch.load(..., weights_only=True)``): for every quantized layer its integer weights,
per-kernel scales (the learned steps), widths and activation quantizer (``act_bits``,
signedness, clipping level); every other tensor of the state dict (biases, batch norm; a
bias that the layer adds on its int32 accumulator grid is stored as learned and rounded when
the model runs, see :mod:`bitsearch.quant.learnable`);
the policy JSON (with the fine-tuned metrics); the task, width multiplier and model
fingerprint; the settings and per-epoch history.  :func:`load_finetuned` rebuilds the
model from the task's architecture alone (no training) and scores exactly as at the end of
fine-tuning.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import UserInputError
from ._io import atomic_write, open_input
from .policy import Policy
from .progress import Bar

FORMAT = "bitsearch-finetuned"
FORMAT_VERSION = 2  # 2: biases of integer layers on the int32 accumulator grid (1: float biases, still read)
READABLE_VERSIONS = (1, 2)
CHECKPOINT_FORMAT = "bitsearch-finetune-checkpoint"
CYCLE_STEPS = 8
CYCLE_DECADES = 3.0  # lr_max / lr_min = 10**3


class FinetuneError(UserInputError):
    """A checkpoint or saved model that does not fit the task or policy, or bad settings."""


@dataclass(frozen=True)
class FinetuneSettings:
    """``lr``: the top of the cycle (default: a tenth of the task recipe's rate);
    ``batch_size`` default: the recipe's; ``lipschitz``: the regularizer's factor beta
    (the loss gets ``beta / 2 * sum ||W W^T - I||^2``; 0 turns it off; the study used 1e-4)."""

    epochs: int = 5
    lr: float | None = None
    batch_size: int | None = None
    cycle_epochs: float | None = None
    lipschitz: float = 0.0
    seed: int = 0
    width_mult: float = 1.0

    def __post_init__(self):
        problems = []
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            problems.append(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if self.cycle_epochs is not None and not (isinstance(self.cycle_epochs, (int, float)) and self.cycle_epochs > 0):
            problems.append(f"cycle epochs must be a positive number, got {self.cycle_epochs!r}")
        if not (isinstance(self.lipschitz, (int, float)) and self.lipschitz >= 0):
            problems.append(f"the Lipschitz factor must be a number >= 0, got {self.lipschitz!r}")
        if problems:
            raise FinetuneError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def cyclic_lr(step: int, steps_per_cycle: int, lr: float) -> float:
    """The learning rate at optimizer ``step`` (see the module doc): 8 levels per cycle,
    exponents ``-3, -2.25, -1.5, -0.75, 0, -0.75, -1.5, -2.25`` (decades below ``lr``)."""
    steps_per_cycle = max(int(steps_per_cycle), 1)
    position = (step % steps_per_cycle) / steps_per_cycle
    level = min(int(position * CYCLE_STEPS), CYCLE_STEPS - 1)
    half = CYCLE_STEPS // 2
    distance = abs(level - half) / half  # 1 at the ends, 0 in the middle
    return lr * 10.0 ** (-CYCLE_DECADES * distance)


@dataclass
class FinetuneResult:
    policy: Policy
    ptq: dict
    final: dict
    history: list = field(default_factory=list)
    resumed_from: int = 0
    out: str = ""
    model: Any = None


# --- helpers ---------------------------------------------------------------------------------
def _space_of(task, width_mult: float):
    """The weight space of ``task``'s model (a Task at ``width_mult``, or a TrainedModel as it is)."""
    from .build import architecture
    from .discover import discover

    model, example = architecture(task, width_mult)
    name = task.name if width_mult == 1.0 else f"{task.name}@x{width_mult:g}"
    return discover(model, example, act_bits=None, model_name=name)


def check_policy_for_task(policy: Policy, task, width_mult: float = 1.0, *, source: str | None = None) -> Policy:
    """The policy checked against the task's model: the same fingerprint (when the policy
    names one), every layer present, no unknown one, per-kernel widths of the right
    length (the widths themselves are checked by ``apply_policy``).  Raises one
    :class:`PolicyError`; returns the policy in the model's layer order, stamped with the
    model's name and fingerprint."""
    from .errors import PolicyError

    space = _space_of(task, width_mult)
    model_meta = policy.meta.get("model") or {}
    fingerprint = model_meta.get("fingerprint")
    if fingerprint and fingerprint != space.fingerprint:
        raise PolicyError(f"the policy was made for model {model_meta.get('name', '?')!r} ({fingerprint}), but task "
                          f"{task.name!r} gives {space.fingerprint}: a policy for another model", source)
    given = policy.as_dict()
    problems = [f"unknown layer {n!r} (task {task.name!r} has {', '.join(space.names[:6])}...)"
                for n in given if n not in set(space.names)]
    problems += [f"missing layer {l.name!r}" for l in space.layers if l.name not in given]
    problems += [f"layer {l.name!r}: {len(given[l.name].weight_bits)} per-kernel widths, but the layer has "
                 f"{l.kernels} kernels" for l in space.layers
                 if l.name in given and given[l.name].per_kernel and len(given[l.name].weight_bits) != l.kernels]
    if problems:
        raise PolicyError(problems, source)
    ordered = Policy(tuple((l.name, given[l.name]) for l in space.layers), policy.granularity, policy.meta)
    return ordered.with_meta(model={"name": space.model_name, "fingerprint": space.fingerprint})


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    atomic_write(path, lambda handle: torch.save(obj, handle))


def _load(path: Path, what: str):
    import pickle

    import torch

    try:
        with open_input(path, "model", error=lambda message: FinetuneError(f"{path}: {message}")) as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FinetuneError(f"{path}: no such {what}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FinetuneError(f"{path}: not a readable {what} ({first[:160]})") from None


def _identity(task, policy: Policy, settings: FinetuneSettings, fingerprint: str) -> dict:
    return {"task": task.name, "fingerprint": fingerprint, "policy_key": policy.key,
            "settings": json.dumps(settings.to_dict(), sort_keys=True), "format_version": FORMAT_VERSION}


# --- fine-tuning -----------------------------------------------------------------------------
def finetune(task, policy: Policy, settings: FinetuneSettings = FinetuneSettings(), *, out: str | os.PathLike,
             checkpoint: str | os.PathLike | None = None, resume: bool = True, progress: bool = False,
             stop_after: int | None = None, log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune ``task``'s model at ``policy``'s widths; write the integer model to ``out``.

    ``stop_after``: return after that many epochs of this call, leaving only the
    checkpoint (what a kill leaves; for tests).  ``log`` receives one line per epoch."""
    import torch
    import torch.nn.functional as F

    from .quant import apply_policy
    from .quant.learnable import lipschitz_penalty, to_learnable
    from .tasks import evaluate_model

    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint is not None else out.with_name(out.name + ".ckpt")
    policy = check_policy_for_task(policy, task, settings.width_mult)
    fingerprint = policy.meta["model"]["fingerprint"]
    identity = _identity(task, policy, settings, fingerprint)
    lr = settings.lr if settings.lr is not None else task.recipe.lr / 10.0
    batch_size = settings.batch_size or task.recipe.batch_size

    state = None
    if checkpoint.exists() and resume:  # checked before any training: a wrong checkpoint fails fast
        state = _load(checkpoint, "fine-tuning checkpoint")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise FinetuneError(f"{checkpoint}: not a bitsearch fine-tuning checkpoint; remove it or pass --restart")
        theirs = state.get("identity", {})
        if theirs != identity:
            what = ("another model" if theirs.get("fingerprint") != fingerprint or theirs.get("task") != task.name
                    else "another policy" if theirs.get("policy_key") != policy.key
                    else "an older bitsearch (float biases)" if theirs.get("format_version") != FORMAT_VERSION
                    else "other settings")
            raise FinetuneError(f"{checkpoint}: a checkpoint from {what} (task {theirs.get('task')!r}, model "
                                f"{theirs.get('fingerprint')}); remove it or pass --restart to start over")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        float_model = task.trained_model(settings.width_mult, progress=progress)
        data = task.data()
        qmodel = apply_policy(float_model, policy, calibration=data.calibration)
        ptq = evaluate_model(qmodel, data.x_test, data.y_test)
        model = to_learnable(qmodel)
        optimizer = torch.optim.AdamW([
            {"params": [p for n, p in model.named_parameters() if not n.endswith(("weight_step", "act_clip"))]},
            {"params": [p for n, p in model.named_parameters() if n.endswith(("weight_step", "act_clip"))],
             "weight_decay": 0.0}], lr=lr, weight_decay=0.0)
        n = len(data.x_train)
        batch_size = min(batch_size, n)
        batches = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
        if len(batches) > 1 and batches[-1][1] - batches[-1][0] < 2:
            batches.pop()
        cycle_epochs = settings.cycle_epochs or settings.epochs
        steps_per_cycle = max(1, round(cycle_epochs * len(batches)))
        history, start_epoch = [], 0
        if state is not None:
            try:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise FinetuneError(f"{checkpoint}: does not fit the model ({str(exc).splitlines()[0][:160]})") from None
            torch.set_rng_state(state["rng"])
            history = list(state.get("history", []))
            start_epoch = int(state["epoch"])
            ptq = dict(state.get("ptq", ptq))
            if log:
                log(f"resuming after epoch {start_epoch} from {checkpoint}")
        steps_done = start_epoch * len(batches)
        for epoch in range(start_epoch, settings.epochs):
            if stop_after is not None and epoch - start_epoch >= stop_after:
                return FinetuneResult(policy, ptq, {}, history, start_epoch, "", model)
            generator = torch.Generator().manual_seed(settings.seed * 100003 + epoch)
            order = torch.randperm(n, generator=generator)
            bar = Bar(f"finetune {epoch + 1}/{settings.epochs}", len(batches), unit="batch", enabled=bool(progress))
            model.train()
            loss_sum, seen = 0.0, 0
            try:
                for start, stop in batches:
                    current = cyclic_lr(steps_done, steps_per_cycle, lr)
                    for group in optimizer.param_groups:
                        group["lr"] = current
                    index = order[start:stop]
                    loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
                    if settings.lipschitz:
                        loss = loss + settings.lipschitz / 2 * lipschitz_penalty(model)
                    if not torch.isfinite(loss):
                        raise FinetuneError(f"the loss became {float(loss.detach())} in epoch {epoch + 1}; "
                                            f"lower the learning rate (--lr, now {lr:g})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps_done += 1
                    loss_sum += float(loss.detach()) * (stop - start)
                    seen += stop - start
                    bar.update(1, postfix=f"loss={loss_sum / seen:.4f}, lr={current:.2g}")
            finally:
                bar.close()
            model.eval()
            metrics = evaluate_model(model, data.x_test, data.y_test)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "top1": metrics["top1"],
                            "loss": metrics["loss"], "lr_last": current})
            if log:
                log(f"epoch {epoch + 1}/{settings.epochs}: train loss {loss_sum / max(seen, 1):.4f}, "
                    f"test top1 {metrics['top1']:.4f}")
            _atomic_torch_save({"format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch + 1,
                                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "rng": torch.get_rng_state(), "history": history, "ptq": ptq}, checkpoint)
        model.eval()
        final = evaluate_model(model, data.x_test, data.y_test)
        result_policy = policy.with_meta(metrics={"top1": final["top1"], "loss": final["loss"],
                                                  "metric_kind": f"qat{settings.epochs}",
                                                  "top1_ptq": ptq["top1"]})
        saved = saved_model_dict(model, task, result_policy, settings, ptq, final, history, lr=lr)
        _atomic_torch_save(saved, out)
    return FinetuneResult(result_policy, ptq, final, history, start_epoch, str(out), model)


def saved_model_dict(model, task, policy: Policy, settings: FinetuneSettings, ptq: dict, final: dict,
                     history: list, *, lr: float) -> dict:
    """What ``finetune`` writes (see the module doc)."""
    from .quant.learnable import learnable_modules

    layers, skip = {}, set()
    for name, module in learnable_modules(model).items():
        entry = {"bits": module.weight_bits.clone(), "act_bits": int(module.act_bits or 0),
                 "act_signed": bool(module.act_signed), "act_clip": module.act_clip.detach().clone()}
        if module.weight_is_float:
            entry["float_weight"] = module.weight.detach().clone()
        else:
            integer = module.integer_weight()
            entry["values"], entry["scales"] = integer.values, integer.scales
        layers[name] = entry
        prefix = f"{name}." if name else ""
        skip.update(prefix + k for k in ("weight", "weight_step", "act_clip", "weight_bits", "act_bits_buffer",
                                         "act_signed"))
    rest = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "task": task.name,
            "width_mult": float(settings.width_mult), "model": dict(policy.meta["model"]),
            "policy": policy.to_json(), "layers": layers, "state": rest,
            "metrics": {"ptq": dict(ptq), "final": dict(final)}, "history": list(history),
            "settings": {**settings.to_dict(), "lr_used": lr, "optimizer": "adamw",
                         "schedule": "cyclic, 8 discrete levels, exponential, 1e-3..1 x lr"}}


def read_saved(path: str | os.PathLike) -> dict:
    data = _load(Path(path), "fine-tuned model")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FinetuneError(f"{path}: not a bitsearch fine-tuned model (written by 'bitsearch finetune')")
    if data.get("format_version") not in READABLE_VERSIONS:
        raise FinetuneError(f"{path}: format version {data.get('format_version')!r} is not supported "
                            f"(this bitsearch reads {', '.join(map(str, READABLE_VERSIONS))})")
    return data


def load_finetuned(path: str | os.PathLike, task, *, saved: dict | None = None):
    """The fine-tuned model of ``path`` rebuilt on ``task``'s architecture, in eval mode.
    Raises :class:`FinetuneError` (one line) for a file made for another model."""
    import torch

    from .quant.functional import replace_modules
    from .quant.learnable import learnable_layer

    data = saved if saved is not None else read_saved(path)
    width_mult = float(data.get("width_mult", 1.0))
    space = _space_of(task, width_mult)
    model_meta = data.get("model") or {}
    if data.get("task") != task.name or model_meta.get("fingerprint") != space.fingerprint:
        raise FinetuneError(f"{path}: a model fine-tuned for {data.get('task')!r} ({model_meta.get('fingerprint')}), "
                            f"but task {task.name!r} gives {space.fingerprint}: a checkpoint from another model")
    model = task.build_model(width_mult)
    modules = dict(model.named_modules())
    replacements = {}
    for name, entry in data["layers"].items():
        module = modules.get(name)
        if module is None:
            raise FinetuneError(f"{path}: layer {name!r} is not in task {task.name!r}'s model")
        act_bits = int(entry["act_bits"]) or None
        layer = learnable_layer(module, entry["bits"], act_bits, act_signed=bool(entry["act_signed"]),
                                act_clip=float(entry["act_clip"]), layer_name=name)
        layer.integer_bias = data["format_version"] >= 2  # version 1 was fine-tuned with float biases
        with torch.no_grad():
            if "values" in entry:
                weight = entry["values"].to(torch.float32) * entry["scales"].reshape(
                    (-1,) + (1,) * (entry["values"].dim() - 1))
                layer.weight.copy_(weight)
                layer.weight_step.copy_(entry["scales"])
            else:
                layer.weight.copy_(entry["float_weight"])
            layer.act_clip.copy_(entry["act_clip"])
        replacements[id(module)] = layer
    model = replace_modules(model, replacements)
    try:
        missing, unexpected = model.load_state_dict(data["state"], strict=False)
    except RuntimeError as exc:
        raise FinetuneError(f"{path}: does not fit task {task.name!r}'s model ({str(exc).splitlines()[0][:160]})") from None
    learn_keys = {"weight", "weight_step", "act_clip", "weight_bits", "act_bits_buffer", "act_signed"}
    missing = [k for k in missing if not (k.rsplit(".", 1)[0] in data["layers"] and k.rsplit(".", 1)[-1] in learn_keys)]
    if missing or unexpected:
        raise FinetuneError(f"{path}: does not fit task {task.name!r}'s model (missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]})")
    return model.eval()


def saved_policy(data: dict) -> Policy:
    return Policy.from_json(data["policy"])

"""Batches, losses and training steps (torch): what evaluators and the searchers that train share.

A *batch* is what a data loader yields: a tensor of inputs, or a tuple / list whose first
item is the inputs and whose second is the targets (``(x, y)``, as a
``torch.utils.data.DataLoader`` over a labelled data set gives).  The defaults here read
batches that way; a user with other batches passes ``loss`` / ``train_step`` /
``inputs`` callables of their own to :func:`bitsearch.problem_for_model`.

Nothing here holds a data set in memory: loaders are iterated batch by batch, and a
sample limit stops the iteration early.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserInputError

Batch = Any


def batch_inputs(batch: Batch):
    """The model inputs of ``batch``: the batch itself when it is a tensor, else its first item."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise UserInputError(f"a batch must be a tensor of inputs or a tuple (inputs, targets, ...), got "
                         f"{type(batch).__name__}; for other batches pass inputs=, loss= and train_step= "
                         "callables to problem_for_model")


def batch_targets(batch: Batch):
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    raise UserInputError(f"the default loss needs (inputs, targets) batches, got {_describe(batch)}; pass "
                         "loss=callable(model, batch) (and train_step=) to problem_for_model")


def batch_size_of(batch: Batch, inputs: Callable[[Batch], Any] = batch_inputs) -> int:
    """How many samples ``batch`` holds (the length of its first tensor)."""
    x = inputs(batch)
    while isinstance(x, (tuple, list)) and x:
        x = x[0]
    if isinstance(x, dict) and x:
        x = next(iter(x.values()))
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise UserInputError(f"cannot tell how many samples a batch holds (its inputs are {_describe(x)}); "
                             "batches must be batch-first tensors")
    return int(x.shape[0])


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def call_model(model: nn.Module, inputs):
    """``model(inputs)``; a tuple of inputs is spread into arguments, a dict into keywords."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def cross_entropy_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The default loss: mean cross-entropy of ``model(x)`` against class labels ``y``."""
    logits = call_model(model, batch_inputs(batch))
    return F.cross_entropy(logits, batch_targets(batch))


def make_train_step(loss: Callable[[nn.Module, Batch], torch.Tensor] = cross_entropy_loss):
    """The default training step on ``loss``: zero the gradients, back-propagate, step."""

    def train_step(model: nn.Module, batch: Batch, optimizer) -> float:
        optimizer.zero_grad(set_to_none=True)
        value = loss(model, batch)
        if not torch.isfinite(value.detach()).all():
            raise UserInputError(f"training: the loss became {float(value.detach())}; lower the learning rate")
        value.backward()
        optimizer.step()
        return float(value.detach())

    train_step.__name__ = "train_step"
    return train_step


default_train_step = make_train_step()


class HookedOptimizer:
    """Several optimizers as one, with a hook that runs before each ``step()``.

    Searchers that train hand this to a user's ``train_step``: ``zero_grad`` clears
    every optimizer's parameters, ``step`` first calls ``before_step()`` (which may add
    gradients, e.g. FracBits' budget penalty on the widths, or read them, as BMPQ's
    bit-gradients do) and then steps every optimizer in order."""

    def __init__(self, optimizers: Iterable, before_step: Callable[[], None] | None = None,
                 after_step: Callable[[], None] | None = None):
        self.optimizers = [o for o in optimizers if o is not None]
        self.before_step = before_step
        self.after_step = after_step
        self.steps = 0

    @property
    def param_groups(self):
        return [group for o in self.optimizers for group in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        if closure is not None:
            raise UserInputError("train_step: optimizer.step(closure) is not supported here; compute the loss, "
                                 "call backward(), then optimizer.step()")
        if self.before_step is not None:
            self.before_step()
        for optimizer in self.optimizers:
            optimizer.step()
        self.steps += 1
        if self.after_step is not None:
            self.after_step()


class TensorBatches:
    """In-memory training data as a re-iterable of shuffled batches: each pass is one
    epoch over a fresh permutation from one generator seeded with ``seed`` (so epoch
    ``k`` of two runs with the same seed sees the same batches), cut to ``samples``
    samples, batches of ``batch_size``; a last batch of one sample is dropped (batch norm
    cannot train on it)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, samples: int | None = None):
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        n = len(x) if samples is None else min(int(samples), len(x))
        self.samples = n
        count = math.ceil(n / self.batch_size)
        if count > 1 and n - (count - 1) * self.batch_size < 2:
            count -= 1
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.x), generator=self.generator)[:self.samples]
        for i in range(self._count):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[index], self.y[index]


class LoaderBatches:
    """A user's loader as a re-iterable of epochs: each pass iterates the loader once,
    stopping once ``samples`` samples have been seen (None: the whole pass).  ``len()``
    is the loader's when it has one (capped by ``samples`` when the batch size is known),
    else counted by one pass."""

    def __init__(self, loader: Iterable, samples: int | None = None, *, what: str = "train_loader",
                 inputs: Callable[[Batch], Any] = batch_inputs):
        if isinstance(loader, Iterator):
            raise UserInputError(f"{what} is a one-shot iterator (a generator?); training passes over it once per "
                                 "epoch, so give a re-iterable: a DataLoader, a list of batches, or an object "
                                 "whose __iter__ starts a new pass")
        self.loader = loader
        self.samples = None if samples is None else int(samples)
        self.what = what
        self.inputs = inputs
        self._count: int | None = None

    def __iter__(self):
        seen = 0
        empty = True
        for batch in self.loader:
            if self.samples is not None and seen >= self.samples:
                break
            empty = False
            seen += batch_size_of(batch, self.inputs)
            yield batch
        if empty:
            raise UserInputError(f"{self.what} yielded no batch")

    def __len__(self) -> int:
        if self._count is None:
            length = None
            try:
                length = len(self.loader)  # type: ignore[arg-type]
            except TypeError:
                pass
            batch_size = getattr(self.loader, "batch_size", None)
            if length is not None and (self.samples is None or isinstance(batch_size, int)):
                if self.samples is not None:
                    length = min(length, math.ceil(self.samples / batch_size))
                self._count = int(length)
            else:
                self._count = sum(1 for _ in self)
        return self._count


def take_samples(loader: Iterable, samples: int, *, what: str = "calibration",
                 inputs: Callable[[Batch], Any] = batch_inputs) -> list:
    """The first batches of ``loader`` holding ``samples`` samples (the last one cut to
    fit), as a list: what estimators pass over many times.  Streams: stops reading once
    it has enough."""
    if samples < 1:
        raise UserInputError(f"samples must be >= 1 (got {samples})")
    out, seen = [], 0
    for batch in loader:
        n = batch_size_of(batch, inputs)
        if seen + n > samples:
            batch = cut_batch(batch, samples - seen)
            n = samples - seen
        out.append(batch)
        seen += n
        if seen >= samples:
            break
    if not out:
        raise UserInputError(f"{what} yielded no batch")
    return out


def cut_batch(batch: Batch, n: int) -> Batch:
    """The first ``n`` samples of a batch (a tensor, or a tuple / list / dict of batch-first tensors)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(cut_batch(item, n) for item in batch)
    if isinstance(batch, dict):
        return {key: cut_batch(value, n) for key, value in batch.items()}
    return batch


@contextlib.contextmanager
def seeded_training(model: nn.Module, seed: int, threads: int) -> Iterator[torch.Generator]:
    """Train ``model`` deterministically inside: ``threads`` torch threads, the global RNG
    seeded with ``seed`` (both restored after), train mode inside and eval mode after.
    Yields a generator seeded with ``seed`` for the data order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            try:
                yield torch.Generator().manual_seed(seed)
            finally:
                model.eval()
    finally:
        torch.set_num_threads(previous)


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")

"""``tiny-llama``: a small Llama-architecture causal language model of Python source.

The model is Hugging Face ``transformers``' ``LlamaForCausalLM`` built from a config
(:data:`MODEL_CONFIG`: 6 decoder layers, hidden size 128, 4 attention heads of 32 with 2
key/value heads (grouped-query attention, as Llama 3), a SwiGLU MLP of 256, RMSNorm,
rotary positions, untied input and output embeddings): nothing is downloaded.  It reads
bytes (256 tokens: the byte-level tokenizer needs no training and no file) and is
trained on the training modules of :mod:`bitsearch.tasks.pycorpus` -- the Python
standard library's own source, found through ``sysconfig`` -- with :class:`LMRecipe`.

Policies are scored by **held-out perplexity** (lower is better): ``exp`` of the mean
next-byte cross-entropy over :data:`EVAL_WINDOWS` windows of :data:`SEQ_LEN` bytes cut
evenly from the held-out modules (never trained on).  ``bits_per_byte`` (the same
number in bits) is reported beside it.  The loss that sensitivities and fine-tuning use
is the same language-model loss on training windows.

The trained weights ship inside the package (``tiny_llama_weights/tiny-llama-w1-<key>.pt``, float16,
1.9 MB), so a fresh install does not train; when the recipe or the model config changes
(their key no longer names the shipped file), the model is trained again -- about 3
minutes on 2 cores, always on :data:`TRAIN_THREADS` threads so that every machine gets the
same weights -- and cached under ``$BITSEARCH_CACHE/weights/tiny-llama``.  Everything runs
on CPU.  Maintainers remake the shipped file with ``python -m bitsearch.tasks.tiny_llama
--ship`` (``--check`` tells whether it is current).

Needs the ``llm`` extra: ``pip install 'bitsearch[llm]'`` (``transformers``).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..build import TrainedModel
from ..errors import TaskError
from .._io import atomic_write, stable_hash
from . import pycorpus

log = logging.getLogger(__name__)

NAME = "tiny-llama"
VOCAB = 256  # bytes
SEQ_LEN = 256
EVAL_WINDOWS = 32
CALIBRATION_WINDOWS = 16
SENSITIVITY_SEED = 1  # training windows for calibration and sensitivities (not the training order)
MODEL_CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": SEQ_LEN,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "use_cache": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
WEIGHTS_FORMAT = 1
TRAIN_THREADS = 1  # fixed: the sums of a training step depend on the thread count (and 2 threads on a
# busy 2-core machine run 20x slower than one)
WEIGHTS_DIR = Path(__file__).resolve().parent / "tiny_llama_weights"


@dataclass(frozen=True)
class LMRecipe:
    """How tiny-llama trains: ``steps`` AdamW steps on ``batch_size`` windows of
    :data:`SEQ_LEN` + 1 bytes drawn uniformly from the training text (a generator seeded
    with ``seed``), learning rate warmed up linearly over ``warmup`` steps and then
    cosine-decayed to ``lr * final_lr_ratio``, weight decay on the matrices only,
    gradients clipped to norm ``grad_clip``; the model is initialised under
    ``torch.manual_seed(seed)``."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


RECIPE = LMRecipe()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise TaskError("task 'tiny-llama' needs Hugging Face transformers: pip install 'bitsearch[llm]'") from None
    return transformers


def build_model(seed: int = RECIPE.seed, attention: str = "eager") -> nn.Module:
    """A freshly initialised tiny-llama (``LlamaForCausalLM`` from :data:`MODEL_CONFIG`).

    ``attention``: ``eager`` (plain matrix products: what scoring and sensitivities use, as
    the Hessian needs second derivatives, which torch's fused CPU attention does not have)
    or ``sdpa`` (fused, faster: what training uses)."""
    transformers = _transformers()
    config = transformers.LlamaConfig(**MODEL_CONFIG)
    config._attn_implementation = attention
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.eval()


# --- data ------------------------------------------------------------------------------------------------
def token_ids(names: tuple[str, ...]) -> torch.Tensor:
    """The byte-level token ids of the modules ``names`` (int64, one per byte)."""
    text = pycorpus.read_modules(tuple(names))
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).to(torch.int64)


def even_windows(ids: torch.Tensor, count: int, length: int = SEQ_LEN + 1) -> torch.Tensor:
    """``count`` windows of ``length`` tokens with evenly spaced starts (the first at 0,
    the last ending at the end), shape ``[count, length]``."""
    if len(ids) < length:
        raise TaskError(f"the corpus has {len(ids)} tokens, fewer than one window of {length}")
    last = len(ids) - length
    starts = [round(i * last / max(1, count - 1)) for i in range(count)]
    return torch.stack([ids[s:s + length] for s in starts])


def random_windows(ids: torch.Tensor, count: int, generator: torch.Generator,
                   length: int = SEQ_LEN + 1) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length + 1, (count,), generator=generator)
    return torch.stack([ids[int(s):int(s) + length] for s in starts])


def heldout_windows() -> torch.Tensor:
    """The :data:`EVAL_WINDOWS` windows perplexity is measured on (held-out modules)."""
    return even_windows(token_ids(pycorpus.HELDOUT_MODULES), EVAL_WINDOWS)


def training_windows(count: int, seed: int = SENSITIVITY_SEED) -> torch.Tensor:
    """``count`` windows of the training text (seeded), e.g. for calibration and sensitivities."""
    generator = torch.Generator().manual_seed(int(seed))
    return random_windows(token_ids(pycorpus.TRAIN_MODULES), int(count), generator)


# --- loss and perplexity -----------------------------------------------------------------------------------
def window_inputs(batch: torch.Tensor) -> torch.Tensor:
    """The model input of a batch of windows: every token but the last."""
    return batch[:, :-1]


def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy (nats) of a batch of windows ``[B, T + 1]``."""
    logits = logits_of(model, window_inputs(batch))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """``perplexity`` (``exp`` of the mean next-byte cross-entropy), ``loss`` (that mean,
    nats) and ``bits_per_byte`` of ``model`` on ``windows``, in eval mode without
    gradients (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(windows), batch_size):
                batch = windows[start:start + batch_size]
                logits = logits_of(model, window_inputs(batch))
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                               batch[:, 1:].reshape(-1), reduction="sum"))
                count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    loss = total / count
    if not math.isfinite(loss):
        return {"perplexity": math.inf, "loss": loss, "bits_per_byte": math.inf}
    return {"perplexity": math.exp(loss), "loss": loss, "bits_per_byte": loss / math.log(2)}


# --- training --------------------------------------------------------------------------------------------------
def _lr_at(step: int, recipe: LMRecipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    low = recipe.lr * recipe.final_lr_ratio
    return low + 0.5 * (recipe.lr - low) * (1 + math.cos(math.pi * t))


def train(model: nn.Module, recipe: LMRecipe = RECIPE, *, progress: bool = False) -> nn.Module:
    """Train ``model`` on the training modules under ``recipe`` (deterministic: always
    :data:`TRAIN_THREADS` CPU threads; the thread count and the global RNG are restored
    after).  Returns it in eval mode."""
    from ..progress import Bar
    from ..training import seeded_training

    ids = token_ids(pycorpus.TRAIN_MODULES)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    with seeded_training(model, recipe.seed, threads=TRAIN_THREADS) as generator, \
            Bar(f"training {NAME}", recipe.steps, unit="step", enabled=bool(progress)) as bar:
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, recipe)
            batch = random_windows(ids, recipe.batch_size, generator)
            optimizer.zero_grad(set_to_none=True)
            loss = lm_loss(model, batch)
            if not torch.isfinite(loss):
                raise TaskError(f"training {NAME}: the loss became {float(loss.detach())} at step {step}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            bar.update(1, postfix=f"loss={float(loss.detach()):.3f}")
    return model


# --- trained weights: shipped, cached, or trained here --------------------------------------------------------------
def weights_key(recipe: LMRecipe = RECIPE) -> str:
    """The hash naming trained weights: model config, recipe, corpus file list, format."""
    return stable_hash({"task": NAME, "config": MODEL_CONFIG, "recipe": recipe.to_dict(),
                        "train": list(pycorpus.TRAIN_MODULES), "seq_len": SEQ_LEN, "threads": TRAIN_THREADS,
                        "format": WEIGHTS_FORMAT})


def shipped_path(key: str | None = None) -> Path:
    """Where the package keeps the trained weights of ``key`` (default: the current one)."""
    return WEIGHTS_DIR / f"{NAME}-w1-{key or weights_key()}.pt"


def _cache_path(key: str) -> Path:
    from .cache import cache_dir

    return cache_dir() / "weights" / NAME / f"{key}.pt"


def _read(path: Path, key: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file
        warnings.warn(f"{NAME}: ignoring unreadable weights {path} ({exc})", stacklevel=3)
        return None
    if not isinstance(record, dict) or record.get("meta", {}).get("key") != key:
        return None
    return record


def _to_float16(model: nn.Module) -> dict:
    return {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}


def trained_state(progress: bool = False) -> tuple[dict, dict]:
    """The trained weights (float16 state dict) and their record: the shipped file when
    its key matches :func:`weights_key`, else the cache, else trained now (and cached)."""
    from .cache import file_lock

    key = weights_key()
    for path in (shipped_path(key), _cache_path(key)):
        record = _read(path, key)
        if record is not None:
            return record["state_dict"], dict(record["meta"])
    path = _cache_path(key)
    with file_lock(path):
        record = _read(path, key)
        if record is not None:
            return record["state_dict"], dict(record["meta"])
        record = train_record(progress=progress)
        atomic_write(path, lambda handle: torch.save(record, handle))
    return record["state_dict"], dict(record["meta"])


def train_record(progress: bool = False) -> dict:
    """Train tiny-llama from scratch: ``{"state_dict": float16 weights, "meta": {...}}``."""
    start = time.perf_counter()
    model = train(build_model(attention="sdpa"), RECIPE, progress=progress)
    seconds = time.perf_counter() - start
    state = _to_float16(model)
    model = build_model()
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})  # score what is stored, as scored
    metrics = perplexity(model, heldout_windows())
    meta = {"task": NAME, "key": weights_key(), "recipe": RECIPE.to_dict(), "config": MODEL_CONFIG,
            "torch": str(torch.__version__), "transformers": _transformers().__version__,
            "corpus": pycorpus.corpus_digest(), "seconds": round(seconds, 1), "threads": TRAIN_THREADS,
            "heldout_perplexity": metrics["perplexity"]}
    log.info("trained %s in %.0f s: held-out perplexity %.4f", NAME, seconds, metrics["perplexity"])
    return {"state_dict": state, "meta": meta}


def trained_model(progress: bool = False) -> nn.Module:
    """tiny-llama with its trained weights (float32 computation, eval mode)."""
    state, _ = trained_state(progress=progress)
    model = build_model()
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval()


# --- the task ------------------------------------------------------------------------------------------------------
TRAIN_WINDOWS = 64   # what fine-tuning and fracbits train on (one epoch: 8 batches of 8 windows)
BATCH = 8
DESCRIPTION = ("Llama-architecture causal LM (transformers, 6 layers, hidden 128, 0.95M parameters, bytes) "
               "trained on the Python standard library's source; metric: held-out perplexity (lower is better)")


class TinyLlama(TrainedModel):
    """tiny-llama as a trained model; ``weight_only``: the command line leaves activations
    in float unless ``--act-bits`` says otherwise (weight-only quantization, as llama.cpp)."""

    weight_only = True


def _batches(windows: torch.Tensor, size: int = BATCH) -> list[torch.Tensor]:
    return [windows[i:i + size] for i in range(0, len(windows), size)]


def make_task(progress: bool = False):
    """The ``tiny-llama`` task: its trained model, held-out perplexity as the metric, the
    language-model loss, calibration and training windows (a
    :class:`bitsearch.TrainedModel`)."""
    model = trained_model(progress=progress)
    heldout = heldout_windows()
    calibration = _batches(training_windows(CALIBRATION_WINDOWS))
    train_windows = _batches(training_windows(TRAIN_WINDOWS, seed=SENSITIVITY_SEED + 1))
    return TinyLlama(
        model, example_input=heldout[:1, :-1], calibration=calibration,
        evaluate=lambda m: perplexity(m, heldout), metric="perplexity", higher_is_better=False,
        loss=lm_loss, train_loader=train_windows, inputs=window_inputs, finetune_lr=3e-4,
        name=NAME, description=DESCRIPTION, cache_key=weights_key(), deterministic=True)


def main(argv=None) -> int:
    """``python -m bitsearch.tasks.tiny_llama --ship | --check``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bitsearch.tasks.tiny_llama",
                                     description="Make or check the tiny-llama weights the package ships.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--ship", action="store_true", help="train and write the shipped weights file")
    group.add_argument("--check", action="store_true", help="exit 1 unless the shipped file is the current one")
    args = parser.parse_args(argv)
    path = shipped_path()
    if args.check:
        record = _read(path, weights_key())
        stale = sorted(p.name for p in WEIGHTS_DIR.glob(f"{NAME}-w1-*.pt") if p != path)
        if record is None or stale:
            print(f"{path.name}: {'missing or unreadable' if record is None else 'ok'}"
                  + (f"; stale files: {', '.join(stale)}" if stale else ""))
            return 1
        print(f"{path.name}: current (held-out perplexity {record['meta']['heldout_perplexity']:.4f})")
        return 0
    record = train_record(progress=True)
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(record, handle))
    for old in WEIGHTS_DIR.glob(f"{NAME}-w1-*.pt"):
        if old != path:
            old.unlink()
    print(f"wrote {path} ({record['meta']['seconds']} s of training, held-out perplexity "
          f"{record['meta']['heldout_perplexity']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

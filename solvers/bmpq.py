"""``bmpq``: quantization-aware training that re-chooses the widths as it goes (BMPQ).

BMPQ (Kundu et al., 2021) trains a quantized network while bit-gradients measure how
much each layer needs its bits, and re-solves an ILP under the hardware budget every few
epochs.  Here, on a task's trained float model:

1. an initial table from the bit-gradient estimator (``bitsearch.sensitivity``, method
   ``bitgrad``) on the float model, and the ILP's policy under every budget;
2. quantization-aware training (straight-through estimators, the task's data, AdamW at
   ``lr``) of the model fake-quantized at that policy.  At every step, for every layer
   (per kernel at kernel granularity) and every integer width ``c`` of the range, the
   *bit-gradient* ``g(c) = dL/dWq . (Q_{c+1}(W) - Q_c(W))`` -- the derivative of the
   loss with respect to a relaxed width, first order around the current quantized
   weights, from the gradient the step computes anyway -- is accumulated as a running
   mean of ``|g(c)|``;
3. every ``resolve_every`` epochs the accumulated magnitudes become the table
   ``Omega(b) = sum_{b <= c < B} mean |g(c)|`` (``B`` the widest width) and the ILP is
   solved again (same solver settings as ``ilp``); the model switches to the new widths,
   its activation ranges are recalibrated, and training goes on;
4. the last policy and the fine-tuned weights are the result.

The policy's metrics come from the problem's evaluator (post-training quantization of
the original float model, as for every searcher, so results compare); the fine-tuned
model's own test metrics are in ``result.info["finetuned"]`` and its weights in
``result.info["state_dict"]`` (and in ``weights_out`` when that setting names a file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bitsearch.search import BaseSearcher, SearchRun
from bitsearch.settings import setting

from .ilp import ILPSolveSettings
from .ilp import solve as solve_ilp

TABLE_BATCH = 256  # batch size of the initial bit-gradient table (the bitgrad estimator's)


@dataclass(frozen=True, kw_only=True)
class BMPQSettings(ILPSolveSettings):
    epochs: int = setting(4, ge=0, help="quantization-aware training epochs")
    resolve_every: int = setting(1, ge=1, help="epochs between ILP solves")
    lr: float | None = setting(None, gt=0, help="AdamW learning rate (None: the evaluator's finetune_lr, a tenth "
                                                "of a task's)")
    batch_size: int | None = setting(None, ge=1, help="training batch size (None: the task's; a user's "
                                                      "train_loader keeps its own)")
    steps_per_epoch: int | None = setting(None, ge=1, help="training steps per epoch at most (None: the whole "
                                                           "training set)")
    samples: int = setting(512, ge=1, help="training samples for the initial bit-gradient table")
    weights_out: str | None = setting(None, help="a file for the fine-tuned state dict, written atomically")


class BMPQSearcher(BaseSearcher):
    """Quantization-aware training with bit-gradient sensitivities and an ILP re-solved
    every ``resolve_every`` epochs (BMPQ).

    Trains through the problem's trainable evaluator (:class:`bitsearch.problem.TrainableEvaluator`:
    a task, or ``problem_for_model(..., train_loader=..., train_step=...)``): each step is
    the evaluator's ``train_step`` on the fake-quantized model; the bit-gradients are read
    from the gradients it computed, just before the optimizer steps.

    Settings: :class:`BMPQSettings` (the ILP's ``method``, ``solver``, ``time_limit`` and
    ``gap`` included; ``bitsearch searchers bmpq`` lists them).
    """

    name = "bmpq"
    needs = "trainable"
    deterministic = False
    description = "quantization-aware training with bit-gradient sensitivities; ILP re-solved every k epochs (BMPQ)"
    settings_class = BMPQSettings

    def _ilp(self, problem, table):
        from dataclasses import replace

        s = self.config
        solution = solve_ilp(replace(problem, sensitivity=table), method=s.method, solver=s.solver,
                             time_limit=s.time_limit, gap=s.gap)
        return solution

    def _search(self, problem, run: SearchRun):
        import torch

        from bitsearch.quant import apply_policy, calibrate, quant_modules, set_policy
        from bitsearch.sensitivity.estimators import bitgrad_table
        from bitsearch.sensitivity.table import SensitivityTable
        from bitsearch.training import HookedOptimizer

        s = self.config
        evaluator = problem.evaluator
        space = problem.space
        calibration = evaluator.calibration
        float_model = evaluator.model
        lr = s.lr if s.lr is not None else evaluator.finetune_lr
        named = [b for b in space.weight_bits if isinstance(b, str)]
        if named:
            from bitsearch.errors import SearcherUnsupportedError

            raise SearcherUnsupportedError(f"searcher 'bmpq' measures bit-gradients between integer widths; named "
                                           f"formats ({', '.join(named)}) are not among them: use ilp, haq or autoq")
        low, high = min(space.weight_bits), max(space.weight_bits)
        grid = list(range(low, high + 1))
        columns = [grid.index(b) for b in space.weight_bits]
        names = [layer.name for layer in space.layers if not space.is_pinned(layer.name)]
        kernels = {layer.name: layer.kernels for layer in space.layers}
        history = []

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            # 1. the initial table and policy
            batches = evaluator.sensitivity_batches(s.samples, s.batch_size or TABLE_BATCH, run.seed)
            table = SensitivityTable(space.weight_bits, bitgrad_table(float_model, space, batches, evaluator.loss),
                                     space.act_bits if space.act_searched else (),
                                     self._act_table(float_model, space, batches, calibration, evaluator.loss),
                                     method="bitgrad")
            solution = self._ilp(problem, table)
            policy = solution.policy
            history.append({"epoch": 0, "policy_key": policy.key, "objective": solution.info.get("objective")})
            if not run.emit("progress", step=0, total=s.epochs, message="initial policy"):
                run.evaluate(policy, step=0, total=s.epochs)
                run.info.update({"history": history, "epochs_run": 0})
                return policy
            # 2. quantization-aware training
            qmodel = apply_policy(float_model, policy, calibration=calibration)
            layers = quant_modules(qmodel)
            params = [p for p in qmodel.parameters() if p.requires_grad]
            inner = torch.optim.AdamW(params, lr=lr, weight_decay=evaluator.weight_decay)
            sums = {n: np.zeros((kernels[n], len(grid) - 1)) for n in names}
            counter = {"steps": 0}

            def read_bit_gradients():
                """Before each step: the bit-gradients from the gradient the step computed."""
                self._accumulate(layers, names, grid, sums)
                counter["steps"] += 1

            optimizer = HookedOptimizer([inner], before_step=read_bit_gradients)
            epochs_data = evaluator.train_batches(run.seed, batch_size=s.batch_size)
            epochs_run = 0
            loss = math.nan
            for epoch in range(1, s.epochs + 1):
                qmodel.train()
                for step, batch in enumerate(epochs_data):
                    if s.steps_per_epoch and step >= s.steps_per_epoch:
                        break
                    loss = evaluator.train_step(qmodel, batch, optimizer)
                epochs_run = epoch
                qmodel.eval()
                # 3. re-solve every k epochs (not after the last: the last policy gets trained)
                if epoch % s.resolve_every == 0 and epoch < s.epochs and counter["steps"]:
                    weight = {}
                    for name in names:
                        saved = sums[name] / counter["steps"]
                        to_top = np.concatenate([np.cumsum(saved[:, ::-1], axis=1)[:, ::-1],
                                                 np.zeros((kernels[name], 1))], axis=1)[:, columns]
                        weight[name] = to_top if space.granularity == "kernel" else to_top.sum(axis=0, keepdims=True)
                    table = SensitivityTable(space.weight_bits, weight, table.act_bits, table.act, method="bmpq")
                    solution = self._ilp(problem, table)
                    if solution.policy != policy:
                        policy = solution.policy
                        set_policy(qmodel, policy)
                        calibrate(qmodel, calibration)
                    history.append({"epoch": epoch, "policy_key": policy.key,
                                    "objective": solution.info.get("objective")})
                    for name in names:
                        sums[name][:] = 0.0
                    counter["steps"] = 0
                if not run.emit("progress", step=epoch, total=s.epochs, message=f"epoch {epoch}",
                                loss=float(loss)):
                    break
            qmodel.eval()
        # 4. the result
        calibrate(qmodel, calibration)
        finetuned = evaluator.score_model(qmodel)
        state = {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()}
        if s.weights_out:
            from bitsearch._io import atomic_write

            atomic_write(s.weights_out, lambda handle: torch.save({"state_dict": state,
                                                                      "policy": policy.to_dict()}, handle))
        run.info.update({"history": history, "epochs_run": epochs_run, "finetuned": finetuned,
                         "state_dict": state, "ilp": solution.info})
        run.evaluate(policy, step=epochs_run, total=s.epochs)
        return policy

    @staticmethod
    def _act_table(model, space, batches, calibration, loss):
        if not space.act_searched:
            return {}
        from bitsearch.sensitivity.estimators import activation_table

        return activation_table(model, space, batches, calibration, loss)

    @staticmethod
    def _accumulate(layers, names, grid, sums) -> None:
        """Add ``|dL/dWq . (Q_{c+1}(W) - Q_c(W))|`` per kernel and integer width ``c``."""
        import torch

        from bitsearch.quant import fake_quantize_weight

        with torch.no_grad():
            for name in names:
                module = layers[name]
                grad = module.weight.grad
                if grad is None:
                    continue
                w = module.weight.detach()
                k = w.shape[0]
                previous = fake_quantize_weight(w, grid[0])
                g = grad.reshape(k, -1)
                for j, c in enumerate(grid[1:]):
                    current = fake_quantize_weight(w, c)
                    step = (current - previous).reshape(k, -1)
                    sums[name][:, j] += (g * step).sum(dim=1).abs().double().numpy()
                    previous = current

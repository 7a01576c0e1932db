"""Trainer: AdamW with warmup + cosine, gradient accumulation, clipping, autocast, periodic evaluation,
early stopping, checkpoints with exact resume, JSONL metrics and a progress bar.

Every batch is a pure function of (seed, step, micro-batch), and the RNG, optimiser and scheduler states are
checkpointed, so an interrupted-and-resumed run repeats exactly what an uninterrupted one does.
Under `torchrun`, each process trains on its shard of the same global batch (DDP, gloo on CPU, nccl on CUDA).
"""

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from mor.data import DatasetTask, StreamTask, Task, get_task
from mor.data.chars import Chars
from mor.durable import check_folder
from mor.errors import CheckpointError, check
from mor.nn import MoRModel
from mor.train import checkpoint
from mor.train.build import build_model, loss_weights
from mor.train.config import RunConfig, TrainConfig, dump, saved
from mor.train.devices import process_group, rng_state, set_rng_state, training_device
from mor.train.evaluate import check_examples, check_size, score, sized, token_score
from mor.train.resume import config_change
from mor.train.schedule import scheduler
from mor.train.seeds import batch_seed, check_eval_seed


class _Loss(nn.Module):
    """Puts `model.loss` behind `forward`, so DDP sees the pass it must synchronise."""

    def __init__(self, model: nn.Module, weights):
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, x: Tensor, y: Tensor):
        return self.model.loss(x, y, self.weights)


class Trainer:
    """Trains the model of `config` (or baseline `kind` with the same recipe) in `run_dir`."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None, kind: str | None = None,
                 console: Console | None = None, task: Task | None = None):
        self.kind = kind or config.model.kind
        self.config = config.model_copy(update={"model": config.model.model_copy(update={"kind": self.kind}),
                                                "data": config.data.resolved(), "compare": []})  # saved with it
        self.run_dir = Path(run_dir or config.checkpoint.dir)
        check_folder(self.run_dir, "checkpoint.dir (--out)")
        self.console = console or Console()
        self.device = training_device()
        self.rank, self.world = process_group(self.device)
        check(config.data.batch_size % self.world == 0, f"data.batch_size: {config.data.batch_size} cannot be "
              f"shared evenly among {self.world} processes (unequal shards would weigh examples unequally in the "
              f"averaged gradient); make it a multiple of {self.world}")
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.task: Task = task or get_task(config.data.task, **config.data.options)  # shared by a run's baselines
        self.data_fingerprints = self.task.fingerprints()  # the first saved with each checkpoint, checked on resume
        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model, self.task, self.kind).to(self.device)
        self.upcycling = isinstance(self.model, MoRModel) and len(self.model.experts) > 1 and config.train.upcycle > 0
        check(not (config.train.upcycle and self.task.tokens),
              f"train.upcycle: applies to vector and sequence models; task {self.task.name!r} gives token ids, "
              f"set train.upcycle: 0")
        if self.upcycling:
            self.model.upcycle()
        self.eval_size = self._eval_size(config.train.eval_size)
        for size in config.eval.sizes:  # checked now, not once every model has trained
            check_size(self.task, size, "eval.sizes")
        if "examples" in config.eval.model_fields_set:
            check_examples(self.task, "eval.examples")
        if isinstance(self.task, StreamTask) and not isinstance(self.task, Chars):  # chars: held-out text of its own
            check_eval_seed(config)
        self.loss = _Loss(self.model, loss_weights(config.train.loss))
        if self.world > 1:
            self.loss = DistributedDataParallel(self.loss, find_unused_parameters=True,
                                                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        tc = config.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = scheduler(self.optimizer, tc)
        check(tc.precision != "fp16" or self.device.type == "cuda",
              "train.precision: fp16 needs a CUDA device; use bf16 (or fp32) on CPU")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")  # fp16 only
        self.step, self.best, self.stale = 0, None, 0
        self._train_split: tuple[Tensor, Tensor] | None = None
        self._rng = rng_state(self.device)  # training draws start here, whatever other trainers do before fit()

    # data -----------------------------------------------------------------------------------------------
    def batch_at(self, step: int, micro: int) -> tuple[Tensor, Tensor]:
        """The global batch of (step, micro-batch), a pure function of the seed; this process's shard of it."""
        n, seed = self.config.data.batch_size, self.config.train.seed
        if isinstance(self.task, StreamTask):
            generator = torch.Generator().manual_seed(batch_seed(seed, step, micro))
            x, y = self.task.batch(n, generator)
        else:
            x, y = self._dataset_batch((step * self.config.train.grad_accum + micro) * n, n, seed)
        shard = slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        return x[shard].to(self.device), y[shard].to(self.device)

    def _dataset_batch(self, start: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """Rows start … start+n of the endless sequence of per-epoch shuffles of the training split."""
        if self._train_split is None:
            assert isinstance(self.task, DatasetTask)
            self._train_split = self.task.split("train")
        x, y = self._train_split
        size, rows = x.shape[0], []
        while n > 0:
            epoch, offset = divmod(start, size)
            order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            take = order[offset:offset + n]
            rows.append(take)
            start, n = start + take.numel(), n - take.numel()
        index = torch.cat(rows)
        return x[index], y[index]

    # training ---------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        """Train to `train.steps` (or early stop); returns the last evaluation."""
        tc, cc = self.config.train, self.config.checkpoint
        set_rng_state(self._rng, self.device)
        if resume:
            self._resume()
        elif self.rank == 0 and (self.run_dir / checkpoint.LATEST).exists():
            raise CheckpointError(f"{self.run_dir}: holds a run already; pass --resume to continue it, or set "
                                  f"checkpoint.dir to a new folder")
        if self.rank == 0 and tc.warmup >= tc.steps:
            self.console.print(f"note: train.warmup ({tc.warmup}) is not below train.steps ({tc.steps}), so the "
                               f"learning rate never reaches train.lr; set a shorter train.warmup for a run this short",
                               markup=False, highlight=False)
        metrics = self._open_metrics()
        last_eval: dict = {}
        training_s, examples = 0.0, 0  # the throughput counts training steps, not evaluations or checkpoints
        with self._progress() as progress:
            task_bar = progress.add_task(self.kind, total=tc.steps, completed=self.step, info="")
            stop = bool(tc.early_stop and self.stale >= tc.early_stop)  # a resumed run that had stopped stays so
            while self.step < tc.steps and not stop:
                started = time.perf_counter()
                logged = self._train_step()
                training_s += time.perf_counter() - started
                examples += self.config.data.batch_size * tc.grad_accum
                if self.step % tc.log_every == 0:
                    self._log(metrics, {"kind": "train", "step": self.step, **logged,
                                        "examples_per_s": examples / training_s})
                    training_s, examples = 0.0, 0
                improved = stop = False
                if self.step % tc.eval_every == 0 or self.step == tc.steps:
                    last_eval = self._agreed(self.validate())
                    self._log(metrics, {"kind": "eval", "step": self.step, **last_eval})
                    improved = self.best is None or last_eval["score"] > self.best
                    self.best, self.stale = (last_eval["score"], 0) if improved else (self.best, self.stale + 1)
                    stop = bool(tc.early_stop and self.stale >= tc.early_stop)
                    if not self.console.is_terminal and self.rank == 0:  # logs and CI get a line per evaluation
                        self.console.print(f"{self.kind} step {self.step}/{tc.steps}: "
                                           f"{self._status(logged, last_eval)}", highlight=False)
                if improved or stop or self.step % cc.every == 0 or self.step == tc.steps:
                    self.save(best=improved)
                progress.update(task_bar, completed=self.step, info=self._status(logged, last_eval))
        metrics.close()
        return last_eval

    def _train_step(self) -> dict[str, float]:
        """One optimiser step over `grad_accum` micro-batches; returns the mean of each loss term and the rate used."""
        tc = self.config.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(tc.grad_accum):
            x, y = self.batch_at(self.step, micro)
            with self._autocast():
                loss, parts, _ = self.loss(x, y)
            self.scaler.scale(loss / tc.grad_accum).backward()
            parts = {"loss": loss.detach(), **parts}
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + float(value) / tc.grad_accum
        if self.upcycling and self.step < tc.upcycle:
            self.model.share_expert_gradients()
        if tc.clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used, before the schedule moves on
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {**self._whole_batch(totals), "lr": lr}

    def _whole_batch(self, totals: dict[str, float]) -> dict[str, float]:
        """This process's loss terms averaged over all processes (equal shards of the batch), so that a torchrun
        run logs the loss of its whole batch, as one process would, not rank 0's shard."""
        if self.world == 1:
            return totals
        values = torch.tensor(list(totals.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(totals, (values / self.world).tolist(), strict=True))

    def _autocast(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _agreed(self, scores: dict[str, float]) -> dict[str, float]:
        """Rank 0's scores on every process, so all take the same best and stop decisions: GPU kernels that add in
        any order can tip a near-tie differently on each, and a process that stops alone leaves the others waiting."""
        if self.world == 1:
            return scores
        shared = [scores]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Held-out score at the largest training size under the model's own halting rule; for token tasks,
        bits per character and next-token accuracy (score = -bits per character). Its examples are drawn with a
        seed of their own (`eval.seed` + 1), or from the validation text, so the examples that choose the best
        checkpoint are never the reported test examples (a chars config without test text cannot early-stop)."""
        self.model.eval()
        seed = self.config.eval.seed + 1
        if self.task.tokens:
            x, y = self.task.val_set(512, seed=seed)
            scores = token_score(self.model(x.to(self.device))[0], y.to(self.device))
            return {**scores, "score": -scores["bits_per_char"]}
        if isinstance(self.task, StreamTask):
            x, y = self.task.val_set(512, self.eval_size, seed=seed)
        else:
            x, y = self.task.split("val")
        x, y = x.to(self.device), y.to(self.device)
        out = self.model(x, return_diagnostics=True) if hasattr(self.model, "halting") else (self.model(x), None)
        output, diagnostics = out
        result = {"mean_steps": float(diagnostics.steps[diagnostics.mask].float().mean())} if diagnostics else {}
        measured = score(self.model, output, y)
        return {**measured, "score": measured["accuracy"] if "mse" not in measured else -measured["mse"], **result}

    def _eval_size(self, size: int | None) -> int | None:
        """The instance size `validate` uses: `size` once checked against the task, else the largest trained."""
        task = self.task
        if size is None:
            return task.sizes[1] if sized(task) else None
        check_size(task, size, "train.eval_size")
        return size

    # state ------------------------------------------------------------------------------------------------
    @property
    def stopped_early(self) -> bool:
        """Whether early stopping ended training before `train.steps`."""
        return stopped_early(self.step, self.stale, self.config.train)

    def restore_best(self) -> int:
        """Load the best checkpoint's weights into the model, as early stopping promises; returns its step."""
        loaded = checkpoint.load(self.run_dir / "best")
        checkpoint.restore(self.model, loaded.weights, loaded.path)
        return loaded.state["step"]

    def save(self, best: bool = False) -> None:
        if self.rank != 0:
            return
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": rng_state(self.device), "best": self.best,
                 "stale": self.stale, "data": self.data_fingerprints[0]}
        checkpoint.save(self.run_dir, self.step, self.model, state, dump(self.config),
                        keep_last=self.config.checkpoint.keep_last, best=self.best if best else None)

    def _resume(self) -> None:
        if not (self.run_dir / checkpoint.LATEST).exists():
            if self.rank == 0:
                self.console.print(f"{self.run_dir}: no checkpoint yet, starting from step 0")
            return
        loaded = checkpoint.load(self.run_dir)
        change = config_change(saved(loaded.config, loaded.path / checkpoint.CONFIG), self.config)
        check(change is None, f"{self.run_dir}: cannot resume with a changed config: {change}; resume with the "
                              "config the run was trained with, or set checkpoint.dir to a new folder", CheckpointError)
        checkpoint.check_data(loaded.state, self.data_fingerprints, self.run_dir,
                              "resume with the data the run was trained on, or set checkpoint.dir to a new folder")
        checkpoint.restore(self.model, loaded.weights, loaded.path)
        state = loaded.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.step, self.best, self.stale = state["step"], state["best"], state["stale"]

    def _open_metrics(self):
        """metrics.jsonl, with lines past the resumed step dropped so the log matches the weights."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0:
            return open(os.devnull, "w")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = [line for line in path.read_text().splitlines() if _step_of(line) <= self.step] \
            if path.exists() and self.step else []
        path.write_text("".join(line + "\n" for line in kept))
        return open(path, "a")

    def _log(self, metrics, record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=self.console, disable=self.rank != 0)

    @staticmethod
    def _status(logged: dict, last_eval: dict) -> str:
        parts = [f"loss {logged['loss']:.3f}"]
        if "bits_per_char" in last_eval:
            parts.append(f"val {last_eval['bits_per_char']:.3f} bits/char")
        if "mse" in last_eval:  # values: the share within a tolerance is no accuracy to show
            parts.append(f"val MSE {last_eval['mse']:.4f}")
        elif "accuracy" in last_eval:
            parts.append(f"val acc {last_eval['accuracy']:.1%}")
        if "mean_steps" in last_eval:
            parts.append(f"val steps {last_eval['mean_steps']:.1f}")
        return "  ".join(parts)


def _step_of(line: str) -> float:
    """The step a metrics line records; a line cut short by a crash counts as after every step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def stopped_early(step: int, stale: int, train: TrainConfig) -> bool:
    """Whether a run at `step`, `stale` evaluations without gain, was ended by early stopping before `train.steps`."""
    return bool(train.early_stop and stale >= train.early_stop) and step < train.steps

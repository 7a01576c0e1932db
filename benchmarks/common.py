"""Helpers every benchmark shares: timing, ratios, machine description, result files, training and matching models."""

import contextlib
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from matplotlib.figure import Figure
from rich.console import Console
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, addmm_flop, sdpa_backward_flop_count, sdpa_flop_count

from mor.data import Task
from mor.nn import Halting
from mor.nn.models import MoRModel
from mor.train import checkpoint
from mor.train.build import build_model
from mor.train.config import RunConfig
from mor.train.plots import save
from mor.train.trainer import Trainer


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: list[int]) -> dict:
    """What the numbers were measured on, so a result file stands on its own."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "python": platform.python_version(), "threads": threads,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_cpu_s() -> float:
    """CPU-seconds of this process and of its finished children (a suite's worker processes, its server)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherLoad:
    """Measures how many cores other processes kept busy meanwhile: the shared-machine noise, as a number.

    Read it after the suite's own child processes have exited, or their work counts as other load."""

    def __init__(self):
        self.start = (_busy_cpu_s(), _own_cpu_s(), time.perf_counter())

    def cores(self) -> float:
        busy, own, wall = (now - then for now, then in zip((_busy_cpu_s(), _own_cpu_s(), time.perf_counter()),
                                                           self.start, strict=True))
        return max(busy - own, 0.0) / wall


def synchronizer(device: str) -> Callable[[], None]:
    """A barrier to call around timings: waits for queued CUDA kernels, does nothing on CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else lambda: None


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 3,
                reset: Callable[[], None] = lambda: None, sync: Callable[[], None] = lambda: None,
                ) -> dict[str, list[float]]:
    """Seconds per call of each fn, `rounds` times; each round runs every fn once in a rotating order.

    Interleaving spreads shared-machine noise over all fns alike, so per-round ratios are fair.
    `reset` runs untimed before each call (e.g. to drop gradients).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            reset()
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            reset()
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios numerator_r / denominator_r."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def fmt_ratio(r: dict[str, float]) -> str:
    """A paired ratio as 'median (min–max)'."""
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


class _OpsSeen(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.name())
        return func(*args, **(kwargs or {}))


def ops_run(fn: Callable[[], object]) -> set[str]:
    """Names of the aten ops `fn` dispatches: checks which kernel really ran, quietly (no profiler logs)."""
    with _OpsSeen() as seen:
        fn()
    return seen.names


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def md_machine(info: dict, other_cores: float | None = None) -> str:
    """The machine description as markdown, with a warning when other processes competed for the cores."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    line = (f"Machine: {info['cpu']}, {info['usable_cores']}/{info['cores']} usable cores{gpu}; torch {info['torch']}, "
            f"transformers {info['transformers']}, Python {info['python']}; {info['date']}.")
    if other_cores is None:
        return line
    line += f" Other processes kept {other_cores:.2f} cores busy on average during the run."
    if other_cores > 0.2:
        line += " **Warning: the machine was shared, so this run's timings are less reliable.**"
    return line


class SuiteRun:
    """One run of a suite: its wall time and the other processes' load are measured from creation to `finish`."""

    def __init__(self, name: str, quick: bool, threads: list[int]):
        self.name, self.quick, self.threads = name, quick, threads
        self.start, self.load = time.perf_counter(), OtherLoad()

    def finish(self, out_dir: str, results: dict, markdown: Callable[[dict], str],
               figure: Callable[[dict], Figure]) -> dict:
        """`results` with the machine, the load and the wall time added, written as NAME.json, NAME.md, NAME.png."""
        results = {"machine": machine(self.threads), "quick": self.quick, **results,
                   "other_load_cores": self.load.cores(), "wall_s": time.perf_counter() - self.start}
        write(out_dir, self.name, results, markdown(results))
        save(figure(results), Path(out_dir) / f"{self.name}.png")
        return results


def write(out_dir: str, name: str, results: dict, markdown: str) -> None:
    """Write `name`.json and `name`.md under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown + "\n")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (n − 1; 0 for one value) of repeated measurements, e.g. folds."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def fmt_mean_std(m: dict[str, float], digits: int = 3) -> str:
    """A mean_std result as 'mean ± std'."""
    return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to `n` inside the block, restored after it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def with_dim(config: RunConfig, dim: int) -> RunConfig:
    """`config` with model.dim replaced: how a baseline is widened or narrowed to match MoR."""
    return config.model_copy(update={"model": config.model.model_copy(update={"dim": dim})})


class Trained(NamedTuple):
    """A model trained by `train_model`, the seconds `fit` took and the optimiser steps it ran."""

    model: nn.Module
    seconds: float
    steps: int


def train_model(config: RunConfig, task: Task, kind: str, best: bool = False) -> Trained:
    """Train `kind` on `task` with mor's own Trainer, silently, in a temporary folder that is removed after.

    `best`: end with the weights of the best validation score (with `train.early_stop`, early stopping that keeps
    the best model) instead of the last. The model comes back on the CPU, where the suites evaluate it, in eval
    mode; building it is not timed.
    """
    with tempfile.TemporaryDirectory(prefix="mor-bench-") as run_dir:
        trainer = Trainer(config, Path(run_dir), kind=kind, console=Console(quiet=True), task=task)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        if best:
            loaded = checkpoint.load(Path(run_dir) / "best")
            checkpoint.restore(trainer.model, loaded.weights, loaded.path)
    return Trained(trainer.model.cpu().eval(), seconds, trainer.step)


def closest_dim(build: Callable[[int], nn.Module], measure: Callable[[nn.Module], float], target: float,
                dims: range) -> int:
    """The width in `dims` whose model's `measure` (parameters, FLOPs: growing with width) is closest to `target`.

    How a baseline is matched to MoR; bisection, so only a few models are built and measured.
    """
    low, high = 0, len(dims) - 1
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if measure(build(dims[mid])) < target else (low, mid)
    return min(dims[max(low - 1, 0):low + 1], key=lambda dim: abs(measure(build(dim)) - target))


def matched_dims(cfg: RunConfig, task: Task, kinds: Iterable[str], size: Callable[[nn.Module], float], dims: range,
                 own: Collection[str] = ("mor",)) -> dict[str, int]:
    """Each kind's width: the config's own for the kinds in `own`, else the width in `dims` whose `size`
    (parameters, FLOPs) is closest to MoR's. How every suite matches its baselines to MoR."""
    target = size(build_model(cfg.model, task, "mor"))
    return {kind: cfg.model.dim if kind in own else
            closest_dim(lambda d, k=kind: build_model(with_dim(cfg, d).model, task, k), size, target, dims)
            for kind in kinds}


def call_options(model: nn.Module, halting: Halting | None = None) -> dict:
    """Forward options: a routed model (MoRModel) runs `halting`, by default its training depth (matched
    compute), and returns its diagnostics; dense takes none."""
    if not isinstance(model, MoRModel):
        return {}
    return {"halting": halting or Halting(max_steps=model.train_steps), "return_diagnostics": True}


def flops_on(probe: Tensor) -> Callable[[nn.Module], float]:
    """A model's forward FLOPs per example on `probe` at its training depth: the size FLOP-matched suites compare."""
    return lambda model: counted(model, probe, **call_options(model))[1]


def _addmm_(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """In-place addmm (the fused mixture's backward uses it): the FLOPs of its product, as addmm's."""
    return addmm_flop(self_shape, a_shape, b_shape)


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention's forward: the FLOPs of its two products, as for scaled_dot_product_attention."""
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """CPU flash attention's backward, as for scaled_dot_product_attention's."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (matrix products, convolutions, attention; element-wise work is not counted) with the
    ops it has no formula for counted too: in-place addmm, and attention on CPU, which it would count as 0."""
    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={
        aten.addmm_: _addmm_, aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward})


def counted(model: nn.Module, x: Tensor, **kwargs) -> tuple[Any, float]:
    """`model(x, **kwargs)` in eval mode under no_grad, and its forward FLOPs per example (`flop_counter`).
    Halted inputs leave the batch, so adaptive halting shows here as fewer FLOPs."""
    model.eval()
    with flop_counter() as counter, torch.no_grad():
        output = model(x, **kwargs)
    return output, counter.get_total_flops() / x.shape[0]

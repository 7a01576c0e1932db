"""Layer speed: MoRLayer vs a dense SwiGLU of equal active parameters vs Hugging Face's Mixtral MoE block.

Part 1 times the four layers forward and forward+backward, interleaved round by round, and reports
tokens/s and per-round paired time ratios, and the activation memory each keeps for backward. Part 2 times
reflection with adaptive halting against a fixed depth, to see how much of the theoretical saving (halted
inputs leave the batch) is real.

Run: `python -m benchmarks.layer_speed [--quick]` or `mor bench layer`; writes layer.json and layer.md.
"""

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mor.memory import keep_freed_memory, saved_for_backward
from mor.nn.cells import MLPCell
from mor.nn.experts import SwiGLU
from mor.nn.layer import MoRLayer
from mor.nn.reflection import Halting, ReflectionExpert

from .common import (
    OtherLoad,
    fmt_ratio,
    interleaved,
    machine,
    md_machine,
    md_table,
    ops_run,
    paired_ratio,
    synchronizer,
    write,
)

try:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
except ImportError:
    MixtralSparseMoeBlock = None

SEED = 0
LAYERS = {"mor": "MoRLayer", "dense": "dense SwiGLU", "mixtral_eager": "Mixtral eager",
          "mixtral_grouped_mm": "Mixtral grouped_mm"}


@dataclass(frozen=True)
class Config:
    """One layer shape: width, expert hidden width, experts, top-k, and tokens per call."""

    name: str
    dim: int
    hidden: int
    experts: int
    tokens: int
    k: int = 2


CONFIGS = (Config("small", 256, 512, 8, 2048), Config("large", 512, 1024, 16, 4096))
DEFAULT_ALLOCATOR, KEPT_ALLOCATOR = "glibc default", "freed memory kept"  # see mor.memory


def init_(module: nn.Module) -> nn.Module:
    """Same seeded N(0, 0.02) init for every layer; Mixtral's weights start as torch.empty (NaN, denormals)."""
    torch.manual_seed(SEED)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
    return module


def mixtral(cfg: Config, implementation: str) -> nn.Module:
    """HF's Mixtral block; `experts_implementation` sets config._experts_implementation, which picks the kernel."""
    return MixtralSparseMoeBlock(MixtralConfig(hidden_size=cfg.dim, intermediate_size=cfg.hidden,
                                               num_local_experts=cfg.experts, num_experts_per_tok=cfg.k,
                                               experts_implementation=implementation))


def build(cfg: Config, device: str, dtype: torch.dtype = torch.float32,
          ) -> dict[str, tuple[nn.Module, Callable[[Tensor], Tensor]]]:
    """Each layer with a call mapping (tokens, dim) → (tokens, dim); Mixtral wants (batch, seq, dim)."""
    layers = {"mor": init_(MoRLayer.swiglu(cfg.dim, cfg.hidden, cfg.experts, k=cfg.k)),
              "dense": init_(SwiGLU(cfg.dim, cfg.k * cfg.hidden))}
    if MixtralSparseMoeBlock is not None:
        layers |= {f"mixtral_{impl}": init_(mixtral(cfg, impl)) for impl in ("eager", "grouped_mm")}
    return {name: (m.to(device, dtype), on_sequence(m) if name.startswith("mixtral") else m)
            for name, m in layers.items()}


def on_sequence(block: nn.Module) -> Callable[[Tensor], Tensor]:
    """(tokens, dim) → (tokens, dim) through a block taking (batch, seq, dim); v4 Mixtral returned a tuple."""
    def call(x: Tensor) -> Tensor:
        y = block(x[None])
        return (y[0] if isinstance(y, tuple) else y)[0]
    return call


def time_pass(layers: dict, x: Tensor, g: Tensor, backward: bool, rounds: int, device: str) -> dict[str, list[float]]:
    """Interleaved timings of every layer: eval forward under no_grad, or train forward + y.backward(g)."""
    sync = synchronizer(device)
    for m, _ in layers.values():
        m.train(backward)
    if not backward:
        with torch.no_grad():
            return interleaved({n: (lambda f=f: f(x)) for n, (_, f) in layers.items()}, rounds, sync=sync)
    xg = x.detach().requires_grad_()

    def reset():
        for m, _ in layers.values():
            m.zero_grad(set_to_none=True)
        xg.grad = None

    return interleaved({n: (lambda f=f: f(xg).backward(g)) for n, (_, f) in layers.items()}, rounds,
                       reset=reset, sync=sync)


def probe(layers: dict, x: Tensor, notes: list[str]) -> dict[str, bool]:
    """One forward per layer: whether aten::_grouped_mm really ran; a layer that fails here is dropped, noted."""
    grouped = {}
    for name, (_, f) in list(layers.items()):
        try:
            with torch.no_grad():
                grouped[name] = "aten::_grouped_mm" in ops_run(lambda f=f: f(x))
        except RuntimeError as e:
            del layers[name]
            notes.append(f"{LAYERS[name]} skipped on {x.device.type}: {str(e).splitlines()[0]}")
    return grouped


def active_params(cfg: Config) -> dict[str, int]:
    """Parameters one token touches: router plus k experts for the sparse layers, all for the dense one."""
    expert = 3 * cfg.dim * cfg.hidden
    return {"sparse": cfg.dim * cfg.experts + cfg.k * expert, "dense": cfg.k * expert}


def settings(threads: list[int], gpu: bool = True) -> list[tuple[str, int | None, torch.dtype]]:
    """(device, CPU threads, dtype) to time on: fp32 on the CPU at each thread count and, when `gpu` and a GPU is
    present, fp32 and bf16 there (bf16 is what torch's grouped-matmul kernel takes, and what GPUs train MoE in)."""
    cuda = [("cuda", None, d) for d in (torch.float32, torch.bfloat16)] if gpu and torch.cuda.is_available() else []
    return [("cpu", t, torch.float32) for t in threads] + cuda


def run_layers(configs: tuple[Config, ...], threads: list[int], rounds: int, notes: list[str],
               allocator: str = DEFAULT_ALLOCATOR) -> list[dict]:
    """Every config × setting × pass, as result rows; `allocator` names the malloc setting, which a GPU's memory
    does not use, so the GPU is timed with the default one only."""
    rows = []
    for cfg in configs:
        for device, n_threads, dtype in settings(threads, gpu=allocator == DEFAULT_ALLOCATOR):
            if n_threads is not None:
                torch.set_num_threads(n_threads)
            layers = build(cfg, device, dtype)
            torch.manual_seed(SEED)
            x = torch.randn(cfg.tokens, cfg.dim, device=device, dtype=dtype)
            g = torch.randn(cfg.tokens, cfg.dim, device=device, dtype=dtype)
            grouped = probe(layers, x, notes)
            for backward in (False, True):
                times = time_pass(layers, x, g, backward, rounds, device)
                row = {"config": asdict(cfg), "device": device, "threads": n_threads, "allocator": allocator,
                       "dtype": str(dtype).removeprefix("torch."),
                       "pass": "forward+backward" if backward else "forward", "rounds": rounds,
                       "active_params": active_params(cfg), "grouped_mm_kernel": grouped,
                       "median_s": {n: statistics.median(t) for n, t in times.items()}}
                row["tokens_per_s"] = {n: cfg.tokens / s for n, s in row["median_s"].items()}
                row["vs_dense"] = {n: paired_ratio(times["dense"], t) for n, t in times.items() if n != "dense"}
                if "mixtral_grouped_mm" in times:
                    row["mor_vs_mixtral_grouped_mm"] = paired_ratio(times["mixtral_grouped_mm"], times["mor"])
                rows.append(row)
                print(f"  {cfg.name} {device} {row['dtype']} threads={n_threads} {allocator} {row['pass']}: "
                      + ", ".join(
                    f"{n} {v / 1e3:.1f}k tok/s" for n, v in row["tokens_per_s"].items()), flush=True)
    return rows


def run_memory(configs: tuple[Config, ...]) -> list[dict]:
    """Activation memory per layer and config: bytes autograd keeps for backward in one training forward (CPU)."""
    rows = []
    for cfg in configs:
        layers = build(cfg, "cpu")
        torch.manual_seed(SEED)
        x = torch.randn(cfg.tokens, cfg.dim, requires_grad=True)
        for m, _ in layers.values():
            m.train()
        rows.append({"config": asdict(cfg), "saved_bytes": {n: saved_for_backward(lambda f=f, x=x: f(x))
                                                            for n, (_, f) in layers.items()}})
    return rows


def halting_expert(max_steps: int, threshold: float) -> ReflectionExpert:
    """A ReflectionExpert whose critic logit is s·x₀ + t − c at step t: input-dependent start, rate 1 per step.

    State unit 0 starts at s·x₀ (encoder) and the cell adds exactly 1 to it per step; the critic reads only
    that unit; the state's layer norm is off so the unit can count. With x₀ ~ N(0, 1), s = max_steps/4 and c
    centring the crossing, inputs halt spread over 1..max_steps (clipped at both ends). Everything else keeps
    its random init: only the halting is set.
    """
    torch.manual_seed(SEED)
    expert = ReflectionExpert(MLPCell(64), in_dim=32, out_dim=10, dim=64, train_steps=8, state_norm=False).eval()
    c = (max_steps + 1) / 2 - math.log(threshold / (1 - threshold))  # crossing τ at t = (M+1)/2 − s·x₀
    with torch.no_grad():
        for w in (expert.encode.weight[0], expert.cell.net[-1].weight[0], expert.judge.weight[1]):
            w.zero_()
        expert.encode.weight[0, 0], expert.encode.bias[0] = max_steps / 4, 0.0  # unit 0 starts at s·x₀
        expert.cell.net[-1].bias[0] = 1.0  # each step adds 1 to it
        expert.judge.weight[1, 0], expert.judge.bias[1] = 1.0, -c  # critic logit = unit 0 − c
    return expert


def run_halting(quick: bool = False, threads: int = 1) -> dict:
    """Eval-mode reflection on 4096 inputs: adaptive halting (critic ≥ τ) vs fixed max depth, interleaved."""
    torch.set_num_threads(threads)
    max_steps, threshold, rounds = 16, 0.9, 20 if quick else 60
    expert = halting_expert(max_steps, threshold)
    torch.manual_seed(SEED)
    x = torch.randn(4096, 32)
    rules = {"adaptive": Halting(max_steps=max_steps, threshold=threshold),
             "fixed": Halting(max_steps=max_steps, threshold=None)}
    steps = {n: expert(x, halting=rule).steps.float() for n, rule in rules.items()}
    times = interleaved({n: (lambda r=rule: expert(x, halting=r)) for n, rule in rules.items()}, rounds)
    mean_steps = steps["adaptive"].mean().item()
    ratio = paired_ratio(times["adaptive"], times["fixed"])
    return {"inputs": x.shape[0], "threads": threads, "rounds": rounds, "max_steps": max_steps,
            "threshold": threshold, "mean_steps": mean_steps, "min_steps": steps["adaptive"].min().item(),
            "fixed_mean_steps": steps["fixed"].mean().item(), "step_fraction": mean_steps / max_steps,
            "median_s": {n: statistics.median(t) for n, t in times.items()}, "time_ratio": ratio,
            "goal_met": ratio["median"] <= 1.25 * mean_steps / max_steps,
            "spread": "constructed: critic logit = s·x₀ + t − c (see halting_expert), not trained"}


def markdown(results: dict) -> str:
    """The results as a markdown report: how it was measured, the layer table, the halting line."""
    rows = []
    for r in results["layers"]:
        tps, vs = r["tokens_per_s"], r["vs_dense"]
        cfg = r["config"]
        rows.append([f"{cfg['name']} (d={cfg['dim']}, h={cfg['hidden']}, E={cfg['experts']}, {cfg['tokens']} tok)",
                     r["device"], r["dtype"], str(r["threads"] or "–"), r["allocator"], r["pass"],
                     *[f"{tps[n] / 1e3:.1f}k" if n in tps else "skipped" for n in LAYERS],
                     *[fmt_ratio(vs[n]) if n in vs else "–" for n in LAYERS if n != "dense"],
                     fmt_ratio(r["mor_vs_mixtral_grouped_mm"]) if "mor_vs_mixtral_grouped_mm" in r else "–"])
    header = ["config", "device", "dtype", "threads", "malloc", "pass", *[f"{v} tok/s" for v in LAYERS.values()],
              *[f"{v} vs dense" for n, v in LAYERS.items() if n != "dense"], "MoRLayer vs Mixtral grouped_mm"]
    first, h = results["layers"][0], results["halting"]
    kernels = {f"{r['device']} in {r['dtype']}": r["grouped_mm_kernel"] for r in results["layers"]}
    lines = [
        "# Layer speed", "", md_machine(results["machine"], results["other_load_cores"]), "",
        f"Top-{first['config']['k']}, fp32 on the CPU, fp32 and bf16 on a GPU; {first['rounds']} rounds per row "
        "after 3 warm-up calls per layer; each "
        "round runs every layer once in a rotating order. tokens/s = tokens / median seconds per call. "
        "Forward: eval mode under torch.no_grad. Forward+backward: train mode, `y.backward(g)` with a fixed random g, "
        "input requires grad, grads set to None before each call (untimed).",
        "Ratios are paired within each round, shown as median (min–max): `X vs dense` = time(dense) / time(X), so "
        "above 1 means X is faster than a dense SwiGLU of width k·h (the same active expert parameters; the sparse "
        "layers add a d×E router). `MoRLayer vs Mixtral grouped_mm` = time(Mixtral grouped_mm) / time(MoRLayer).",
        f"malloc: `{DEFAULT_ALLOCATOR}`, or `{KEPT_ALLOCATOR}` (`mor.memory.keep_freed_memory`, what `mor train` "
        "sets: freed large blocks stay in the heap instead of being unmapped and page-faulted in again; run after "
        "the default rows, in the same process, because it cannot be undone).",
        "All layers: the same seed and N(0, 0.02) init. Mixtral's implementation is set by "
        "`MixtralConfig(experts_implementation=...)`, checked by recording the aten ops each forward dispatches.",
        *[f"Grouped-matmul kernel (aten::_grouped_mm) ran on {device}: "
          + ", ".join(f"{LAYERS[n]} {'yes' if v else 'no'}" for n, v in seen.items()) + "."
          for device, seen in kernels.items()],
        *[f"Note: {n}" for n in results["notes"]], "",
        md_table(header, rows), "",
        "## Activation memory", "",
        "What autograd keeps for backward in one training forward, in MiB (`mor.memory.saved_for_backward`: saved "
        "tensors, parameters and the input excepted), and each layer's ratio to dense.", "",
        md_table(["config", *LAYERS.values()],
                 [[m["config"]["name"], *[f"{m['saved_bytes'][n] / 2**20:.1f} "
                                          f"({m['saved_bytes'][n] / m['saved_bytes']['dense']:.2f}×)"
                                          if n in m["saved_bytes"] else "skipped" for n in LAYERS]]
                  for m in results["memory"]]), "",
        "## Reflection with halting (eval)", "",
        f"ReflectionExpert(MLPCell(64), in 32, out 10, dim 64), {h['inputs']} inputs, threads {h['threads']}, "
        f"{h['rounds']} interleaved rounds. Halting spread is **constructed, not trained**: the critic logit is set to "
        f"s·x₀ + t − c (an input-dependent start, +1 per step), so inputs cross τ = {h['threshold']} at different "
        "steps (the state's layer norm is off, so one state unit can count steps); this measures the mechanism "
        "(halted inputs leave the batch), not a critic's quality.", "",
        md_table(["adaptive steps (mean / max)", "step fraction", "adaptive ms", "fixed-depth ms",
                  "time ratio adaptive/fixed", "goal: ratio ≤ 1.25 × step fraction"],
                 [[f"{h['mean_steps']:.2f} / {h['max_steps']}", f"{h['step_fraction']:.3f}",
                   f"{h['median_s']['adaptive'] * 1e3:.1f}", f"{h['median_s']['fixed'] * 1e3:.1f}",
                   fmt_ratio(h["time_ratio"]),
                   f"{'met' if h['goal_met'] else 'NOT met'} (≤ {1.25 * h['step_fraction']:.3f})"]]), "",
        f"Wall time: {results['wall_s']:.0f} s.",
    ]
    return "\n".join(lines)


def run(quick: bool = False, threads: list[int] | None = None, out_dir: str = "bench-results",
        rounds: int | None = None) -> dict:
    """Time the layers and halting, write `out_dir`/layer.json and layer.md, and return the results."""
    start, load, saved_threads = time.perf_counter(), OtherLoad(), torch.get_num_threads()
    threads = threads or ([1] if quick else [1, 2])
    notes = [] if MixtralSparseMoeBlock is not None else ["transformers is not installed: Mixtral skipped."]
    try:
        configs, rounds = CONFIGS[:1] if quick else CONFIGS, rounds or (15 if quick else 40)  # 60 took 19 min
        layers = run_layers(configs, threads, rounds, notes)
        memory = run_memory(configs)
        halting = run_halting(quick, threads=threads[0])
        if not quick and keep_freed_memory():  # last: the setting cannot be undone in this process
            layers += run_layers(configs, threads[:1], rounds, notes, KEPT_ALLOCATOR)
    finally:
        torch.set_num_threads(saved_threads)
    results = {"machine": machine(threads), "quick": quick, "notes": notes, "layers": layers, "memory": memory,
               "halting": halting,
               "other_load_cores": load.cores(), "wall_s": time.perf_counter() - start}
    write(out_dir, "layer", results, markdown(results))
    return results


def main() -> None:
    """`python -m benchmarks.layer_speed [--quick] [--threads 1,2] [--out DIR]`: run and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small config, 1 thread, few rounds (< 30 s)")
    parser.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    print(markdown(run(args.quick, args.threads, args.out, args.rounds)))


if __name__ == "__main__":
    main()

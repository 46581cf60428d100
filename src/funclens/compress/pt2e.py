"""PT2E static int8 quantization with torchao's x86 inductor quantizer, compiled by inductor, with its latency.

The method for :class:`funclens.config.Pt2eCfg` (the optional extra ``funclens[torchao]``), as PyTorch's
x86 inductor quantization tutorial does it:

1. ``torch.export.export`` the fp32 model (eval mode) with a dynamic batch dimension;
2. ``prepare_pt2e`` with ``X86InductorQuantizer`` and its default static config
   (``get_default_x86_inductor_quantization_config()``: uint8 activations, one scale and zero point per
   tensor from a histogram observer; int8 weights, symmetric, one scale per output channel);
3. calibrate: the observers see every calibration image once, in chunks of :data:`CALIBRATION_CHUNK`;
4. ``convert_pt2e``, then ``torch.compile`` with inductor and ``torch._inductor.config.freezing = True``,
   so every convolution and linear layer runs as a oneDNN int8 kernel (``onednn::qconv_pointwise``,
   ``onednn::qlinear_pointwise``) on the CPU.

The fp32 model is exported and compiled alike (inductor, freezing), and both run the same batch of
``latency_batch`` images (:data:`LATENCY_BATCH`, fewer when there are fewer calibration images):
:data:`LATENCY_WARMUP` untimed calls each, then :data:`LATENCY_REPEATS` timed calls each, the two models
alternating so that background load hits both alike; ``latency_ms`` and ``fp32_latency_ms`` are the
medians, in milliseconds, on the threads torch uses in that process (``torch.get_num_threads()``).

Both are compiled for one batch shape, ``latency_batch`` images, and :class:`FixedBatch` runs any number of
images through it in chunks, padding the last one with zeros (each image's output depends on that image
alone: the quantization parameters are fixed by calibration). The export keeps its batch dimension dynamic,
so calibration takes chunks of any size; the compilation does not, because in torch 2.14 inductor's int8
convolution with a symbolic batch size fails its own stride check at run time.

The returned model is inference-only and not loadable into ``create_model(...)`` (``loadable=False``): its
predictions are what count.

Example:
    >>> run = FixedBatch(nn.Linear(3, 2), torch.zeros(4, 3))
    >>> tuple(run(torch.ones(10, 3)).shape)   # 10 images through a 4-image batch: 3 calls
    (10, 2)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import platform
import statistics
import time
import warnings
from types import SimpleNamespace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from funclens.compress import CompressInfo, register
from funclens.compress.torchao import import_torchao
from funclens.config import ConfigError, Pt2eCfg

CALIBRATION_CHUNK = 256  # images per calibration forward pass: bounds the observers' activation memory
LATENCY_BATCH = 64       # images in the timed batch (the paper's batch size)
LATENCY_WARMUP = 3       # untimed calls per model first: oneDNN primitive caches and the allocator warm up
LATENCY_REPEATS = 20     # timed calls per model; LeNet on 64 8x8 digits takes about 1 ms a call on one core


class FixedBatch(nn.Module):
    """Runs ``fn``, made for one batch shape, on inputs of any batch size: chunks, the last padded with zeros.

    The input is copied into one preallocated channels-last batch, so ``fn`` sees the same shape and
    strides on every call (a compiled ``fn`` is never recompiled) and the memory layout the x86 int8
    kernels prefer. ``fn`` is kept as a plain attribute, not a submodule: ``eval()``, ``.to()`` and
    ``state_dict()`` must not reach an exported, frozen graph whose tensors the compiled code has captured
    (an exported module refuses ``eval()``). Inference only: it runs under ``torch.no_grad()``.

    Args:
        fn: maps a batch like ``example`` to outputs with the batch along dimension 0.
        example: a batch of the shape and dtype ``fn`` was made for.
        about: a line for ``repr``.

    Example:
        >>> run = FixedBatch(nn.Identity(), torch.zeros(4, 1, 2, 2))
        >>> x = torch.arange(24.0).view(6, 1, 2, 2)
        >>> torch.equal(run(x), x), run.batch
        (True, 4)
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, about: str = "") -> None:
        super().__init__()
        self.__dict__["_fn"] = fn   # bypasses nn.Module's registration of submodules, on purpose (above)
        fmt = torch.channels_last if example.dim() == 4 else torch.contiguous_format
        self._buf = torch.empty_like(example, memory_format=fmt).copy_(example)
        self.batch = len(example)
        self.about = about

    def extra_repr(self) -> str:
        return f"batch={self.batch}" + (f", {self.about}" if self.about else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(self._buf.shape[1:]):
            raise ConfigError(f"this model takes inputs [N, {', '.join(map(str, self._buf.shape[1:]))}], "
                              f"got {list(x.shape)}")
        out = []
        with torch.no_grad():
            for i in range(0, max(len(x), 1), self.batch):
                chunk = x[i:i + self.batch]
                self._buf[:len(chunk)].copy_(chunk)
                self._buf[len(chunk):].zero_()
                # a copy: fn's output may be (a view of) the batch buffer, which the next chunk overwrites
                out.append(self._fn(self._buf)[:len(chunk)].clone())
        return torch.cat(out)


def measure_latency_ms(fns: Sequence[Callable[[torch.Tensor], object]], x: torch.Tensor,
                       warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS) -> list[float]:
    """Median wall time of one call ``fn(x)`` for each of ``fns``, in milliseconds, measured interleaved.

    Every fn gets ``warmup`` untimed calls, then ``repeats`` timed rounds call each fn once in turn, so
    a change of background load during the measurement shifts all of them alike.

    Args:
        fns: the callables to time (e.g. an fp32 and an int8 model).
        x: the input every call gets.
        warmup: untimed calls per fn first.
        repeats: timed calls per fn.

    Example:
        >>> ms = measure_latency_ms([nn.Identity(), nn.Linear(8, 8)], torch.zeros(4, 8), repeats=3)
        >>> len(ms), all(t > 0 for t in ms)
        (2, True)
    """
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for fn in fns:
            for _ in range(warmup):
                fn(x)
        for _ in range(repeats):
            for k, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn(x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' notes that say nothing about the user's model and would repeat on every run:
    torchao's import registering an enum, inductor looking for CUDA on a CPU machine, a tensor copy in
    inductor's oneDNN lowering."""
    loggers = [logging.getLogger(n) for n in ("torch.utils._pytree", "torch.utils.cpp_extension")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _torchao() -> SimpleNamespace:
    """torchao's PT2E entry points, or a one-line error naming the extra when torchao is missing."""
    ao = import_torchao("PT2E quantization", "torchao.quantization.pt2e.quantize_pt2e",
                        "torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    return SimpleNamespace(version=ao.__version__, prepare=prepare_pt2e, convert=convert_pt2e, xiq=xiq)


def _export(model: nn.Module, calibration: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` (eval mode) as an exported graph with a dynamic batch dimension."""
    # an example batch of 2: a batch of 1 would be specialised to the constant 1
    example = calibration[:1].expand(2, *calibration.shape[1:]).contiguous()
    try:
        program = torch.export.export(model.eval(), (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:   # the user's model: data-dependent control flow, unsupported ops, wrong input shape
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"PT2E: torch.export cannot capture {type(model).__name__}: {first}") from e
    return program.module()


def _quantize(model: nn.Module, calibration: torch.Tensor, ao: SimpleNamespace) -> torch.fx.GraphModule:
    """Export, prepare with the x86 inductor quantizer's default static config, calibrate, convert."""
    quantizer = ao.xiq.X86InductorQuantizer()
    quantizer.set_global(ao.xiq.get_default_x86_inductor_quantization_config())
    prepared = ao.prepare(_export(model, calibration), quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), CALIBRATION_CHUNK):
            prepared(calibration[i:i + CALIBRATION_CHUNK])
    return ao.convert(prepared)


def _compile(module: nn.Module, batch: torch.Tensor, about: str) -> FixedBatch:
    """``module`` compiled by inductor with freezing, for the shape of ``batch``, compiled now (first call)."""
    import torch._inductor.config   # noqa: F401  (torch.compile imports it too, but only at the first call)

    compiled = torch.compile(module, backend="inductor", dynamic=False)
    run = FixedBatch(compiled, batch, about)
    # Freezing turns weights into constants, which is what lets inductor fold the int8 weights into
    # prepacked oneDNN kernels. Compilation happens at the first call, so that call is inside the patch
    # (torch.compile's options={"freezing": True} fails on oneDNN's prepack op in torch 2.14); FixedBatch
    # gives every later call the same shape, so nothing is compiled again outside it.
    with torch._inductor.config.patch(freezing=True):
        run(batch)
    return run


def _graph_tensors(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads by name (``get_attr``), once each."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            t = gm
            for part in node.target.split("."):
                t = getattr(t, part)
            if isinstance(t, torch.Tensor):
                out[node.target] = t
    return out


def _quantized_layers(gm: torch.fx.GraphModule) -> list[tuple[str, str, str, str]]:
    """(weight, scale, zero point, op) names of each per-channel int8 weight and the op that uses it."""
    out = []
    for node in gm.graph.nodes:
        # by name: the op exists only once torchao's or torch.ao's quantization is imported
        if (str(node.target) == "quantized_decomposed.dequantize_per_channel.default"
                and all(getattr(a, "op", "") == "get_attr" for a in node.args[:3])):
            ops = [str(u.target) for u in node.users]
            out.append((*(a.target for a in node.args[:3]), ops[0] if ops else ""))
    return out


def int8_weight_bytes(gm: torch.fx.GraphModule) -> int:
    """Bytes of the tensors a converted PT2E graph holds, as the int8 kernels take them.

    Each quantized layer: 1 byte per int8 weight, and per output channel an fp32 scale (4 bytes) and a zero
    point (4 bytes: int32, the oneDNN kernels' type; the graph stores int64). Every other tensor the graph
    reads (biases; BatchNorm, which PT2E folds into the convolution before it) at fp32, 4 bytes per element,
    integer tensors at their own size. The activations' per-tensor scales and zero points are constants in
    the code, a few bytes per layer, and are not counted.

    Args:
        gm: a graph from ``convert_pt2e``.

    Example:
        >>> int8_weight_bytes(torch.fx.symbolic_trace(nn.Linear(3, 2)))   # nothing quantized: fp32
        32
    """
    tensors = _graph_tensors(gm)
    total = 0
    quantized = _quantized_layers(gm)
    for weight, scale, zero_point, _ in quantized:
        total += tensors[weight].numel() + 4 * tensors[scale].numel() + 4 * tensors[zero_point].numel()
    counted = {name for layer in quantized for name in layer[:3]}
    for name, t in tensors.items():
        if name not in counted:
            total += t.numel() * (4 if t.is_floating_point() else t.element_size())
    return total


def _check_input(calibration: torch.Tensor | None) -> torch.Tensor:
    if calibration is None or not isinstance(calibration, torch.Tensor):
        raise ConfigError("PT2E quantization needs calibration images: a float tensor [N, C, H, W]")
    if calibration.dim() < 2 or len(calibration) == 0 or not calibration.is_floating_point():
        raise ConfigError(f"PT2E calibration images must be a float tensor [N, ...] with N >= 1, "
                          f"got {calibration.dtype} {list(calibration.shape)}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ConfigError(f"PT2E with the x86 inductor quantizer needs an x86-64 CPU, this one is {platform.machine()}")
    return calibration.detach().float().cpu().contiguous()


@register(Pt2eCfg)
def _pt2e(model: nn.Module, cfg: Pt2eCfg, calibration: torch.Tensor | None) -> tuple[nn.Module, CompressInfo]:
    """The :func:`funclens.compress.compress` method for :class:`Pt2eCfg` (``model`` is a private fp32 copy)."""
    calibration = _check_input(calibration)
    with _quiet():
        ao = _torchao()
        model.eval()
        fp32_graph = _export(copy.deepcopy(model), calibration)
        int8_graph = _quantize(model, calibration, ao)
        layers = _quantized_layers(int8_graph)
        batch = calibration[:LATENCY_BATCH]
        int8 = _compile(int8_graph, batch, f"PT2E int8 (x86 inductor), {len(layers)} int8 layers")
        fp32 = _compile(fp32_graph, batch, "fp32 (inductor)")
    int8_ms, fp32_ms = measure_latency_ms([int8, fp32], batch)
    return int8, CompressInfo(
        "quantize", "PT2E int8", loadable=False, layers_compressed=len(layers),
        conv_layers_compressed=sum("conv" in op for *_, op in layers), weight_bytes=int8_weight_bytes(int8_graph),
        latency_ms=int8_ms, fp32_latency_ms=fp32_ms, latency_batch=len(batch),
        library=f"torchao {ao.version}, torch {torch.__version__}")

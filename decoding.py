"""Faster decoding for the BLIP decoders, token for token the same as transformers' own.

FewRowLinear computes a beam search's few-row steps as W·xᵀ where that was measured faster on this
machine (choose_linears); SharedByBeamsCache leaves the cross-attention keys and values in place
instead of copying them for every beam at every step.
"""

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers.cache_utils import DynamicCache


class FewRowLinear(torch.nn.Linear):
    """nn.Linear that computes the row counts in `transposed_rows` as W·xᵀ instead of x·Wᵀ.

    A decoding step of a 3-beam search multiplies 3 rows (6 for two requests, up to 3 x MAX_BATCH)
    by every weight. For so few rows some BLAS libraries compute x·Wᵀ on one core through a slow
    path while W·xᵀ runs on every core (1.4-3.3x faster per layer on an AMD EPYC with MKL), and on
    others W·xᵀ is the slower one (20-30% on an Intel Xeon): which is faster is measured at load
    (choose_linears). The two differ only in the order floats are summed (about 1e-6 relative); the
    tokens stay the same.
    """

    transposed_rows: frozenset[int] = frozenset()  # set by choose_linears

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.numel() // self.in_features not in self.transposed_rows:
            return super().forward(inputs)
        return transposed_product(inputs, self.weight, self.bias)


def transposed_product(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What F.linear(inputs, weight, bias) computes, (..., out), computed as W·xᵀ."""
    flat = inputs.reshape(-1, weight.shape[1]).T
    product = weight @ flat if bias is None else torch.addmm(bias[:, None], weight, flat)
    return product.T.reshape(*inputs.shape[:-1], weight.shape[0])


@dataclass(frozen=True)
class Choice:
    """Which product a decoder's linear layers of one shape use, by row count: W·xᵀ for `transposed`."""

    shape: tuple[int, int]  # (in_features, out_features)
    transposed: frozenset[int]


def time_product(weights: list[tuple[torch.Tensor, torch.Tensor | None]], rows: int, transposed: bool,
                 clock: Callable[[], float] = time.perf_counter, sample_seconds: float = 0.0005,
                 samples: int = 3) -> float:
    """Seconds for one pass of `rows` rows through every (weight, bias) given, as W·xᵀ or as x·Wᵀ.

    One pass multiplies by each weight once, as a decoding step does, so that the weights stream from
    memory as they do then, not from a cache that one weight repeated would stay in. The median of a
    few samples, each long enough (sample_seconds) for the clock to see it.
    """
    product = transposed_product if transposed else torch.nn.functional.linear
    inputs = torch.randn(rows, 1, weights[0][0].shape[1], dtype=weights[0][0].dtype, device=weights[0][0].device)

    def one_pass() -> None:
        for weight, bias in weights:
            product(inputs, weight, bias)

    with torch.inference_mode():
        start = clock()
        one_pass()  # the first pass also pays for allocations: it only sizes the samples
        passes = max(1, min(1000, int(sample_seconds / max(clock() - start, 1e-7))))
        times = []
        for _ in range(samples):
            start = clock()
            for _ in range(passes):
                one_pass()
            times.append((clock() - start) / passes)
    return statistics.median(times)


def choose_linears(module: torch.nn.Module, row_counts: list[int], mode: str = "auto",
                   timer: Callable[..., float] = time_product) -> list[Choice]:
    """Give every plain nn.Linear in module the faster product for each row count, and say what was chosen.

    mode "auto" times both products on the real weights of each distinct layer shape, all the layers of
    that shape in one pass (cuDNN's benchmark mode measures its convolutions the same way, on the
    machine it runs on); "on" takes W·xᵀ and "off" x·Wᵀ for every row count. timer(weights, rows,
    transposed) -> seconds, weights a list of (weight, bias), is injectable, so that the choice can be
    tested without timing.
    """
    by_shape: dict[tuple[int, int], list[torch.nn.Linear]] = {}
    for layer in module.modules():
        if type(layer) in (torch.nn.Linear, FewRowLinear):
            by_shape.setdefault((layer.in_features, layer.out_features), []).append(layer)
    choices = []
    for shape, layers in by_shape.items():
        weights = [(layer.weight, layer.bias) for layer in layers]
        if mode == "auto":
            faster = {rows for rows in row_counts if timer(weights, rows, True) < timer(weights, rows, False)}
        else:
            faster = set(row_counts) if mode == "on" else set()
        choices.append(Choice(shape, frozenset(faster)))
        for layer in layers:
            layer.__class__ = FewRowLinear if faster else torch.nn.Linear
            if faster:
                layer.transposed_rows = frozenset(faster)
    return choices


def described(choices: list[Choice]) -> str:
    """The choices in one line: for each shape, the row counts that take W·xᵀ."""
    return "; ".join(f"{inputs}->{outputs}: W·xᵀ at " + (",".join(map(str, sorted(choice.transposed))) or "no")
                     + " rows" for choice in choices for inputs, outputs in [choice.shape])


class SharedByBeamsCache(DynamicCache):
    """The decoder's cross-attention keys and values, which beam search need not reorder.

    Every beam of one request attends to the same encoder states, so its keys and values are the
    same for all of them, and picking beams changes nothing in them. transformers reorders them
    anyway, copying them at every step: for a caption, 24 tensors over 577 image tokens a step,
    about 7% of the decoder's time at BLIP-base size.
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Nothing to do: the beams' rows are equal, and beams are only picked within a request."""

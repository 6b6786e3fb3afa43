"""Faster BLIP, token for token the same as transformers' own in fp32.

- FewRowLinear computes a beam search's few-row steps as W·xᵀ where that was measured faster on this
  machine (choose_linears).
- PerRequestCrossCache and SharedCrossAttention compute the decoder's cross-attention keys and values
  once per request instead of once per beam, and never copy them into a new beam order.
- HeldCache hands an image's cached cross-attention keys and values to the text encoder without a copy.
- SdpaVisionAttention runs the vision encoder's attention through torch's fused kernel.
"""

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextLayer, BlipTextSelfAttention


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


class PerRequestCrossCache(DynamicCache):
    """The decoder's cross-attention keys and values, once per request instead of once per beam.

    Every beam of a request attends to the same encoder states. transformers' beam search expands those
    states for each beam, computes their keys and values for each beam (for a caption of 3 beams, 3 x 577
    image tokens through 24 projections) and copies them into the new beam order at every step. Here
    they are computed once per request, before generation, and SharedCrossAttention attends with all of
    a request's beams at once; nothing is reordered, since beams are only picked within a request.

    keys, values: one tensor per decoder layer, (requests, heads, longest length, head size), a request's
    rows past its own length unused; lengths: each request's number of encoder states. The keys are kept
    transposed, (requests, heads, head size, longest length), as the scores' product reads them: the same
    scores, bit for bit, about 20% sooner than through a transposed view.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], lengths: list[int]):
        super().__init__()
        self.keys_transposed = [key.transpose(-1, -2).contiguous() for key in keys]
        self.shared_values, self.lengths = values, lengths

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Nothing to do: the beams of one request share its keys and values, and beams are picked within it."""


class HeldCache(DynamicCache):
    """A DynamicCache that holds the given keys and values, one (batch, heads, length, head size) tensor a layer,
    as they are: filled through update (or DynamicCache(ddp_cache_data)), each would be copied onto an empty
    tensor, for a question 24 copies of its image's cached keys and values (14 ms of 78 at BLIP-base size)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        super().__init__()
        for key, value in zip(keys, values):
            layer = DynamicLayer()
            layer.lazy_initialization(key, value)
            layer.keys, layer.values = key, value
            self.layers.append(layer)


class SharedCrossAttention(BlipTextSelfAttention):
    """BlipTextSelfAttention that, given a PerRequestCrossCache, attends with all beams of a request at once.

    The same products as transformers' eager attention (scores, the 1/sqrt(head size) scale, softmax,
    the weighted sum) over the request's own encoder states; any other call is transformers' own.
    The encoder attention mask is not added: the states are never padded, so it is all zeros.
    """

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, past_key_values=None, **kwargs) -> tuple[torch.Tensor, None]:
        cross = getattr(past_key_values, "cross_attention_cache", None)
        if encoder_hidden_states is None or not isinstance(cross, PerRequestCrossCache):
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   past_key_values, **kwargs)
        rows, length, _ = hidden_states.shape
        requests, heads, size = len(cross.lengths), self.num_attention_heads, self.attention_head_size
        beams = rows // requests
        # (requests x beams, length, hidden) -> (requests, heads, beams x length, head size)
        query = self.query(hidden_states).view(requests, beams * length, heads, size).transpose(1, 2)
        keys, values = cross.keys_transposed[self.layer_idx], cross.shared_values[self.layer_idx]
        if len(set(cross.lengths)) == 1:
            context = attend(query, keys, values, size)
        else:
            context = torch.cat([attend(query[i : i + 1], keys[i : i + 1, :, :, :states],
                                        values[i : i + 1, :, :states], size) for i, states in enumerate(cross.lengths)])
        context = context.transpose(1, 2).reshape(rows, length, self.all_head_size)
        return context, None


def attend(query: torch.Tensor, keys_transposed: torch.Tensor, values: torch.Tensor, head_size: int) -> torch.Tensor:
    """Scaled dot-product attention as transformers' eager BLIP text attention computes it, (..., queries, head size);
    keys_transposed is (..., head size, keys)."""
    scores = torch.matmul(query, keys_transposed) / math.sqrt(head_size)
    return torch.matmul(torch.softmax(scores, dim=-1), values)


def share_cross_attention(decoder: torch.nn.Module) -> None:
    """Make every cross-attention of a BLIP text model a SharedCrossAttention (a change of class, no copy)."""
    for module in decoder.modules():
        if isinstance(module, BlipTextLayer) and hasattr(module, "crossattention"):
            module.crossattention.self.__class__ = SharedCrossAttention


class SdpaVisionAttention(BlipAttention):
    """BlipAttention through torch.nn.functional.scaled_dot_product_attention instead of its eager products.

    The vision encoder attends over 577 image tokens (384 x 384 in 16-pixel patches, and the class token); the
    eager way writes the (heads, 577, 577) scores, scales them and softmaxes them in three passes over memory,
    the fused kernel in one. Measured on an Intel Xeon (2 cores, MKL): 9% faster for one image, 28% for four,
    with the same embeddings, bit for bit. Returns no attention weights.
    """

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
        batch, tokens, width = hidden_states.shape
        query, key, value = (self.qkv(hidden_states).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
                             .permute(2, 0, 3, 1, 4))
        context = torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return self.projection(context.transpose(1, 2).reshape(batch, tokens, width)), None


def fuse_vision_attention(vision_model: torch.nn.Module) -> None:
    """Make every attention of a BLIP vision model an SdpaVisionAttention (a change of class, no copy)."""
    for module in vision_model.modules():
        if type(module) is BlipAttention:
            module.__class__ = SdpaVisionAttention

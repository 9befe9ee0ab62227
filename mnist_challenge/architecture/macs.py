"""What each torch op costs: multiply-accumulates of one sample, one small function per kind of op, found by the
op's name in ``MAC_RULES`` (ops without a rule cost nothing: adds, activations, pooling and the like)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mnist_challenge.architecture.geometry import arg, tensors
from mnist_challenge.architecture.op_rules import CONV_OPS, CONV_T_OPS, MATMUL_OPS


def attention_macs(args: tuple, kwargs: dict) -> int:
    """MACs of ``F.multi_head_attention_forward`` (sequence-first tensors): the q/k/v projections, q @ k^T
    and weights @ v over all heads, and the output projection."""
    q, k, v = (arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    embed = q.shape[-1]
    batch = q.shape[1] if q.dim() == 3 else 1
    target, source = q.shape[0], k.shape[0]
    projections = batch * (target * embed + source * k.shape[-1] + source * v.shape[-1]) * embed
    attention = 2 * batch * target * source * embed
    return projections + attention + batch * target * embed * embed


def _conv_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * arg(args, kwargs, 1, "weight").shape[1:].numel()


def _conv_transpose_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    # every input value is spread over (out channels / groups) x kernel outputs
    return arg(args, kwargs, 0, "input").numel() * arg(args, kwargs, 1, "weight").shape[1:].numel()


def _linear_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * arg(args, kwargs, 1, "weight").shape[-1]


def _sdpa_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    q, k_, v = (arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    return q.shape[:-1].numel() * k_.shape[-2] * (q.shape[-1] + v.shape[-1])  # q @ k^T and weights @ v


def _matmul_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """Every output is a dot product over the first factor's last axis (1-D factors included)."""
    operands = list(tensors(args))
    first = operands[1] if len(operands) == 3 else operands[0]  # addmm / baddbmm: (input, mat1, mat2)
    return out.numel() * (first.shape[-1] if first.dim() else 1)


def _rmatmul_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    return out.numel() * args[1].shape[-1]  # W.__rmatmul__(x) is x @ W


def _tensordot_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    a, b = args[0], args[1]
    # out = free(a) x free(b) and a x b = out x contracted^2: MACs = out x contracted
    return out.numel() * math.isqrt(a.numel() * b.numel() // max(out.numel(), 1))


def _einsum_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """Operands contracted left to right, as torch does without opt_einsum: each pairwise step costs the product
    of the sizes of every index of its two operands."""
    equation = args[0].replace(" ", "")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    inputs, _, output = equation.partition("->")
    terms = inputs.split(",")
    if "." in equation or len(terms) != len(operands) or len(terms) < 2:
        return 0
    sizes = {letter: n for term, t in zip(terms, operands) for letter, n in zip(term, t.shape)}
    output = output or "".join(sorted(letter for letter in sizes if inputs.count(letter) == 1))
    total, current = 0, terms[0]
    for i, term in enumerate(terms[1:], start=1):
        letters = set(current) | set(term)
        total += math.prod(sizes[letter] for letter in letters)
        later = set(output).union(*terms[i + 1 :])
        current = "".join(letter for letter in letters if letter in later)
    return total


def _multi_dot_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """The cheapest order of the chain (as ``torch.linalg.multi_dot`` picks it), 1-D ends as rows / columns."""
    mats = list(args[0])
    dims = [mats[0].shape[0] if mats[0].dim() == 2 else 1] + [m.shape[-1] if m.dim() == 2 else 1 for m in mats]
    n = len(mats)
    cost = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            cost[i][j] = min(cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1] for s in range(i, j))
    return cost[0][n - 1]


def _bilinear_macs(args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    """``x1^T W_o x2`` for each output o: W_o x2 (in1 x in2), then the dot with x1 (in1)."""
    weight = arg(args, kwargs, 2, "weight")
    return out.numel() * weight.shape[1] * (weight.shape[2] + 1)


MacRule = Callable[[tuple, dict, torch.Tensor], int]
MAC_RULES: dict[str, MacRule] = {
    **{name: _conv_macs for name in CONV_OPS},
    **{name: _conv_transpose_macs for name in CONV_T_OPS},
    "linear": _linear_macs,
    # one op to the tracer: its projections and two matmuls
    "multi_head_attention_forward": lambda args, kwargs, out: attention_macs(args, kwargs),
    "scaled_dot_product_attention": _sdpa_macs,
    **{name: _matmul_macs for name in MATMUL_OPS},
    "__rmatmul__": _rmatmul_macs,
    "mv": _matmul_macs,
    "dot": _matmul_macs,
    "vdot": _matmul_macs,
    "inner": _matmul_macs,
    "tensordot": _tensordot_macs,
    "einsum": _einsum_macs,
    "linalg_multi_dot": _multi_dot_macs,
    "bilinear": _bilinear_macs,
    "deform_conv2d": _conv_macs,  # a conv whose taps are sampled at learned offsets (bilinear sampling not counted)
}


def macs_of(name: str, args: tuple, kwargs: dict, out: torch.Tensor) -> int:
    rule = MAC_RULES.get(name)
    return rule(args, kwargs, out) if rule is not None else 0

"""The grouped-seeds measurement (``bench --grouped K``): the grouped network is exactly K separate nets."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from mnist_challenge import build_model, load_spec
from mnist_challenge.bench.grouped import grouped_copy

from .conftest import run_cli


@pytest.mark.parametrize("preset", ["classic", "tiny"])
def test_grouped_network_is_k_separate_nets_in_outputs_gradients_and_bn_stats(preset, tmp_path):
    spec = dataclasses.replace(load_spec(preset), dropout=0.0)  # dropout draws differ by layout; the rest must not
    torch.manual_seed(0)
    nets = [build_model(spec).train() for _ in range(3)]
    grouped = grouped_copy(nets).train()
    x = torch.randn(3, 8, 1, spec.input_size, spec.input_size)  # one batch per seed
    y = torch.randint(0, 10, (3, 8))
    separate = torch.stack([net(xi) for net, xi in zip(nets, x, strict=True)], dim=1)  # (N, K, 10)
    together = grouped(x[:, :, 0].transpose(0, 1))
    torch.testing.assert_close(together, separate, rtol=1e-5, atol=1e-5)
    sum(F.nll_loss(separate[:, i], y[i]) for i in range(3)).backward()
    F.nll_loss(together.flatten(0, 1), y.t().flatten(), reduction="sum").div(8).backward()
    for name, param in grouped.body.named_parameters():
        expected = torch.cat([dict(net.named_parameters())[name].grad for net in nets])
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-5)
    for name, buffer in grouped.body.named_buffers():
        if buffer.is_floating_point():
            torch.testing.assert_close(buffer, torch.cat([dict(net.named_buffers())[name] for net in nets]))


def test_grouped_benchmark_smoke(mnist_dir, tmp_path):
    out = tmp_path / "grouped.json"
    result = run_cli(
        "mnist_challenge.bench", "--grouped", "2", "--spec", "tiny", "--steps", "2", "--warmup", "1",
        "--repeats", "1", "--data-dir", str(mnist_dir), "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("GROUPED tiny k=2 2 thr: grouped = ")
    figures = json.loads(out.read_text())
    assert [row["threads"] for row in figures["rows"]] == [1, 2]
    assert all(row["grouped"] > 0 and row["separate"] > 0 and row["engine"] > 0 for row in figures["rows"])

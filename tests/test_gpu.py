"""Device-dependent checks: they run on CUDA (``scripts/gpu_check.sh`` on a GPU machine) and skip elsewhere; the
script itself is checked here to fail cleanly where there is no GPU."""

import os
import subprocess
import sys

import pytest
import torch

from mnist_challenge import build_model
from mnist_challenge.engine.inference import inference_copy
from mnist_challenge.engine.train import TrainConfig, prepare_model
from tests.conftest import ROOT
from tests.test_layouts import BN_PLACES, every_kind_spec, randomise_bn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh runs these)")


@cuda
@pytest.mark.parametrize("batchnorm", BN_PLACES)
def test_engine_model_on_cuda_matches_the_plain_model_on_cpu(batchnorm):
    torch.manual_seed(0)
    spec = every_kind_spec(batchnorm, "conv_gap", dropout=0.0)
    plain, engine = build_model(spec), build_model(spec)
    engine.load_state_dict(plain.state_dict())
    device = torch.device("cuda")
    cfg = TrainConfig(device="cuda", bf16="off")
    assert cfg.resolved(device).channels_last is False  # auto: NCHW on a GPU
    swapped = prepare_model(engine, cfg, device)
    assert swapped["fused_tail"] == 0  # CPU kernels stay off on a GPU
    x = torch.randn(16, 1, 28, 28)
    out_plain, out_engine = plain(x), engine(x.to(device))
    torch.testing.assert_close(out_engine.cpu(), out_plain, rtol=1e-3, atol=1e-3)
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_engine.backward(grad.to(device))
    for p_plain, p_engine in zip(plain.parameters(), engine.parameters()):
        torch.testing.assert_close(p_engine.grad.cpu(), p_plain.grad, rtol=1e-2, atol=1e-3)


@cuda
def test_inference_copy_on_cuda_is_the_plain_model():
    spec = every_kind_spec("before_relu", "gap_conv")
    plain = build_model(spec)
    randomise_bn(plain)
    fast = inference_copy(plain.to("cuda"), channels_last=False)
    x = torch.randn(32, 1, 28, 28, device="cuda")
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain.eval()(x), rtol=1e-3, atol=1e-3)


def test_gpu_check_script_fails_cleanly_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run its checks")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU"), result.stderr
    assert not (tmp_path / "gpu").exists()  # nothing written

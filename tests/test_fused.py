"""The fused ReLU/BN/dropout kernel computes what the plain layers compute, and falls back cleanly."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_challenge import build_model, load_spec
from mnist_challenge.engine import native
from mnist_challenge.engine.fused import ConvUnitTail, dropout_mask, fuse_conv_unit_tails
from mnist_challenge.engine.native import load_kernels, unavailable_reason


def require_kernels() -> None:
    """Skip where there is no C compiler at all; where there is one, the kernel must build."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here: the engine runs the ATen fallback")
    assert load_kernels() is not None, unavailable_reason()


@pytest.fixture(autouse=True)
def kernels_built(request):
    if "without_a_compiler" not in request.node.name:
        require_kernels()


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """native.py as in a new process, with its cache in tmp_path: the next load_kernels() starts over."""
    monkeypatch.setattr(native, "_kernels", None)
    monkeypatch.setattr(native, "_unavailable", None)
    monkeypatch.setenv("MNIST_CHALLENGE_CACHE", str(tmp_path / "cache"))


def seed_drawn_by(generator_seed: int) -> int:
    """The seed ConvUnitTail draws on its first call from a generator seeded with ``generator_seed``."""
    return int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(generator_seed)))


def random_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def mask_in_layout(z: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The kernel's mask as an NCHW-indexed tensor: a function of each element's index in z's memory order."""
    flat = dropout_mask(z.numel(), p, seed)
    if z.is_contiguous():
        return flat.view_as(z)
    n, c, h, w = z.shape
    return flat.view(n, h, w, c).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("channels", [12, 17, 600])  # 600: a row longer than the NHWC kernel's block
@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("bn_after", [True, False], ids=["relu-bn", "bn-relu"])
def test_tail_matches_plain_layers_with_the_same_mask(bn_after, p, channels, layout):
    torch.manual_seed(0)
    bn = random_bn(channels)
    plain_bn = nn.BatchNorm2d(channels)
    plain_bn.load_state_dict(bn.state_dict())
    tail = ConvUnitTail(bn, bn_after, p, torch.Generator().manual_seed(7))
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    shape = (32, channels, 9, 11) if channels < 100 else (3, channels, 5, 4)
    z = torch.randn(*shape).contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn(*shape)

    out = tail(z)
    assert out.is_contiguous(memory_format=memory_format)  # the kernel keeps the layout
    mask = mask_in_layout(z, p, seed_drawn_by(7))
    z_plain = z.detach().clone().requires_grad_()
    plain = (plain_bn(torch.relu(z_plain)) if bn_after else torch.relu(plain_bn(z_plain))) * mask

    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)  # batch statistics summed in another order
    got = torch.autograd.grad(out, [z, bn.weight, bn.bias], grad)
    want = torch.autograd.grad(plain, [z_plain, plain_bn.weight, plain_bn.bias], grad)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-3)  # sums over 3,564 values in float
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-3)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(plain_bn, name))


def test_dropout_mask_is_bernoulli_and_changes_with_the_seed():
    p, n = 0.05, 1 << 20
    a, b = dropout_mask(n, p, 1), dropout_mask(n, p, 2)
    kept = (a > 0).double().mean().item()
    assert abs(kept - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    assert torch.allclose(a[a > 0], torch.tensor(1 / (1 - p)))
    assert not torch.equal(a, b)
    assert torch.equal(a, dropout_mask(n, p, 1))  # a pure function of the seed: backward regenerates it
    both_dropped = ((a == 0) & (b == 0)).double().mean().item()
    assert abs(both_dropped - p * p) < 0.001  # masks of different seeds are independent
    neighbours_dropped = ((a[1:] == 0) & (a[:-1] == 0)).double().mean().item()
    assert abs(neighbours_dropped - p * p) < 0.001  # and so are neighbouring elements of one mask


def test_eval_mode_is_the_plain_model():
    torch.manual_seed(0)
    plain = build_model(load_spec("classic")).eval()
    fused = build_model(load_spec("classic"))
    fused.load_state_dict(plain.state_dict())
    assert fuse_conv_unit_tails(fused) == 8
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(fused.eval()(x), plain(x))


def test_non_contiguous_input_runs_the_plain_layers():
    bn = random_bn(6)
    plain_bn = nn.BatchNorm2d(6)
    plain_bn.load_state_dict(bn.state_dict())
    tail = ConvUnitTail(bn, bn_after=True, p=0.0)
    z = torch.randn(8, 6, 5, 10)[..., ::2]  # a strided view: neither layout the kernels take
    torch.testing.assert_close(tail(z), plain_bn(torch.relu(z)))


def test_without_a_compiler_nothing_is_fused_and_training_says_why(
    monkeypatch, tmp_path, mnist_dir, fresh_kernel_state
):
    from mnist_challenge.engine.data import load_mnist
    from mnist_challenge.engine.train import TrainConfig, train_model

    data = load_mnist(str(mnist_dir), val_size=0, train_subset=512)

    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert load_kernels() is None
    assert "no-such-compiler" in unavailable_reason()
    assert fuse_conv_unit_tails(build_model(load_spec("classic"))) == 0
    result = train_model(
        build_model(load_spec("classic")), data, TrainConfig(epochs=1, val_size=0, device="cpu"), progress=False
    )
    assert result.settings["swapped_layers"]["fused_tail"] == 0
    assert "no-such-compiler" in result.settings["fused_tail_unavailable"]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.epochs)


def test_a_corrupt_cached_kernel_is_rebuilt(fresh_kernel_state):
    cached = native.kernel_path(os.environ.get("CC", "cc"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a shared object")  # e.g. a copy cut short
    assert load_kernels() is not None, unavailable_reason()
    assert cached.read_bytes() != b"not a shared object"


def test_a_foreign_or_corrupted_cached_kernel_is_never_loaded_but_rebuilt(tmp_path):
    """Each load in a new process, as each later run is (a process never reloads a library it has loaded)."""
    import glob
    import subprocess
    import sys

    env = {**os.environ, "MNIST_CHALLENGE_CACHE": str(tmp_path / "cache")}
    probe = "from mnist_challenge.engine import native; print(native.load_kernels() is not None)"

    def load() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)

    first = load()
    assert first.returncode == 0 and first.stdout.startswith("True"), first.stdout + first.stderr
    (cached,) = (tmp_path / "cache").glob("native-*.so")
    ours = cached.read_bytes()
    flipped = bytearray(ours)
    flipped[len(flipped) // 2] ^= 0xFF  # the kit's own library, one byte of its code changed: it could crash
    foreign = Path(sorted(glob.glob("/lib/*/libm.so.6") + glob.glob("/usr/lib/*/libm.so.6"))[0]).read_bytes()
    for bad in (foreign, bytes(flipped)):
        cached.write_bytes(bad)
        again = load()
        assert again.returncode == 0 and again.stdout.startswith("True"), again.stdout + again.stderr
        assert "is not the one this kit built" in again.stderr and cached.read_bytes() != bad
        assert native._digest(cached) == native._stamp(cached).read_text().strip()


def write_compiler(tmp_path: Path, body: str) -> str:
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\n" + body + "\n")
    cc.chmod(0o755)
    return str(cc)


def test_a_hung_compiler_is_stopped_said_and_not_waited_for_again(fresh_kernel_state, tmp_path, monkeypatch, capfd):
    import time

    monkeypatch.setenv("CC", write_compiler(tmp_path, "sleep 60"))
    monkeypatch.setattr(native, "COMPILE_NOTICE", 0.2)
    monkeypatch.setattr(native, "COMPILE_TIMEOUT", 1.5)
    started = time.time()
    assert load_kernels() is None and time.time() - started < 10
    assert (
        "took longer than 2 s" in unavailable_reason() and "compiling the engine's C kernels" in capfd.readouterr().err
    )
    native._kernels = native._unavailable = None  # a later process on the same cache: no second wait
    started = time.time()
    assert load_kernels() is None and time.time() - started < 1 and "delete it to try again" in unavailable_reason()


def test_a_toolchain_that_builds_garbage_falls_back_to_plain_layers(fresh_kernel_state, tmp_path, monkeypatch):
    out = '"$(echo "$@" | sed "s/.* -o \\([^ ]*\\) .*/\\1/")"'
    monkeypatch.setenv("CC", write_compiler(tmp_path, f"echo garbage > {out}"))
    assert load_kernels() is None and "could not build" in unavailable_reason()


def test_an_empty_home_never_puts_the_cache_at_the_root(monkeypatch):
    monkeypatch.delenv("MNIST_CHALLENGE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for home in ("", "/", "relative/dir"):
        monkeypatch.setenv("HOME", home)
        folder = native.cache_dir()
        assert folder.is_absolute() and folder.parent != Path("/") and not str(folder).startswith("/.cache"), home
    monkeypatch.setenv("HOME", "/home/u")
    assert native.cache_dir() == Path("/home/u/.cache/mnist_challenge")

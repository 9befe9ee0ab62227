"""``ArchSpec``: a small GAP-headed CNN described as data.

The network a spec describes is always::

    input -> stem 3x3 conv -> block_1 -> [transition] -> block_2 -> [transition] ... -> head -> log_softmax

* a *conv unit* is a 3x3 conv followed by ReLU and, optionally, BatchNorm (before or after the ReLU)
  and dropout; the conv is one of the block's *kind*: a plain 3x3, a depthwise-separable 3x3 (a depthwise
  3x3 then a 1x1: 9c + c*c' weights instead of 9c*c') or a dilated 3x3 (dilation 2: RF +4 per conv);
* a *block* is one or more conv units of one kind sharing a padding, optionally wrapped by a residual
  connection; three kinds change how the units connect (space version 5, the parameter-efficient families):
  ``dense`` (DenseNet: each unit reads the block's input and every earlier unit's map, concatenated; the block
  puts out all of them, ``in + sum(channels)`` channels; padded), ``branch`` (GoogLeNet-like: each unit is two
  convs side by side on the same input, a 3x3 and a dilated 3x3, each half the unit's channels, concatenated;
  padded) and ``shared`` (depth without parameters: the first unit maps the input to the block's width, every
  later unit applies one shared 3x3 conv again, with a BatchNorm of its own; all widths equal);
* a *transition* (after any block) is MaxPool2d(2) followed by a 1x1 "squeeze" conv unit, or the pool
  alone (``"transition": "pool"``: the channels go on unchanged, no parameters);
* the *head* is global average pooling and a conv to the classes: GAP then 1x1, 1x1 then GAP, or a
  3x3 (padding 1) then GAP.

There is no fully connected layer by construction. A spec is frozen, validated when it is built and
round-trips through JSON, so every run and every search trial can save the exact network it trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_challenge.common.errors import UserError
from mnist_challenge.common.files import write_text_atomic
from mnist_challenge.common.validate import check_float, check_int, check_name, one_line, parse_json, require

BATCHNORM_CHOICES = ("none", "before_relu", "after_relu")
DROPOUT_PLACES = ("none", "every_conv", "block_end")
HEAD_CHOICES = ("gap_conv", "conv_gap", "conv3_gap")
BLOCK_KINDS = ("conv", "separable", "dilated", "dense", "branch", "shared")
CHAIN_KINDS = BLOCK_KINDS[:3]  # units in a chain, each reading the last one's map (space versions 2-4 draw these)
POOL_ONLY = "pool"  # a transition without the 1x1 squeeze
# Of each block kind's 3x3 (a branch unit's widest: its dilated half; its 3x3 half is padded to the same size).
DILATION = {"conv": 1, "separable": 1, "dilated": 2, "dense": 1, "branch": 2, "shared": 1}
PADDED_KINDS = ("dense", "branch")  # their maps are concatenated, so every unit keeps the map's size
# Bounds on sizes: far above anything useful on MNIST-sized inputs, low enough that a typo (80000
# channels, a 4,000 px input) is an error and not gigabytes of activations.
MAX_CHANNELS = 512
MAX_BLOCKS = 16
MAX_CONVS_PER_BLOCK = 16
MAX_INPUT_SIZE = 128  # MNIST is 28 px; padded, upsampled or canvas-placed variants (the RF tests use 128) still fit
MAX_IN_CHANNELS = 4  # grey, RGB, RGBA
MAX_CLASSES = 1000
MAX_CONV_WEIGHTS = 2_000_000  # 100x the assignment's cap; bounds the memory and time of building a spec

_check = require


def _check_channels(value: Any, what: str) -> None:
    check_int(value, what, 1, MAX_CHANNELS)


def _check_padding(value: Any, what: str) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value in (0, 1),
        f"{what} must be 0 or 1, got {value!r}",
    )


@dataclass(frozen=True)
class ConvBlock:
    """A run of 3x3 conv units at one resolution."""

    channels: tuple[int, ...]  # output channels of each 3x3 conv in the block, in order
    padding: int = 0  # 0 shrinks the map by 2 per conv (cheap RF growth), 1 keeps its size
    residual: bool = False  # add the block input to its output (1x1 projection if channels differ)
    # After the block: MaxPool2d(2) + a 1x1 squeeze to this many channels, POOL_ONLY ("pool": the pool alone), or
    # None (no transition).
    transition: int | str | None = None
    kind: str = "conv"  # one of BLOCK_KINDS: plain 3x3, depthwise-separable 3x3 + 1x1, or dilated (2) 3x3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        _check(len(self.channels) >= 1, "a block needs at least one conv (channels is empty)")
        _check(
            len(self.channels) <= MAX_CONVS_PER_BLOCK,
            f"a block has at most {MAX_CONVS_PER_BLOCK} convs, got {len(self.channels)}",
        )
        for c in self.channels:
            _check_channels(c, "block channels")
        _check_padding(self.padding, "block padding")
        _check(isinstance(self.residual, bool), f"residual must be true or false, got {self.residual!r}")
        if self.transition is not None and self.transition != POOL_ONLY:
            _check_channels(self.transition, f'transition channels (or "{POOL_ONLY}" for the pool alone)')
        _check(
            isinstance(self.kind, str) and self.kind in BLOCK_KINDS,
            f"block kind must be one of {BLOCK_KINDS}, got {self.kind!r}",
        )
        if self.kind in PADDED_KINDS:
            _check(self.padding == 1, f"a {self.kind} block concatenates maps of one size: padding must be 1")
        if self.kind == "dense":
            _check(not self.residual, "a dense block already passes its input on: residual must be false")
        if self.kind == "branch":
            _check(all(c >= 2 for c in self.channels), "a branch unit splits its channels in two: at least 2 each")
        if self.kind == "shared":
            _check(len(set(self.channels)) == 1, "a shared block repeats one conv: its channels must all be equal")

    def width(self, in_channels: int) -> int:
        """Channels the block's body puts out, given its input's (a dense block passes its input on too)."""
        return in_channels + sum(self.channels) if self.kind == "dense" else self.channels[-1]

    def out_channels(self, in_channels: int) -> int:
        """Channels after the block and its transition, given its input's."""
        squeezed = self.transition is not None and self.transition != POOL_ONLY
        return self.transition if squeezed else self.width(in_channels)

    def unit_inputs(self, in_channels: int) -> list[int]:
        """Input channels of each conv unit."""
        if self.kind == "dense":
            return [in_channels + sum(self.channels[:j]) for j in range(len(self.channels))]
        return [in_channels, *self.channels[:-1]]

    @property
    def shrink(self) -> int:
        """Pixels the block takes off the map side: an unpadded 3x3 of dilation d takes 2d."""
        return 0 if self.padding == 1 else 2 * DILATION[self.kind] * len(self.channels)


@dataclass(frozen=True)
class ArchSpec:
    """A whole network. Field defaults give the usual MNIST setting (1x28x28 input, 10 classes)."""

    blocks: tuple[ConvBlock, ...]  # the body, in order; transitions live on the blocks
    stem_channels: int = 8  # output channels of the first 3x3 conv on the raw image
    stem_padding: int = 0  # padding of the stem conv (0 or 1)
    batchnorm: str = "after_relu"  # one of BATCHNORM_CHOICES: where BN sits relative to ReLU, or none
    dropout: float = 0.0  # dropout probability (Dropout2d is not used: MNIST maps are too small)
    dropout_at: str = "none"  # one of DROPOUT_PLACES
    head: str = "gap_conv"  # one of HEAD_CHOICES: GAP then 1x1 conv, 1x1 conv then GAP, or 3x3 conv then GAP
    name: str = "unnamed"  # free text, carried into logs
    in_channels: int = 1  # image channels
    input_size: int = 28  # square input side in pixels
    num_classes: int = 10  # output channels of the head conv

    def __post_init__(self) -> None:
        blocks = tuple(b if isinstance(b, ConvBlock) else ConvBlock(**b) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)
        _check(
            1 <= len(self.blocks) <= MAX_BLOCKS,
            f"a spec needs at least one block and at most {MAX_BLOCKS}, got {len(self.blocks)}",
        )
        _check_channels(self.stem_channels, "stem_channels")
        check_int(self.in_channels, "in_channels", 1, MAX_IN_CHANNELS)
        check_int(self.num_classes, "num_classes", 2, MAX_CLASSES)
        _check_padding(self.stem_padding, "stem_padding")
        _check(
            self.batchnorm in BATCHNORM_CHOICES, f"batchnorm must be one of {BATCHNORM_CHOICES}, got {self.batchnorm!r}"
        )
        _check(
            self.dropout_at in DROPOUT_PLACES, f"dropout_at must be one of {DROPOUT_PLACES}, got {self.dropout_at!r}"
        )
        _check(self.head in HEAD_CHOICES, f"head must be one of {HEAD_CHOICES}, got {self.head!r}")
        check_float(self.dropout, "dropout", 0.0, 1.0, hi_open=True)
        check_int(self.input_size, "input_size", 3, MAX_INPUT_SIZE)
        check_name(self.name, "spec name")  # the default run folder is named after it
        self.feature_sizes()  # raises if the map shrinks below 1x1 anywhere
        weights = self.conv_weights()
        _check(
            weights <= MAX_CONV_WEIGHTS,
            f"the spec's convs have {weights:,} weights, more than the "
            f"{MAX_CONV_WEIGHTS:,} an MNIST-sized net needs (the assignment allows "
            f"20,000): narrow the channels",
        )

    def conv_weights(self) -> int:
        """Weights of every conv the spec builds (BatchNorm and biases aside): a size bound, cheap to compute."""
        ch = self.stem_channels
        total = 9 * self.in_channels * ch
        for block in self.blocks:
            block_in = ch
            for j, (cin, out) in enumerate(zip(block.unit_inputs(ch), block.channels)):
                if block.kind == "shared" and j > 1:
                    continue  # the shared conv, counted once (at j == 1)
                total += 9 * cin + cin * out if block.kind == "separable" else 9 * cin * out
            ch = block.width(block_in)
            total += block_in * ch if block.residual and block_in != ch else 0
            if block.transition is not None and block.transition != POOL_ONLY:
                total, ch = total + ch * block.transition, block.transition
        return total + ch * self.num_classes * (9 if self.head == "conv3_gap" else 1)

    def feature_sizes(self) -> list[tuple[str, int, int]]:
        """(stage, channels, side) after the stem, each block and each transition; raises if a map vanishes."""
        side = self.input_size - 2 * (1 - self.stem_padding)
        sizes = [("stem", self.stem_channels, side)]
        _check(side >= 1, f"the stem conv shrinks the {self.input_size}px input below 1x1")
        ch = self.stem_channels
        for i, block in enumerate(self.blocks, start=1):
            side -= block.shrink
            _check(
                side >= 1,
                f"block {i} shrinks the feature map below 1x1 (add padding, a block fewer, or a later transition)",
            )
            sizes.append((f"block{i}", block.width(ch), side))
            if block.transition is not None:
                side //= 2
                _check(side >= 1, f"the transition after block {i} pools a {side * 2 or 1}px map below 1x1")
                sizes.append((f"transition{i}", block.out_channels(ch), side))
            ch = block.out_channels(ch)
        return sizes

    # --- JSON round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["blocks"] = [{**b, "channels": list(b["channels"])} for b in data["blocks"]]
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        _check(isinstance(data, dict), f"a spec must be a JSON object, got {type(data).__name__}")
        _reject_unknown(data, cls, "spec")
        _check("blocks" in data, "spec is missing the required field 'blocks'")
        _check(isinstance(data["blocks"], list), "spec field 'blocks' must be a list of block objects")
        _check(
            len(data["blocks"]) <= MAX_BLOCKS,
            f"a spec needs at least one block and at most {MAX_BLOCKS}, got {len(data['blocks'])}",
        )
        blocks = []
        for i, block in enumerate(data["blocks"], start=1):
            _check(isinstance(block, dict), f"block {i} must be a JSON object")
            _reject_unknown(block, ConvBlock, f"block {i}")
            _check("channels" in block, f"block {i} is missing the required field 'channels'")
            _check(isinstance(block["channels"], list), f"block {i} field 'channels' must be a list of integers")
            try:
                blocks.append(ConvBlock(**block))
            except UserError as exc:
                raise UserError(f"block {i}: {exc}") from None
        try:
            return cls(**{**data, "blocks": tuple(blocks)})
        except TypeError as exc:  # a wrong type the field checks did not anticipate
            raise UserError(f"invalid spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        return cls.from_dict(parse_json(text, "spec"))

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        path = Path(path)
        _check(path.exists(), f"spec file not found: {path}")
        _check(path.is_file(), f"{path}: {'a folder' if path.is_dir() else 'not a regular file'}, not a spec file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a spec file (not UTF-8 text)") from None
        except OSError as exc:
            raise UserError(f"{path}: cannot read the spec file ({exc.strerror or exc})") from None
        try:
            return cls.from_json(text)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_json() + "\n")


def _reject_unknown(data: dict, cls: type, what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    shown = one_line(unknown[:10]) + (f" and {len(unknown) - 10:,} more" if len(unknown) > 10 else "")
    _check(not unknown, f"{what} has unknown field(s) {shown}; known fields: {sorted(known)}")


PRESET_DIR = Path(__file__).parent / "presets"


def preset_path(name: str) -> Path:
    """Path of a bundled preset spec ('classic', 'compact', ...)."""
    path = PRESET_DIR / f"{name}.json"
    available = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
    _check(path.is_file(), f"spec file not found and no preset named {name!r}; presets: {available}")
    return path


def load_spec(path_or_preset: str | Path) -> ArchSpec:
    """Load a spec from a file, or a bundled preset by bare name (e.g. 'classic')."""
    path = Path(path_or_preset)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        path = preset_path(str(path_or_preset))
    return ArchSpec.load(path)

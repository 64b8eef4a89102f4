#!/usr/bin/env python3
"""Convert a PyTorch nn.Sequential for `noisegeom measure`, and check the conversion.

    python3 scripts/from_torch.py --model mypkg.nets:model --state-dict sd.pt \
        --inputs x.pt --labels y.pt --out converted/ [-- --k 20 --what mu,spectrum]

Writes OUT/arch.toml ([model] kind = "sequential"), OUT/weights.safetensors (the state_dict in
nn.Sequential names) and OUT/probe.safetensors (x, and labels or y), then runs
`noisegeom measure --what outputs` and checks that noisegeom's f(x) on the probe agrees with
PyTorch's (relative error <= 1e-5 in f32) before running the measurement itself (any
arguments after `--` go to it). A layer it cannot map is refused by name.

--model is `module:attribute` (imported) or a file saved with torch.save(model). The model is
put in eval mode: BatchNorm uses its running statistics. Supported layers: Linear, Conv2d
(square kernel, equal strides and padding, no dilation or groups), ReLU, Tanh, GELU (exact),
Identity, Flatten, AvgPool2d (no padding), AdaptiveAvgPool2d(1), BatchNorm1d/2d (affine,
with running statistics), and residual blocks: an nn.Sequential subclass whose class name
contains "Residual" (or with `noisegeom_residual = True`), computing block(x) + x, or
block(x) + shortcut(x) when it has a child module named `shortcut` (a projection such as
nn.Sequential(nn.Conv2d(c, c2, 1, stride=2, bias=False), nn.BatchNorm2d(c2))), the block being
its other children in order.

--inputs, --labels and --targets are tensors saved with torch.save (or .npy with numpy).
Inputs are used as given: normalise them as the model was trained.
"""

import argparse
import importlib
import json
import os
import shutil
import struct
import subprocess
import sys

import torch
from torch import nn


class Unsupported(Exception):
    pass


def is_residual(m):
    return isinstance(m, nn.Sequential) and (
        getattr(m, "noisegeom_residual", False) or "Residual" in type(m).__name__
    )


def pair(v, what, path):
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2 and v[0] == v[1]:
        return int(v[0])
    raise Unsupported(f"layer {path}: {what} {v} must be square (equal in both dimensions)")


def layer_spec(m, path, renames):
    """The noisegeom layer spec (a dict) of module m at `path` (e.g. "3" or "3.1"). A state_dict
    prefix that noisegeom names differently is added to `renames` (old prefix -> new)."""
    name = type(m).__name__
    if is_residual(m):
        block = [(k, c) for k, c in m.named_children() if k != "shortcut"]
        if [k for k, _ in block] != [str(j) for j in range(len(block))]:
            raise Unsupported(f"layer {path} ({name}): its block's children must be numbered 0, 1, ...")
        spec = {"op": "residual", "layers": [layer_spec(c, f"{path}.{k}", renames) for k, c in block]}
        sc = m._modules.get("shortcut")
        if sc is not None:
            if isinstance(sc, nn.Sequential):
                spec["shortcut"] = [layer_spec(c, f"{path}.shortcut.{j}", renames) for j, c in enumerate(sc)]
            else:
                # One module: noisegeom names it as the first of a list.
                spec["shortcut"] = [layer_spec(sc, f"{path}.shortcut.0", renames)]
                renames[f"{path}.shortcut."] = f"{path}.shortcut.0."
        return spec
    if isinstance(m, nn.Linear):
        return {"op": "linear", "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or pair(m.dilation, "dilation", path) != 1:
            raise Unsupported(f"layer {path} (Conv2d): groups and dilation must be 1")
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise Unsupported(f"layer {path} (Conv2d): padding must be a number, with zeros")
        return {
            "op": "conv2d",
            "out": m.out_channels,
            "kernel": pair(m.kernel_size, "kernel_size", path),
            "stride": pair(m.stride, "stride", path),
            "padding": pair(m.padding, "padding", path),
            "bias": m.bias is not None,
        }
    if isinstance(m, nn.ReLU):
        return {"op": "relu"}
    if isinstance(m, nn.Tanh):
        return {"op": "tanh"}
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise Unsupported(f"layer {path} (GELU): only approximate='none' is supported")
        return {"op": "gelu"}
    if isinstance(m, nn.Identity):
        return {"op": "identity"}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise Unsupported(f"layer {path} (Flatten): only start_dim=1, end_dim=-1")
        return {"op": "flatten"}
    if isinstance(m, nn.AvgPool2d):
        k = pair(m.kernel_size, "kernel_size", path)
        s = pair(m.stride if m.stride is not None else k, "stride", path)
        if pair(m.padding, "padding", path) != 0 or m.ceil_mode:
            raise Unsupported(f"layer {path} (AvgPool2d): needs no padding and ceil_mode=False")
        return {"op": "avgpool2d", "kernel": k, "stride": s}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if pair(m.output_size, "output_size", path) != 1:
            raise Unsupported(f"layer {path} (AdaptiveAvgPool2d): only output size 1")
        return {"op": "adaptive_avgpool2d"}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not m.affine or not m.track_running_stats:
            raise Unsupported(f"layer {path} ({name}): needs affine=True and running statistics")
        op = "batchnorm1d" if isinstance(m, nn.BatchNorm1d) else "batchnorm2d"
        return {"op": op, "eps": m.eps}
    raise Unsupported(
        f"layer {path} ({name}) cannot be mapped; supported: Linear, Conv2d, ReLU, Tanh, GELU, "
        "Identity, Flatten, AvgPool2d, AdaptiveAvgPool2d(1), BatchNorm1d/2d, residual blocks"
    )


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def arch_toml(model, input_shape, renames):
    if not isinstance(model, nn.Sequential):
        raise Unsupported(f"the model is a {type(model).__name__}; give an nn.Sequential")
    layers = [layer_spec(m, str(i), renames) for i, m in enumerate(model)]
    lines = ["[model]", 'kind = "sequential"', f"input_shape = {toml_value(list(input_shape))}", "layers = ["]
    lines += [f"  {toml_value(spec)}," for spec in layers]
    lines.append("]")
    return "\n".join(lines) + "\n"


DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def raw_bytes(t):
    u = t.flatten().view(torch.uint8)
    try:
        return u.numpy().tobytes()
    except (ImportError, RuntimeError):  # torch without numpy
        return bytes(u.tolist())


def save_safetensors(path, tensors):
    """Writes the safetensors format by hand (8-byte header length, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in DTYPES:
            t = t.to(torch.float32)
        data = raw_bytes(t) if t.numel() else b""
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_tensor(path):
    if path.endswith(".npy"):
        import numpy as np

        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu")


def load_model(spec):
    if os.path.isfile(spec):
        return torch.load(spec, map_location="cpu", weights_only=False)
    module, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--model {spec}: give module:attribute or a file saved with torch.save")
    sys.path.insert(0, os.getcwd())
    obj = getattr(importlib.import_module(module), attr)
    return obj() if callable(obj) and not isinstance(obj, nn.Module) else obj


def find_noisegeom(given):
    if given:
        return given
    found = shutil.which("noisegeom")
    if found:
        return found
    local = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "noisegeom")
    if os.path.isfile(local):
        return local
    raise SystemExit("noisegeom not found; build it (cargo build --release) or pass --noisegeom PATH")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="module:attribute, or a file from torch.save(model)")
    ap.add_argument("--state-dict", help="a state_dict file (torch.save) to load into the model")
    ap.add_argument("--inputs", required=True, help="probe inputs [n, *input_shape]")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", help="integer class labels [n]")
    g.add_argument("--targets", help="targets y [n, c]")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--noisegeom", help="the noisegeom binary (default: on PATH, or target/release)")
    ap.add_argument("--no-measure", action="store_true", help="only convert and check f(x)")
    args = ap.parse_args(argv)

    model = load_model(args.model)
    if args.state_dict:
        model.load_state_dict(torch.load(args.state_dict, map_location="cpu"))
    model.eval()
    x = load_tensor(args.inputs).to(torch.float32)
    renames = {}
    try:
        arch = arch_toml(model, x.shape[1:], renames)
    except Unsupported as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    paths = {k: os.path.join(args.out, f) for k, f in
             [("arch", "arch.toml"), ("weights", "weights.safetensors"), ("probe", "probe.safetensors"),
              ("outputs", "outputs.json"), ("measure", "measure.json")]}
    with open(paths["arch"], "w") as f:
        f.write(arch)
    def rename(k):
        for old, new in renames.items():
            if k.startswith(old):
                return new + k[len(old):]
        return k

    state = {rename(k): (v.to(torch.float32) if v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    save_safetensors(paths["weights"], state)
    probe = {"x": x}
    if args.labels:
        probe["labels"] = load_tensor(args.labels).to(torch.int64)
    else:
        probe["y"] = load_tensor(args.targets).to(torch.float32)
    save_safetensors(paths["probe"], probe)

    exe = find_noisegeom(args.noisegeom)
    base = [exe, "measure", "--config", paths["arch"], "--weights", paths["weights"], "--probe", paths["probe"]]
    r = subprocess.run(base + ["--what", "outputs", "--out", paths["outputs"]], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr.strip(), file=sys.stderr)
        return r.returncode
    with open(paths["outputs"]) as f:
        got = torch.tensor(json.load(f)["outputs"]["values"], dtype=torch.float64)
    with torch.no_grad():
        want = model(x).to(torch.float64).flatten()
    err = float((got - want).norm() / want.norm().clamp_min(1e-300))
    print(f"f(x) on {x.shape[0]} probe samples: relative difference noisegeom vs PyTorch = {err:.2e}")
    if not err <= 1e-5:
        print("error: noisegeom's outputs differ from PyTorch's by more than 1e-5; the conversion is wrong", file=sys.stderr)
        return 1
    print(f"wrote {paths['arch']}, {paths['weights']}, {paths['probe']}")
    if args.no_measure:
        return 0
    r = subprocess.run(base + ["--out", paths["measure"]] + extra)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())

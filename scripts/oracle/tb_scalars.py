#!/usr/bin/env python3
"""Dump every TensorBoard run under a logdir as JSON (needs only python3 + the `tensorboard` package).

Usage:
  python tb_scalars.py LOGDIR [--no-wall-time] [--merge-tensor-scalars] [--indent N]

Prints
  {"runs": {RUN_RELPATH: {
      "scalars": {TAG: [[step, value, wall_time], ...]},          # Summary.Value.simple_value
      "tensors": {TAG: {"plugin": NAME, "events": [[step, value, wall_time], ...]}},
      "text":    [{"tag": TAG, "step": S, "wall_time": W, "text": STR}, ...]}}}

RUN_RELPATH is the directory holding event files, relative to LOGDIR ("." for LOGDIR itself),
e.g. "runs/Nov29_23-04-03_vm" when LOGDIR is an output dir. Every event is kept
(size_guidance 0 for every kind). Tensor values are a float/int/str when the tensor has one
element, else a nested list. Text summaries (plugin "text", tag usually "NAME/text_summary") are
listed under "text" and not repeated under "tensors". With --merge-tensor-scalars, new-style
scalars (tensor + plugin "scalars", as tf.summary / SummaryWriter(new_style=True) write) are put
under "scalars" as well, so both encodings compare the same. Events are in file order per tag;
non-finite floats come out as NaN/Infinity (Python's json).
"""
import argparse
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea_mod
from tensorboard.backend.event_processing import io_wrapper
from tensorboard.util import tensor_util

SIZE_ALL = {k: 0 for k in (ea_mod.COMPRESSED_HISTOGRAMS, ea_mod.IMAGES, ea_mod.AUDIO, ea_mod.SCALARS,
                           ea_mod.HISTOGRAMS, ea_mod.TENSORS)}


def _plain(x):
    if isinstance(x, bytes):
        return x.decode("utf-8", errors="replace")
    if hasattr(x, "tolist"):
        return _plain(x.tolist())
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def tensor_value(tp):
    arr = tensor_util.make_ndarray(tp)
    if arr.size == 1:
        return _plain(arr.reshape(()).item())
    return _plain(arr)


def load_run(path, wall):
    acc = ea_mod.EventAccumulator(path, size_guidance=SIZE_ALL)
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "tensors": {}, "text": []}
    for tag in tags.get(ea_mod.SCALARS, []):
        out["scalars"][tag] = [[e.step, e.value] + ([e.wall_time] if wall else []) for e in acc.Scalars(tag)]
    for tag in tags.get(ea_mod.TENSORS, []):
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        events = acc.Tensors(tag)
        if plugin == "text":
            for e in events:
                val = tensor_value(e.tensor_proto)
                rec = {"tag": tag, "step": e.step}
                if wall:
                    rec["wall_time"] = e.wall_time
                rec["text"] = val if isinstance(val, str) else json.dumps(val)
                out["text"].append(rec)
            continue
        out["tensors"][tag] = {"plugin": plugin, "events": [
            [e.step, tensor_value(e.tensor_proto)] + ([e.wall_time] if wall else []) for e in events]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logdir")
    ap.add_argument("--no-wall-time", action="store_true", help="omit wall times (for diffing)")
    ap.add_argument("--merge-tensor-scalars", action="store_true",
                    help="also list tensor summaries with plugin 'scalars' under 'scalars'")
    ap.add_argument("--indent", type=int, default=1)
    a = ap.parse_args()
    if not os.path.isdir(a.logdir):
        sys.exit(f"not a directory: {a.logdir}")
    runs = {}
    for d in sorted(io_wrapper.GetLogdirSubdirectories(a.logdir)):
        rel = os.path.relpath(d, a.logdir)
        run = load_run(d, not a.no_wall_time)
        if a.merge_tensor_scalars:
            for tag, t in run["tensors"].items():
                if t["plugin"] == "scalars":
                    run["scalars"].setdefault(tag, []).extend(t["events"])
        runs[rel] = run
    json.dump({"runs": runs}, sys.stdout, indent=a.indent if a.indent > 0 else None)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

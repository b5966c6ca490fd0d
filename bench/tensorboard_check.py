#!/usr/bin/env python3
"""Checks a run's TensorBoard event files against its metrics CSVs, with TensorBoard's reader.

Usage: python bench/tensorboard_check.py RUN_DIR

RUN_DIR holds metrics/<stage>.csv (a header row, then one row per point) and
tb/<stage>/events.out.tfevents.*. Every CSV column other than `epoch` and the step column
must appear in TensorBoard as the tag `<stage>/<column>` with exactly the CSV's (step, value)
points, in order, values compared as float32. The step column is `step` when the CSV has one,
else its first column (e.g. `generation`). Empty cells are points that were not logged.

Prints one line per tag and `TENSORBOARD OK` at the end; exits 1 on any mismatch.
Needs `pip install tensorboard` (TensorFlow itself is not needed: TensorBoard's own reader
checks every record's length and data CRC-32C).
"""

import csv
import glob
import math
import os
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator


def read_csv(path):
    """Returns {column: [(step, float32 value)]} for the columns TensorBoard should hold."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty CSV (no header)")
    header = [h.strip() for h in rows[0]]
    step_col = header.index("step") if "step" in header else 0
    expected = {}
    for c, name in enumerate(header):
        if c == step_col or name in ("epoch", "step"):
            continue
        points = []
        for line, row in enumerate(rows[1:], start=2):
            if c >= len(row) or row[c].strip() == "":
                continue
            try:
                step = int(float(row[step_col]))
                value = np.float32(float(row[c]))
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            points.append((step, value))
        expected[name] = points
    return expected


def read_tensorboard(stage_dir):
    """Returns ({tag: [(step, float32 value)]}, event file names) with TensorBoard's reader."""
    files = sorted(glob.glob(os.path.join(stage_dir, "events.out.tfevents.*")))
    acc = event_accumulator.EventAccumulator(
        stage_dir,
        # 0 = keep every point (the default samples scalars down to 10,000 per tag).
        size_guidance={event_accumulator.SCALARS: 0},
    )
    acc.Reload()
    actual = {}
    for tag in acc.Tags()[event_accumulator.SCALARS]:
        actual[tag] = [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)]
    return actual, files


def same_value(a, b):
    a, b = np.float32(a), np.float32(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def compare(tag, want, got):
    """A description of the first difference, or None."""
    if len(want) != len(got):
        return f"{len(got)} points in TensorBoard, {len(want)} in the CSV"
    for i, ((ws, wv), (gs, gv)) in enumerate(zip(want, got)):
        if ws != gs or not same_value(wv, gv):
            return (
                f"point {i}: CSV (step {ws}, {float(wv):.9g}) "
                f"but TensorBoard (step {gs}, {float(gv):.9g})"
            )
    return None


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    run = argv[1]
    csvs = sorted(glob.glob(os.path.join(run, "metrics", "*.csv")))
    tb_root = os.path.join(run, "tb")
    tb_stages = []
    if os.path.isdir(tb_root):
        tb_stages = [
            d for d in os.listdir(tb_root) if os.path.isdir(os.path.join(tb_root, d))
        ]
    failures = 0
    checked = 0
    if not csvs:
        print(f"FAIL: no metrics/*.csv under {run}")
        return 1
    stages = [os.path.splitext(os.path.basename(p))[0] for p in csvs]
    for stage in sorted(set(tb_stages) - set(stages)):
        print(f"FAIL {stage}: tb/{stage}/ has no metrics/{stage}.csv to check against")
        failures += 1
    for stage, path in zip(stages, csvs):
        expected = read_csv(path)
        stage_dir = os.path.join(run, "tb", stage)
        actual, files = (
            read_tensorboard(stage_dir) if os.path.isdir(stage_dir) else ({}, [])
        )
        rel = os.path.relpath(path, run)
        print(
            f"{stage}: {len(files)} event file(s), {len(expected)} column(s) in {rel}"
        )
        if not files:
            print(f"  FAIL: no events.out.tfevents.* under tb/{stage}/")
            failures += 1
            continue
        for name, want in expected.items():
            tag = f"{stage}/{name}"
            got = actual.pop(tag, None)
            if got is None:
                print(f"  FAIL {tag}: not in TensorBoard")
                failures += 1
                continue
            problem = compare(tag, want, got)
            checked += 1
            if problem:
                print(f"  FAIL {tag}: {problem}")
                failures += 1
            elif want:
                steps = f"steps {want[0][0]}..{want[-1][0]}"
                print(
                    f"  ok   {tag}: {len(want)} points, {steps}, last {float(want[-1][1]):.6g}"
                )
            else:
                print(f"  ok   {tag}: no points")
        for tag in sorted(actual):
            print(
                f"  FAIL {tag}: in TensorBoard but not a column of {os.path.basename(path)}"
            )
            failures += 1
    if failures or checked == 0:
        print(f"TENSORBOARD MISMATCH: {failures} problem(s), {checked} tag(s) checked")
        return 1
    print(f"{checked} tags match.")
    print("TENSORBOARD OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

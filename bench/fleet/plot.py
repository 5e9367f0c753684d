"""Renders the fleet benchmark's plots (lag and workers over time, latency vs N, CPU vs N) from bench/out/fleet (for `damselfly-bench fleet`).

Usage: plot.py OUT_DIR PNG_DIR. Reads OUT_DIR/summary.json and OUT_DIR/n*/timeline.csv.
"""

import csv
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, png = sys.argv[1], sys.argv[2]
rows = json.load(open(os.path.join(out, "summary.json")))


def timeline(n):
    with open(os.path.join(out, f"n{n}", "timeline.csv")) as f:
        return list(csv.DictReader(f))


def over_time(columns, ylabel, name, log=False):
    fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 3.6), squeeze=False)
    for ax, (col, title) in zip(axes[0], columns):
        for r in rows:
            t = timeline(r["vms"])
            xs = [float(x["t_s"]) for x in t]
            ys = [max(float(x[col]), 0.0) for x in t]
            ax.plot(xs, ys, label=f'{r["vms"]} VMs', linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("seconds since the fleet started publishing")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(png, name), dpi=80)
    plt.close(fig)


over_time([("agg_lag", "aggregate"), ("alarm_lag", "alarm")], "consumer-group lag (records)", "lag.png", log=True)
over_time([("agg_workers", "aggregate"), ("alarm_workers", "alarm")], "workers", "workers.png")

ns = [r["vms"] for r in rows]


def versus_n(series, ylabel, goal, name, logy=False):
    """One plot of `series` [(key, label, style)] against N, with a red goal line (value, label)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for key, label, style in series:
        pts = [(n, r[key]) for n, r in zip(ns, rows) if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    ax.axhline(goal[0], color="red", linewidth=0.8, linestyle=":", label=goal[1])
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("simulated VMs (2 s interval)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(png, name), dpi=80)
    plt.close(fig)


versus_n(
    [
        ("lake_p50_s", "publish -> lake p50", "o-"),
        ("lake_p99_s", "publish -> lake p99", "s-"),
        ("sns_p50_s", "breach -> SNS p50", "^--"),
        ("sns_p99_s", "breach -> SNS p99", "v--"),
    ],
    "seconds",
    (15, "goal: lake p99 < 15 s"),
    "latency.png",
    logy=True,
)
versus_n(
    [
        ("cpu_aggregate", "aggregate", "o-"),
        ("cpu_alarm", "alarm", "o-"),
        ("cpu_simulate", "simulator", "o-"),
        ("cpu_kafka", "Kafka", "o-"),
        ("cpu_localstack", "LocalStack", "o-"),
    ],
    "CPU, % of one core",
    (200, "2 cores"),
    "cpu.png",
)
print(f"plots: {png}/lag.png workers.png latency.png cpu.png")

#!/usr/bin/env python3
"""Turns compare.sh's raw results (one JSON line per scenario, broker and round) into the
markdown block of BENCHMARKS.md: medians over rounds per figure, fluxmq-edge/Mosquitto ratios,
machine and versions. Replaces only the text between the compare markers. Standard library only.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"
BROKERS = [("mosquitto", "Mosquitto"), ("fluxmq", "fluxmq-edge")]

THROUGHPUT = [
    ("qos0-1to1", "QoS 0, 16 B, 1→1"),
    ("qos1-1to1", "QoS 1, 16 B, 1→1"),
    ("fanout-100", "fan-out 1→100, QoS 0"),
    ("fanin-100", "fan-in 100→1, QoS 0"),
    ("distinct-10x10", "10×10 distinct topics, QoS 0"),
    ("shared-4", "shared sub, 1 pub → 4 members, QoS 0"),
]
STALLED = [("stalled-sub", "QoS 0"), ("stalled-sub-qos1", "QoS 1")]

HEADER_TEXT = """# Benchmarks

fluxmq-edge against Mosquitto on the same machine, measured from outside the broker process:
broker CPU and syscalls per delivered message, latency, and memory. Reproduce with
`bench/compare.sh` (see `bench/README.md` for what each figure means and how it is measured).

"""


def median(values):
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(vals) if vals else None


def fmt(v, digits=2):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    """fluxmq / mosquitto."""
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def load(path):
    runs = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            print(f"compare_report: skipping unparsable line: {e}", file=sys.stderr)
            continue
        runs.setdefault((rec["scenario"], rec["broker"]), []).append(rec["result"])
    return runs


class Figures:
    """Median of each figure over the good rounds of one (scenario, broker)."""

    def __init__(self, results):
        self.good = [r for r in results if not r.get("error")]
        self.errors = [r["error"] for r in results if r.get("error")]
        self.rounds = len(results)

    def __bool__(self):
        return bool(self.good)

    def get(self, key):
        return median([r.get(key) for r in self.good])

    def count_true(self, key):
        return sum(1 for r in self.good if r.get(key) is True), len(self.good)


def cell_missing(figs, not_run, broker):
    if not_run.get(broker):
        return f"not run ({not_run[broker]})"
    if figs is None:
        return "not run"
    if not figs:
        return "failed: " + (figs.errors[0][:60] if figs.errors else "no result")
    return None


def throughput_table(runs, scenarios, not_run):
    cols = [
        ("broker CPU µs/msg", "broker_cpu_us_per_msg", 2),
        ("syscalls/msg", "broker_syscalls_per_msg", 2),
        ("msgs/s", "msgs_per_s", 0),
        ("p50 µs", "lat_p50_us", 0),
        ("p99 µs", "lat_p99_us", 0),
        ("peak RSS MiB", "broker_hwm_kib", 1),
        ("loss %", "loss_pct", 3),
        ("loadgen CPU µs/msg", "loadgen_cpu_us_per_msg", 2),
    ]
    out = ["| scenario | broker | " + " | ".join(c[0] for c in cols) + " |"]
    out.append("|---|---|" + "---:|" * len(cols))
    for key, title in THROUGHPUT:
        if key not in scenarios:
            continue
        values = {}
        for b, name in BROKERS:
            figs = Figures(runs[(key, b)]) if (key, b) in runs else None
            missing = cell_missing(figs, not_run, b)
            if missing:
                out.append(f"| {title} | {name} | {missing} |" + " |" * (len(cols) - 1))
                values[b] = None
                continue
            vals = []
            for _, k, d in cols:
                v = figs.get(k)
                if k == "broker_hwm_kib" and v is not None:
                    v /= 1024
                vals.append(v)
            values[b] = vals
            cells = [fmt(v, d) for v, (_, _, d) in zip(vals, cols)]
            out.append(f"| {title} | {name} | " + " | ".join(cells) + " |")
        if values.get("fluxmq") and values.get("mosquitto"):
            cells = [
                ratio(f, m) if k != "loss_pct" else "–"
                for f, m, (_, k, _) in zip(values["fluxmq"], values["mosquitto"], cols)
            ]
            out.append(f"| {title} | **fluxmq / Mosquitto** | " + " | ".join(cells) + " |")
        else:
            out.append(f"| {title} | **fluxmq / Mosquitto** | " + " | ".join(["–"] * len(cols)) + " |")
    return out


def idle_table(runs, not_run):
    cols = [
        ("bytes/conn", "broker_bytes_per_conn", 0),
        ("CPU µs/connect", "broker_cpu_us_per_conn", 1),
        ("read/write syscalls/connect", "broker_syscalls_per_conn", 1),
        ("RSS before MiB", "broker_rss_before_kib", 1),
        ("RSS with conns MiB", "broker_rss_after_kib", 1),
        ("connected", "connected", 0),
        ("connects/s", "connects_per_s", 0),
    ]
    out = ["| broker | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    values = {}
    for b, name in BROKERS:
        figs = Figures(runs[("idle-5000", b)]) if ("idle-5000", b) in runs else None
        missing = cell_missing(figs, not_run, b)
        if missing:
            out.append(f"| {name} | {missing} |" + " |" * (len(cols) - 1))
            continue
        vals = []
        for _, k, _ in cols:
            v = figs.get(k)
            if k.endswith("_kib") and v is not None:
                v /= 1024
            vals.append(v)
        values[b] = vals
        out.append(f"| {name} | " + " | ".join(fmt(v, d) for v, (_, _, d) in zip(vals, cols)) + " |")
    if "fluxmq" in values and "mosquitto" in values:
        cells = [ratio(f, m) for f, m in zip(values["fluxmq"], values["mosquitto"])]
        out.append("| **fluxmq / Mosquitto** | " + " | ".join(cells) + " |")
    return out


def stalled_table(runs, scenarios, not_run):
    cols = [
        ("messages", "sent", 0),
        ("RSS growth MiB", "broker_rss_growth_mib", 1),
        ("peak growth MiB", "broker_peak_growth_mib", 1),
        ("stalled sub got after unstall", "stalled_received", 0),
        ("healthy sub loss %", "loss_pct", 3),
        ("healthy msgs/s", "msgs_per_s", 0),
        ("broker CPU µs/msg", "broker_cpu_us_per_msg", 2),
    ]
    out = [
        "| stalled subscriber | broker | disconnected by broker | "
        + " | ".join(c[0] for c in cols)
        + " |",
        "|---|---|---|" + "---:|" * len(cols),
    ]
    for key, title in STALLED:
        if key not in scenarios:
            continue
        for b, name in BROKERS:
            figs = Figures(runs[(key, b)]) if (key, b) in runs else None
            missing = cell_missing(figs, not_run, b)
            if missing:
                out.append(f"| {title} | {name} | {missing} |" + " |" * len(cols))
                continue
            yes, n = figs.count_true("stalled_disconnected")
            disc = f"{'yes' if yes * 2 > n else 'no'} ({yes}/{n})"
            vals = [figs.get(k) for _, k, _ in cols]
            out.append(
                f"| {title} | {name} | {disc} | "
                + " | ".join(fmt(v, d) for v, (_, _, d) in zip(vals, cols))
                + " |"
            )
    return out


def loadgen_cost(runs):
    pct = []
    for (scenario, _), results in runs.items():
        for r in results:
            own, broker = r.get("loadgen_cpu_us_per_msg"), r.get("broker_cpu_us_per_msg")
            if scenario in dict(THROUGHPUT) and own is not None and broker:
                pct.append((own, 100 * own / broker))
    if not pct:
        return None
    return (
        min(p[0] for p in pct),
        max(p[0] for p in pct),
        min(p[1] for p in pct),
        max(p[1] for p in pct),
    )


def render(a, runs):
    scenarios = {s for s, _ in runs}
    not_run = {}
    for item in a.not_run.split(","):
        if "=" in item:
            k, v = item.split("=", 1)
            if v:
                not_run[k] = v
    mode = "quick smoke run (`--quick`: 2 s runs, 200,000-message stall)" if a.quick else "full run"
    lines = [
        BEGIN,
        "",
        f"Generated by `bench/compare.sh` on {a.date}: {mode}, {a.rounds} round(s), median per figure, "
        f"MQTT {'3.1.1' if a.mqtt == '3' else '5'}, everything on 127.0.0.1.",
        "",
        f"- machine: {a.machine}",
        f"- kernel: {a.kernel}",
        f"- Mosquitto: {a.mosquitto_version}",
        f"- fluxmq-edge: {a.fluxmq_version}",
    ]
    cost = loadgen_cost(runs)
    if cost:
        lines.append(
            f"- load generator's own CPU: {cost[0]:.2f}–{cost[1]:.2f} µs per delivered message, "
            f"{cost[2]:.0f}–{cost[3]:.0f}% of the broker's (throughput scenarios, all runs)"
        )
    lines += [
        "",
        "Throughput scenarios (saturating: publishers send as fast as a per-subscriber window of "
        "unreceived messages allows; CPU figures from the half of each run without perf attached, "
        "syscalls, counted with perf, from the other half):",
        "",
    ]
    lines += throughput_table(runs, scenarios, not_run)
    if "idle-5000" in scenarios or any(not_run.values()):
        lines += ["", "5,000 idle MQTT connections (broker RSS with them open minus RSS before):", ""]
        lines += idle_table(runs, not_run)
    if scenarios & {k for k, _ in STALLED}:
        lines += [
            "",
            "Stalled subscriber (subscribes, then stops reading while one publisher sends 256 B "
            "messages, paced by one healthy subscriber):",
            "",
        ]
        lines += stalled_table(runs, scenarios, not_run)
    lines += ["", END]
    return "\n".join(lines) + "\n"


def write(out_path, block):
    path = Path(out_path)
    text = path.read_text() if path.exists() else HEADER_TEXT + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        before = text[: text.index(BEGIN)]
        after = text[text.index(END) + len(END) :]
        if after.startswith("\n"):
            after = after[1:]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True)
    p.add_argument("--out")
    p.add_argument("--rounds", default="?")
    p.add_argument("--mqtt", default="3")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--machine", default="?")
    p.add_argument("--kernel", default="?")
    p.add_argument("--mosquitto-version", default="?")
    p.add_argument("--fluxmq-version", default="?")
    p.add_argument("--date", default="?")
    p.add_argument("--not-run", default="")
    a = p.parse_args()
    runs = load(a.results)
    block = render(a, runs)
    print(block)
    if a.out:
        write(a.out, block)
        print(f"compare_report: updated {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

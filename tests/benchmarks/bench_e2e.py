"""Benchmark: end-to-end images/s from events on Kafka to committed rows in PostgreSQL, per inference backend,
against the tagging engine alone on the same images, same model and batch size, in the same run.

    .venv/bin/python -m tests.benchmarks.bench_e2e [--model BUNDLE] [--backends torch,onnxruntime] [--n 1000]
        [--n-full 120] [--titles] [--out runs/bench-e2e]

It starts a real Kafka broker and PostgreSQL (deploy/dev) once, then for each backend runs `shelfsight run` as a
subprocess (one replica, default settings except the batch size and SHELFSIGHT_BACKEND) and measures:
- throughput on the 224 px set and on the full-size set (~1800x2400): N events produced at once; time from the
  first send to the commit time of the N-th row (`processing_log.first_processed_at`, so the harness's polling
  interval is not counted), and the steady rate: rows per second between the commits of the 10th and the 90th
  percentile row (what a continuous stream gets, without the first batch's ramp-up and the last one's tail);
- the engine alone: `TaggingEngine.tag_bytes` over the same image bytes as the end-to-end run (decode + infer, one
  thread of Python), three passes in a fresh process just before the daemon and three just after it; the figure
  is the mean of the two medians (the machine's speed drifts between minutes), and every pass is printed;
- latency at a light load: events sent at a steady low rate; send time to the row's commit time
  (processing_log.first_processed_at), p50 and p99;
- the daemon's peak resident memory (VmHWM) and whether it imported torch;
- where the time goes, per image set: milliseconds per image in each pipeline stage (from the daemon's
  /metrics), CPU per image and cores used by the daemon, Kafka and PostgreSQL, CPU per thread of the daemon, and
  `ratio_cpu_engine_to_pipeline`: the engine's CPU per image over the whole pipeline's (the ceiling of the
  end-to-end ratio on a machine the pipeline saturates; far less disturbed by other load than wall time).
  `--py-spy PATH` also records the daemon during the 224 px run (collapsed stacks, thread names for the ids).
`--titles`: every event carries its product's title (labels.csv beside the images), the daemon decides each product
from its photo and its title, and the engine alone is measured both without and with that decision
(`ratio_titles_to_engine_*`: deciding each product with its title against without, both after tagging; the
end-to-end ratios then compare with the engine that reads titles).
Without --model it builds an untrained bundle (bench_engine.build_untrained; throughput only, says so).
Prints the figures side by side, writes them as JSON and a PNG. Absolute figures are only meaningful on the
machine that printed them; compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from tests.benchmarks.e2e_engine import combine_engine_runs, engine_alone_figures, titles_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--full-images", type=Path)
    parser.add_argument("--n", type=int, default=2000, help="events for the 224 px throughput run")
    parser.add_argument("--n-full", type=int, default=120, help="events for the full-size throughput run (0: none)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--light-rate", type=float, default=4.0, help="events/s for the latency run")
    parser.add_argument("--light-seconds", type=float, default=15.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-e2e")
    parser.add_argument(
        "--py-spy", type=Path, help="py-spy executable: record the daemon during the 224 px run (flame graph SVG)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra daemon setting, e.g. SHELFSIGHT_BATCH__DECODE_WORKERS=2 (repeatable; to compare settings)",
    )
    parser.add_argument("--titles", action="store_true", help="events carry their product's title (labels.csv)")
    parser.add_argument("--engine-alone", help=argparse.SUPPRESS)  # worker: BACKEND, prints images/s as JSON
    args = parser.parse_args()

    from tests.benchmarks.bench_engine import build_untrained, default_full_images, default_images

    images_dir = args.images or default_images()
    full_dir = args.full_images or default_full_images()
    files = sorted(images_dir.glob("*.jpg"))
    full_files = sorted(full_dir.glob("*.jpg"))[: args.n_full] if full_dir and args.n_full else []
    args.title_of = titles_for([*files, *full_files]) if args.titles else None
    if args.engine_alone:
        figures = engine_alone_figures(
            args.model, args.engine_alone, files, full_files, args.n, args.batch, args.title_of
        )
        print(json.dumps(figures))
        return
    model = args.model
    if model is None:
        model = build_untrained("tf_efficientnet_lite0")
        print(f"no --model: built {model} (untrained heads) for throughput only", file=sys.stderr)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    latencies: dict[str, list[float]] = {}
    for backend in backends:
        # the engine alone just before and just after its daemon, each in a fresh process: this machine's speed
        # drifts by 10-20% over minutes (other tenants), so the ratio uses the mean of both and the drift is shown
        command = [sys.executable, "-m", "tests.benchmarks.bench_e2e", "--engine-alone", backend, "--model", str(model)]
        command += ["--n", str(args.n), "--batch", str(args.batch), "--images", str(images_dir)]
        command += ["--n-full", str(len(full_files))]  # 0 too: the worker's default is not this run's
        if full_files:
            command += ["--full-images", str(full_dir)]
        if args.titles:
            command += ["--titles"]

        def engine_alone() -> dict[str, object]:
            done = subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)  # noqa: B023
            return dict(json.loads(done.stdout))

        before = engine_alone()
        results[backend], latencies[backend] = _daemon_run(args, backend, model, files, full_files)
        alone = combine_engine_runs(before, engine_alone())
        r = results[backend]
        r.update(alone)
        for name in ("224", "full") if full_files else ("224",):
            if args.titles:  # what reading titles costs the engine: products decided with and without their title
                rate = {v: float(alone[f"engine_{name}{v}_img_s"]) for v in ("", "_decided", "_titles")}  # type: ignore[arg-type]
                cpu = {v: float(alone[f"engine_{name}{v}_cpu_ms_per_img"]) for v in ("_decided", "_titles")}  # type: ignore[arg-type]
                r[f"ratio_titles_to_engine_{name}"] = round(rate["_titles"] / rate["_decided"], 3)
                # the same by CPU per image (images/s on a busy machine swing by tens of percent between passes)
                r[f"ratio_titles_to_engine_cpu_{name}"] = round(cpu["_decided"] / cpu["_titles"], 3)
            engine_rate = float(alone[f"engine_{name}{'_titles' if args.titles else ''}_img_s"])  # type: ignore[arg-type]
            r[f"ratio_e2e_to_engine_{name}"] = round(float(r[f"e2e_{name}_img_s"]) / engine_rate, 3)
            r[f"ratio_steady_to_engine_{name}"] = round(float(r[f"e2e_{name}_steady_img_s"]) / engine_rate, 3)
            where = r.get(f"where_{name}")
            if isinstance(where, dict):  # CPU per image: the engine's share of what the whole pipeline used
                pipeline = sum(float(v) for k, v in where.items() if k.startswith("cpu_") and k.endswith("ms_per_img"))
                engine_cpu = float(alone[f"engine_{name}_cpu_ms_per_img"])  # type: ignore[arg-type]
                r[f"ratio_cpu_engine_to_pipeline_{name}"] = round(engine_cpu / pipeline, 3)
    figures = {
        "model": str(model),
        "untrained_heads": args.model is None,
        "images_224": args.n,
        "images_full": len(full_files),
        "batch": args.batch,
        "daemon_env": args.env,
        "partitions": args.partitions,
        "backends": results,
    }
    _print_table(results)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    _plot(results, latencies, args.out / "bench-e2e.png")
    print(f"written {args.out / 'figures.json'} and {args.out / 'bench-e2e.png'}", file=sys.stderr)


def _daemon_run(
    args: argparse.Namespace, backend: str, model: Path, files: list[Path], full_files: list[Path]
) -> tuple[dict[str, object], list[float]]:
    """One daemon on `backend`: throughput on each image set, light-load latency, peak RSS."""
    from kafka_server import KafkaBroker
    from postgres_server import PostgresServer

    from connectors.kafka_producers import EventPublisher, ensure_topics
    from tests.daemon.harness import (
        DaemonProcess,
        Db,
        connected_producer,
        daemon_env,
        product_event,
        send_events,
        wait_until,
    )

    work = Path(tempfile.mkdtemp(prefix=f"shelfsight-bench-{backend}-"))
    print(f"{backend}: starting Kafka and PostgreSQL ...", file=sys.stderr)
    broker = KafkaBroker(work / "kafka").start()
    pg = PostgresServer(work / "pg")
    pg.start()
    daemon: DaemonProcess | None = None
    figures: dict[str, object] = {}
    try:
        topic = "bench.products"
        ensure_topics(broker.bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
        roots = [files[0].parent, *(f.parent for f in full_files[:1])]
        env = daemon_env(
            bootstrap=broker.bootstrap,
            topic=topic,
            database_url=pg.url,
            model_path=model,
            file_root=Path(os.path.commonpath(roots)),
            group_id="bench",
            extra={
                "SHELFSIGHT_BATCH__MAX_IMAGES": str(args.batch),
                "SHELFSIGHT_LOG_LEVEL": "WARNING",
                "SHELFSIGHT_BACKEND": backend,
                **dict(kv.split("=", 1) for kv in args.env),
            },
        )
        daemon = DaemonProcess(env, work / "daemon.log").start().wait_ready(timeout_s=600)
        db = Db(pg.url)
        time.sleep(5)  # group join and partition assignment

        sets = [("224", [files[i % len(files)] for i in range(args.n)])]
        if full_files:
            sets.append(("full", full_files))
        assert daemon.proc is not None
        processes = {"daemon": daemon.proc.pid, "kafka": broker.pid, "postgres": _postmaster_pid(pg.pgdata)}
        for name, chosen in sets:
            before = db.processed()
            events = [product_event(f"{name}-{i:05d}", f, **_title(args, f)) for i, f in enumerate(chosen)]
            stages_before, cpu_before = _stage_sums(daemon.metrics()), _cpu_seconds(processes)
            threads_before = _thread_cpu_seconds(daemon.proc.pid)
            spy = _start_py_spy(args.py_spy, daemon.proc.pid, args.out / f"py-spy-{backend}-{name}.txt", name)
            producer = connected_producer(broker.bootstrap, topic)  # connecting is not sending: before the clock
            t0, t0_epoch = time.perf_counter(), time.time()
            send_events(producer, topic, events)
            producer.close()
            with tqdm(total=len(events), desc=f"{backend} end to end {name}", unit="img") as bar:
                done = 0
                while done < len(events):
                    time.sleep(0.25)
                    now = db.processed() - before
                    bar.update(now - done)
                    done = now
                    if time.perf_counter() - t0 > 1800:
                        raise SystemExit(f"timed out with {done}/{len(events)} rows:\n{daemon.log_tail()}")
            commits = sorted(
                _as_epoch(ts)
                for (ts,) in db.rows(f"SELECT first_processed_at FROM processing_log WHERE product_id LIKE '{name}-%'")
            )
            wall = commits[-1] - t0_epoch
            figures[f"e2e_{name}_img_s"] = round(len(events) / wall, 2)
            figures[f"e2e_{name}_steady_img_s"] = steady_rate(commits)
            figures[f"e2e_{name}_phases_s"] = burst_phases(commits, t0_epoch)
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
                spy.wait(timeout=60)
            figures[f"where_{name}"] = _where_time_goes(
                _stage_sums(daemon.metrics()), stages_before, _cpu_seconds(processes), cpu_before, len(events), wall
            )
            threads = _thread_cpu_seconds(daemon.proc.pid)
            busiest = sorted(((v - threads_before.get(t, 0.0), t) for t, v in threads.items()), reverse=True)[:8]
            # native thread ids: py-spy's output (--py-spy) names them ("thread (TID): inference")
            figures[f"threads_{name}_cpu_ms_per_img"] = {str(t): round(1000 * v / len(events), 2) for v, t in busiest}

        # -- light load latency ----------------------------------------------------------------------
        sent: dict[str, float] = {}
        n_light = int(args.light_rate * args.light_seconds)
        before = db.processed()
        publisher = EventPublisher(broker.bootstrap, topic)
        start = time.perf_counter()
        for i in tqdm(range(n_light), desc=f"{backend} light load", unit="event"):
            pid = f"l-{i:05d}"
            time.sleep(max(0.0, start + i / args.light_rate - time.perf_counter()))  # a steady rate
            sent[pid] = time.time()
            image = files[(args.n + i) % len(files)]
            publisher.publish(product_event(pid, image, **_title(args, image)))
            publisher.flush()
        publisher.close()
        wait_until(lambda: db.processed() >= before + n_light, 120, "light-load rows", daemon.log_tail)
        committed = {
            str(pid): ts
            for pid, ts in db.rows(
                "SELECT product_id, first_processed_at FROM processing_log WHERE product_id LIKE 'l-%'"
            )
        }
        latencies = [(_as_epoch(committed[pid]) - sent_at) * 1000 for pid, sent_at in sent.items() if pid in committed]
        assert daemon.proc is not None
        figures["latency_p50_ms"] = round(statistics.median(latencies), 1)
        figures["latency_p99_ms"] = round(percentile(latencies, 0.99), 1)
        figures["daemon_peak_rss_mib"] = round(_vm_hwm_kib(daemon.proc.pid) / 1024, 1)
        figures["daemon_imported_torch"] = _maps_torch(daemon.proc.pid)
        daemon.terminate()
        daemon = None
    finally:
        if daemon is not None:
            daemon.ensure_stopped()
        broker.stop()
        pg.stop()
    return figures, latencies


def _title(args: argparse.Namespace, image: Path) -> dict[str, str]:
    """The event's title field with --titles (when the image's product has one), else nothing."""
    title = (args.title_of or {}).get(image)
    return {"title": title} if title else {}


def steady_rate(commits: list[float], low: float = 0.1, high: float = 0.9) -> float:
    """Rows per second between the `low` and `high` quantile rows of sorted commit times."""
    i, j = int(low * (len(commits) - 1)), int(high * (len(commits) - 1))
    span = commits[j] - commits[i]
    return round((j - i) / span, 2) if span > 0 else float("nan")


def burst_phases(commits: list[float], t0: float) -> dict[str, float]:
    """Where a burst's wall time goes: seconds from the first send to the first row, the ramp to the 10th
    percentile row, the steady middle (10th to 90th), and the drain from the 90th percentile row to the last."""
    i, j = int(0.1 * (len(commits) - 1)), int(0.9 * (len(commits) - 1))
    marks = [t0, commits[0], commits[i], commits[j], commits[-1]]
    names = ("first_row", "ramp_to_p10", "steady_p10_p90", "drain_p90_last")
    return {name: round(b - a, 3) for name, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_seconds(processes: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process and its live children."""
    import psutil

    out: dict[str, float] = {}
    for name, pid in processes.items():
        if pid is None:
            continue
        total = 0.0
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        except psutil.Error:
            continue
        out[name] = total
    return out


def _thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each thread of the process."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _stage_sums(metrics: dict[str, float]) -> dict[str, float]:
    """Seconds and counts per pipeline stage, and the inference batches, from the daemon's /metrics."""
    prefix = "shelfsight_stage_duration_seconds_"
    out = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix) and "_bucket" not in k}
    out["batches"] = metrics.get("shelfsight_batch_size_images_count", 0.0)
    out["batched_images"] = metrics.get("shelfsight_batch_size_images_sum", 0.0)
    return out


def _where_time_goes(
    stages: dict[str, float],
    stages_before: dict[str, float],
    cpu: dict[str, float],
    cpu_before: dict[str, float],
    images: int,
    wall_s: float,
) -> dict[str, float]:
    """Per image: milliseconds spent in each stage (summed over threads), and the CPU each process used per image
    and in all (a share of the run's wall time: 2.0 means both cores of a 2-core machine were busy for it)."""
    delta = {k: v - stages_before.get(k, 0.0) for k, v in stages.items()}
    out: dict[str, float] = {}
    for stage in ("fetch", "decode", "inference", "write", "queue"):
        seconds = delta.get(f'sum{{stage="{stage}"}}', 0.0)
        out[f"{stage}_ms_per_img"] = round(1000 * seconds / images, 2)
    batches = delta.get("batches", 0.0)
    out["mean_batch"] = round(delta.get("batched_images", 0.0) / batches, 1) if batches else 0.0
    out["write_batches"] = delta.get('count{stage="write"}', 0.0)
    for name, seconds in cpu.items():
        used = seconds - cpu_before.get(name, 0.0)
        out[f"cpu_{name}_ms_per_img"] = round(1000 * used / images, 2)
        out[f"cpu_{name}_cores"] = round(used / wall_s, 2)
    return out


def _start_py_spy(py_spy: Path | None, pid: int, out: Path, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the daemon: CPU samples per thread as collapsed stacks (flamegraph.pl or speedscope read them)."""
    if py_spy is None or name != "224":
        return None
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--threads", "--rate", "50", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _maps_torch(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (it imported torch)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _print_table(results: dict[str, dict[str, object]]) -> None:
    keys = [
        "engine_224_img_s",
        "engine_224_img_s_passes",
        "engine_224_decided_img_s",
        "engine_224_titles_img_s",
        "engine_224_titles_img_s_passes",
        "ratio_titles_to_engine_224",
        "ratio_titles_to_engine_cpu_224",
        "e2e_224_img_s",
        "e2e_224_steady_img_s",
        "ratio_e2e_to_engine_224",
        "ratio_steady_to_engine_224",
        "engine_full_img_s",
        "e2e_full_img_s",
        "ratio_e2e_to_engine_full",
        "engine_224_cpu_ms_per_img",
        "ratio_cpu_engine_to_pipeline_224",
        "ratio_cpu_engine_to_pipeline_full",
        "latency_p50_ms",
        "latency_p99_ms",
        "daemon_peak_rss_mib",
        "daemon_imported_torch",
    ]
    names = list(results)
    print(f"{'':<34}" + "".join(f"{n:>24}" for n in names))
    for k in keys:
        print(f"{k:<34}" + "".join(f"{results[n].get(k, '-')!s:>24}" for n in names))
    for n in names:
        for name in ("224", "full"):
            where = results[n].get(f"where_{name}")
            if isinstance(where, dict):
                print(f"{n} {name}: where the time goes: " + ", ".join(f"{k} {v}" for k, v in where.items()))
    for n in names:  # the target: Kafka -> PostgreSQL at >= 0.85 x the backend's own engine, 224 px set
        ratio = results[n].get("ratio_e2e_to_engine_224")
        print(f"{n}: end to end / engine alone, 224 px: {ratio} (target >= 0.85)")
    if "torch" in results and "onnxruntime" in results:
        ratio = float(results["onnxruntime"]["engine_224_img_s"]) / float(results["torch"]["engine_224_img_s"])
        print(f"engine onnxruntime / torch (224 px, batch from the run): {ratio:.2f}x")


def _as_epoch(value: object) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


def _vm_hwm_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float("nan")


def _plot(results: dict[str, dict[str, object]], latencies: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = ["engine 224", "e2e 224", "engine full", "e2e full"]
    keys = ["engine_224_img_s", "e2e_224_img_s", "engine_full_img_s", "e2e_full_img_s"]
    width = 0.8 / max(1, len(results))
    for i, (backend, r) in enumerate(results.items()):
        a.bar([j + i * width for j in range(len(keys))], [float(r.get(k, 0) or 0) for k in keys], width, label=backend)
    a.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], labels)
    a.set_ylabel("images / s")
    a.set_title("throughput: engine alone vs Kafka → PostgreSQL")
    a.legend()
    b.bar(list(results), [float(r["daemon_peak_rss_mib"]) for r in results.values()])  # type: ignore[arg-type]
    b.set_ylabel("MiB")
    b.set_title("daemon peak RSS (VmHWM)")
    for backend, values in latencies.items():
        c.hist(values, bins=30, alpha=0.6, label=f"{backend} p50 {results[backend]['latency_p50_ms']} ms")
    c.set_xlabel("event latency at light load (ms)")
    c.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

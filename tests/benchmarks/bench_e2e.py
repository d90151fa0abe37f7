"""Benchmark: end-to-end images/s from events on Kafka to committed rows in PostgreSQL, against the
tagging engine alone on the same images, same model and batch size, in the same run.

    .venv/bin/python -m tests.benchmarks.bench_e2e [--model BUNDLE] [--n 1000] [--out runs/bench-e2e]

It starts a real Kafka broker and PostgreSQL (deploy/dev), runs `shelfsight run` as a subprocess
(one replica, default settings except the batch size), and measures:
- throughput: N events produced at once; time from the first send to the N-th committed row;
- the engine alone: `TaggingEngine.tag_bytes` over the same image bytes (decode + infer, one thread);
- latency at a light load: events sent at a steady low rate; send time to the row's commit time
  (processing_log.first_processed_at), p50 and p99;
- the daemon's peak resident memory (VmHWM).
Prints the figures, writes them as JSON and a PNG (latency distribution and throughput bars).
Absolute figures are only meaningful on the machine that printed them; compare the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "dev"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--n", type=int, default=1000, help="events for the throughput run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--light-rate", type=float, default=4.0, help="events/s for the latency run")
    parser.add_argument("--light-seconds", type=float, default=25.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-e2e")
    args = parser.parse_args()

    from kafka_server import KafkaBroker
    from postgres_server import PostgresServer

    from connectors.kafka import EventPublisher, ensure_topics
    from learner.inference.engine import TaggingEngine
    from learner.model.bundle import load_bundle
    from tests.benchmarks.bench_engine import build_untrained, default_images
    from tests.daemon.harness import DaemonProcess, Db, daemon_env, produce, product_event, wait_until

    images_dir = args.images or default_images()
    files = sorted(images_dir.glob("*.jpg"))
    model = args.model or build_untrained("tf_efficientnet_lite0")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shelfsight-bench-"))

    print("starting Kafka and PostgreSQL ...", file=sys.stderr)
    broker = KafkaBroker(work / "kafka").start()
    pg = PostgresServer(work / "pg")
    pg.start()
    daemon: DaemonProcess | None = None
    try:
        topic = "bench.products"
        ensure_topics(broker.bootstrap, {topic: args.partitions, f"{topic}.dlq": 1})
        env = daemon_env(
            bootstrap=broker.bootstrap,
            topic=topic,
            database_url=pg.url,
            model_path=model,
            file_root=images_dir,
            group_id="bench",
            extra={"SHELFSIGHT_BATCH__MAX_IMAGES": str(args.batch), "SHELFSIGHT_LOG_LEVEL": "WARNING"},
        )
        daemon = DaemonProcess(env, work / "daemon.log").start().wait_ready(timeout_s=180)
        db = Db(pg.url)
        time.sleep(5)  # group join and partition assignment

        # -- throughput ------------------------------------------------------------------------------
        events = [product_event(f"t-{i:05d}", files[i % len(files)]) for i in range(args.n)]
        t0 = time.perf_counter()
        produce(broker.bootstrap, topic, events)
        with tqdm(total=args.n, desc="end to end", unit="img") as bar:
            done = 0
            while done < args.n:
                time.sleep(0.25)
                now = db.processed()
                bar.update(now - done)
                done = now
                if time.perf_counter() - t0 > 1800:
                    raise SystemExit(f"timed out with {done}/{args.n} rows:\n{daemon.log_tail()}")
        e2e_s = time.perf_counter() - t0
        e2e = args.n / e2e_s

        # -- light load latency ----------------------------------------------------------------------
        sent: dict[str, float] = {}
        n_light = int(args.light_rate * args.light_seconds)
        publisher = EventPublisher(broker.bootstrap, topic)
        start = time.perf_counter()
        for i in tqdm(range(n_light), desc="light load", unit="event"):
            pid = f"l-{i:05d}"
            time.sleep(max(0.0, start + i / args.light_rate - time.perf_counter()))  # a steady rate
            sent[pid] = time.time()
            publisher.publish(product_event(pid, files[i % len(files)]))
            publisher.flush()
        publisher.close()
        wait_until(lambda: db.processed() >= args.n + n_light, 120, "light-load rows", daemon.log_tail)
        committed = {
            str(pid): ts
            for pid, ts in db.rows(
                "SELECT product_id, first_processed_at FROM processing_log WHERE product_id LIKE 'l-%'"
            )
        }
        latencies = [(_as_epoch(committed[pid]) - sent_at) * 1000 for pid, sent_at in sent.items() if pid in committed]
        assert daemon.proc is not None
        peak_rss_mib = _vm_hwm_kib(daemon.proc.pid) / 1024
        daemon.terminate()
        daemon = None
    finally:
        if daemon is not None:
            daemon.ensure_stopped()
        broker.stop()
        pg.stop()

    # -- the engine alone, same images, same model, same batch -----------------------------------------
    engine = TaggingEngine(load_bundle(model), device="cpu")
    payloads = [files[i % len(files)].read_bytes() for i in range(min(args.n, 256))]
    engine.tag_bytes(payloads[: args.batch], batch_size=args.batch)  # warm-up
    t1 = time.perf_counter()
    engine.tag_bytes(payloads, batch_size=args.batch)
    alone = len(payloads) / (time.perf_counter() - t1)

    figures = {
        "images": args.n,
        "batch": args.batch,
        "partitions": args.partitions,
        "e2e_img_s": round(e2e, 2),
        "engine_alone_img_s": round(alone, 2),
        "ratio_e2e_to_engine": round(e2e / alone, 3),
        "light_load_events_per_s": args.light_rate,
        "latency_p50_ms": round(statistics.median(latencies), 1),
        "latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "daemon_peak_rss_mib": round(peak_rss_mib, 1),
    }
    print(json.dumps(figures, indent=2))
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    _plot(figures, latencies, args.out / "bench-e2e.png")
    print(f"written {args.out / 'figures.json'} and {args.out / 'bench-e2e.png'}", file=sys.stderr)


def _as_epoch(value: object) -> float:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()


def _vm_hwm_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    return float("nan")


def _plot(figures: dict[str, float | int], latencies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.bar(["engine alone", "Kafka → PostgreSQL"], [figures["engine_alone_img_s"], figures["e2e_img_s"]])
    a.set_ylabel("images / s")
    a.set_title(f"throughput (ratio {figures['ratio_e2e_to_engine']})")
    b.hist(latencies, bins=30)
    b.axvline(figures["latency_p50_ms"], color="k", linestyle="--", label=f"p50 {figures['latency_p50_ms']} ms")
    b.axvline(figures["latency_p99_ms"], color="r", linestyle="--", label=f"p99 {figures['latency_p99_ms']} ms")
    b.set_xlabel("event latency at light load (ms)")
    b.legend()
    fig.suptitle(f"peak daemon RSS {figures['daemon_peak_rss_mib']} MiB")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

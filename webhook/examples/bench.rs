//! Throughput and latency of the webhook over real TLS.
//!
//! ```text
//! cargo run --release -p dorado-webhook --example bench -- [--concurrency 32] [--seconds 10]
//! ```
//!
//! Starts the real server (`dorado_webhook::serve`, TLS 1.3, ECDSA P-256 certificate from
//! the built-in generator) on 127.0.0.1 and drives it with reqwest + rustls in the same
//! process, posting the captured opt-in AdmissionReview of the golden set (a StatefulSet
//! pod that gets a full patch). Every response is checked (HTTP 200, a patch present).
//!
//! 1. Closed loop: `--concurrency` workers on keep-alive connections, each sending its next
//!    review as soon as the previous one is answered. Reports reviews per second.
//! 2. Open loop: reviews sent on a fixed schedule at `--rate` per second (default 2,500)
//!    and at half the closed-loop throughput; latency is measured from the *scheduled*
//!    send time, so a stalled server cannot hide its queueing delay (no coordinated
//!    omission). Reports p50/p90/p99/p99.9/max.
//!
//! Client and server share the machine's cores, so the numbers are conservative for a
//! server that has the machine to itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use dorado_webhook::certs::CertificateAuthority;
use dorado_webhook::{MutationConfig, ServeConfig, TlsFiles};
use hdrhistogram::Histogram;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

const REQUEST: &str = include_str!("../tests/golden/opt-in-statefulset.request.json");

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent requests of the closed loop.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration of each measured phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up before each phase, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Fixed rate of the first open-loop phase (reviews per second).
    #[arg(long, default_value_t = 2500)]
    rate: u64,
    /// Most requests in flight in the open loop (and so connections, over HTTP/1.1); a
    /// request that has to wait for a slot still counts its latency from its scheduled time.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Use HTTP/2 (one multiplexed connection per client) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
}

/// Time of the pure decision (parse, mutate, encode) on one thread, without HTTP or TLS.
fn pure_cost(body: &[u8], cfg: &MutationConfig) -> Duration {
    let n = 20_000u32;
    for _ in 0..1000 {
        let _ = dorado_webhook::review(body, cfg);
    }
    let t = Instant::now();
    for _ in 0..n {
        let r = dorado_webhook::review(body, cfg).expect("review");
        assert_eq!(r.outcome, dorado_webhook::Outcome::Mutated);
    }
    t.elapsed() / n
}

fn client(ca_pem: &str, http2: bool) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA accepted");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(10));
    if http2 {
        b = b.http2_prior_knowledge();
    } else {
        b = b.http1_only();
    }
    b.build().expect("client")
}

async fn one(client: &reqwest::Client, url: &str, body: &'static [u8]) -> Result<(), String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if memchr(b"\"patch\":\"", &bytes) {
        Ok(())
    } else {
        Err("response without a patch".into())
    }
}

fn memchr(needle: &[u8], hay: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// CPU time consumed so far by this process's threads whose name starts with `prefix`
/// (all threads for ""), from `/proc/self/task/*/schedstat` (Linux).
fn cpu_time(prefix: &str) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.trim_end().starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// CPU used by the server runtime and by the whole process over a window.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    server: Duration,
    total: Duration,
}

fn cpu_now() -> Cpu {
    Cpu {
        server: cpu_time("server"),
        total: cpu_time(""),
    }
}

fn cpu_since(start: Cpu) -> Cpu {
    let now = cpu_now();
    Cpu {
        server: now.server.saturating_sub(start.server),
        total: now.total.saturating_sub(start.total),
    }
}

fn report_cpu(cpu: Cpu, reviews: f64, wall: Duration) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / reviews.max(1.0);
    println!(
        "  cpu: server {:.0} µs/review ({:.2} cores), whole process {:.0} µs/review ({:.2} cores); \
         server-only capacity per core ≈ {:.0} reviews/s",
        per(cpu.server),
        cpu.server.as_secs_f64() / wall.as_secs_f64(),
        per(cpu.total),
        cpu.total.as_secs_f64() / wall.as_secs_f64(),
        1e6 / per(cpu.server).max(1e-9),
    );
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

struct Closed {
    rate: f64,
    cpu: Cpu,
    wall: Duration,
    hist: Histogram<u64>,
    errors: u64,
}

async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    body: &'static [u8],
    concurrency: usize,
    warmup: Duration,
    run: Duration,
) -> Closed {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.to_owned());
        let (stop, measuring, errors) = (stop.clone(), measuring.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = one(&client, &url, body).await;
                let on = measuring.load(Ordering::Relaxed);
                match r {
                    Ok(()) if on => {
                        count += 1;
                        hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("error: {e}");
                        }
                    }
                }
            }
            (count, hist)
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let cpu0 = cpu_now();
    tokio::time::sleep(run).await;
    measuring.store(false, Ordering::Relaxed);
    let cpu = cpu_since(cpu0);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_hist();
    let mut total = 0;
    for t in tasks {
        let (count, h) = t.await.expect("worker");
        total += count;
        hist.add(h).expect("merge");
    }
    Closed {
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu,
        wall: elapsed,
        hist,
        errors: errors.load(Ordering::Relaxed),
    }
}

struct Open {
    sent: u64,
    cpu: Cpu,
    achieved: f64,
    hist: Histogram<u64>,
    errors: u64,
}

async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    body: &'static [u8],
    rate: u64,
    max_in_flight: usize,
    warmup: Duration,
    run: Duration,
) -> Open {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, String>>();
    let begin = Instant::now() + Duration::from_millis(50);
    let measure_from = begin + warmup;
    let end = measure_from + run;
    let mut n: u64 = 0;
    let mut sent_measured = 0;
    let mut cpu0 = None;
    loop {
        let scheduled = begin + interval.mul_f64(n as f64);
        if scheduled >= end {
            break;
        }
        let now = Instant::now();
        if scheduled > now {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        let measured = scheduled >= measure_from;
        if measured {
            sent_measured += 1;
            cpu0.get_or_insert_with(cpu_now);
        }
        let (client, url, tx) = (client.clone(), url.to_owned(), tx.clone());
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        tokio::spawn(async move {
            let r = one(&client, &url, body).await;
            drop(permit);
            // Latency from the scheduled send time (includes any client-side queueing).
            let lat = scheduled.elapsed().as_micros().max(1) as u64;
            if measured {
                let _ = tx.send(r.map(|()| lat));
            }
        });
        n += 1;
    }
    let cpu = cpu_since(cpu0.unwrap_or_else(cpu_now));
    drop(tx);
    let mut hist = new_hist();
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(lat) => {
                hist.record(lat).ok();
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    Open {
        sent: sent_measured,
        cpu,
        achieved: hist.len() as f64 / run.as_secs_f64(),
        hist,
        errors,
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn report_latency(label: &str, h: &Histogram<u64>) {
    println!(
        "{label}: p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    );
}

fn main() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("install ring provider");
    let args = Args::parse();

    // Certificates and server.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::new("bench CA", 1).expect("CA");
    let pair = ca
        .issue(&["localhost".into(), "127.0.0.1".into()], 1)
        .expect("serving pair");
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::write(&files.cert, &pair.cert_pem).expect("write cert");
    std::fs::write(&files.key, &pair.key_pem).expect("write key");
    let mutation = MutationConfig::new(
        "dorado/dorado:0.1.0",
        vec!["http://etcd-0.etcd.dorado-system.svc:2379".into()],
    );
    let config = ServeConfig::new(mutation.clone(), files);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind admin");
    let url = format!(
        "https://localhost:{}/mutate",
        listener.local_addr().unwrap().port()
    );
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(dorado_webhook::serve(listener, admin, config, async move {
        let _ = stop_rx.await;
    }));

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("client runtime");
    let body: &'static [u8] = Box::leak(
        serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(REQUEST).expect("JSON"))
            .expect("body")
            .into_boxed_slice(),
    );
    println!(
        "pure decision (review(): parse + mutate + encode, one thread): {:.1} µs per review",
        pure_cost(body, &mutation).as_secs_f64() * 1e6
    );
    let warmup = Duration::from_secs(args.warmup);
    let run = Duration::from_secs(args.seconds);

    client_rt.block_on(async {
        let client = client(ca.cert_pem(), args.http2);
        one(&client, &url, body)
            .await
            .expect("first request succeeds");
        println!(
            "body {} bytes, HTTP/{}, concurrency {}, {} s per phase (+{} s warm-up)",
            body.len(),
            if args.http2 { "2" } else { "1.1" },
            args.concurrency,
            args.seconds,
            args.warmup
        );

        let closed = closed_loop(&client, &url, body, args.concurrency, warmup, run).await;
        println!(
            "closed loop: {:.0} reviews/s, {} errors",
            closed.rate, closed.errors
        );
        report_latency("closed loop latency", &closed.hist);
        report_cpu(
            closed.cpu,
            closed.rate * closed.wall.as_secs_f64(),
            closed.wall,
        );

        let mut rates = vec![args.rate];
        let half = (closed.rate / 2.0).round() as u64;
        if half > 0 && half != args.rate {
            rates.push(half);
        }
        for rate in rates {
            let open = open_loop(&client, &url, body, rate, args.max_in_flight, warmup, run).await;
            println!(
                "open loop at {rate}/s: sent {} answered {:.0}/s, {} errors",
                open.sent, open.achieved, open.errors
            );
            report_latency(&format!("open loop {rate}/s latency"), &open.hist);
            report_cpu(open.cpu, open.sent as f64, run);
        }
    });

    let _ = stop_tx.send(());
    server_rt
        .block_on(server)
        .expect("server task")
        .expect("server stopped cleanly");
}

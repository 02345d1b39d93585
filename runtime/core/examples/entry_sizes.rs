//! Entry sizes and codec cost, version 1 (uncompressed) against version 2
//! (LZ4), for batches like the benchmark's. A measurement, not a test: it
//! prints a table and asserts nothing about time.
//!
//! ```sh
//! cargo run -p dorado-core --release --example entry_sizes
//! ```
//!
//! Payloads are kv puts of exactly 100 bytes,
//! `{"op":"put","key":"k00000042","value":"…"}`, each from its own client
//! (`bench-<run>-dorado-c120-<n>`, as `dorado-bench` names them), with three
//! kinds of value:
//! - `bench`: `x` repeated, what `dorado-bench` sends (the best case);
//! - `words`: words drawn from a 64-word vocabulary (text-like data);
//! - `random`: random base64 characters (the worst case a JSON command can
//!   be: 6 bits of entropy per byte, nothing for LZ4 to repeat);
//! - `binary`: not a kv put at all, 100 random bytes (what a guest with a
//!   binary command encoding and high-entropy data would send): only the
//!   entry's own framing and the client ids can shrink.

use std::hint::black_box;
use std::time::Instant;

use dorado_core::entry::COMPRESS_ABOVE;
use dorado_core::{ClientTag, Command, Entry};

/// A small deterministic generator (xorshift64*), so every run measures the
/// same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Bench,
    Words,
    Random,
    Binary,
}

const WORDS: [&str; 64] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "order", "paid", "shipped", "user",
    "cart", "item", "price", "total", "eur", "usd", "red", "green", "blue", "small", "large",
    "north", "south", "east", "west", "open", "closed", "pending", "active", "berlin", "lisbon",
    "oslo", "rome", "tokyo", "lima2", "seoul", "cairo", "quito", "apple", "pear", "plum", "fig",
    "kiwi", "lime",
];
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn command(rng: &mut Rng, kind: Kind, client: usize, seq: u64) -> Command {
    let client = Some(ClientTag {
        id: format!("bench-5f3a9c21-dorado-c120-{client}"),
        seq,
    });
    if let Kind::Binary = kind {
        let payload = (0..100).map(|_| rng.next() as u8).collect();
        return Command { client, payload };
    }
    let key = format!("k{:08}", rng.below(100_000));
    let base = format!(r#"{{"op":"put","key":"{key}","value":""}}"#);
    let pad = 100 - base.len();
    let mut value = String::new();
    while value.len() < pad {
        match kind {
            Kind::Bench => value.push('x'),
            Kind::Words => {
                value.push_str(WORDS[rng.below(WORDS.len())]);
                value.push(' ');
            }
            Kind::Random => value.push(BASE64[rng.below(64)] as char),
            Kind::Binary => unreachable!("binary payloads are not kv puts"),
        }
    }
    value.truncate(pad);
    let payload = format!(r#"{{"op":"put","key":"{key}","value":"{value}"}}"#).into_bytes();
    assert_eq!(payload.len(), 100);
    Command { client, payload }
}

fn batch(kind: Kind, n: usize, seed: u64) -> Entry {
    let mut rng = Rng(seed);
    Entry::Batch(
        (0..n)
            .map(|i| command(&mut rng, kind, i, 1000 + i as u64))
            .collect(),
    )
}

/// Best of 5 rounds of `iters` calls, in µs per call.
fn micros(iters: u32, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let kinds = [
        ("bench", Kind::Bench),
        ("words", Kind::Words),
        ("random", Kind::Random),
        ("binary", Kind::Binary),
    ];
    println!("## 120 commands of 100 B (kv puts, one client each)\n");
    println!(
        "| payload | v1 bytes | stored bytes | saved | encode v1 µs | encode (v2) µs | decode v1 µs | decode stored µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, kind) in kinds {
        let entry = batch(kind, 120, 42);
        let v1 = entry.encode_uncompressed().unwrap();
        let stored = entry.encode().unwrap();
        assert_eq!(Entry::decode(&stored).unwrap(), entry);
        let iters = 2000;
        let enc_v1 = micros(iters, || {
            black_box(black_box(&entry).encode_uncompressed().unwrap());
        });
        let enc = micros(iters, || {
            black_box(black_box(&entry).encode().unwrap());
        });
        let dec_v1 = micros(iters, || {
            black_box(Entry::decode(black_box(&v1)).unwrap());
        });
        let dec = micros(iters, || {
            black_box(Entry::decode(black_box(&stored)).unwrap());
        });
        println!(
            "| {name} | {} | {} (v{}) | {:.0} % | {enc_v1:.1} | {enc:.1} | {dec_v1:.1} | {dec:.1} |",
            v1.len(),
            stored.len(),
            stored[2],
            100.0 * (1.0 - stored.len() as f64 / v1.len() as f64),
        );
    }

    println!("\n## by batch size (threshold: compressed above {COMPRESS_ABOVE} B)\n");
    println!(
        "| commands | bench: v1 → stored | words: v1 → stored | random: v1 → stored | binary: v1 → stored |"
    );
    println!("|---:|---|---|---|---|");
    for n in [1, 2, 3, 4, 8, 16, 32, 120, 1000] {
        let cells: Vec<String> = kinds
            .iter()
            .map(|&(_, kind)| {
                let entry = batch(kind, n, 7);
                let v1 = entry.uncompressed_len();
                let stored = entry.encode().unwrap();
                format!(
                    "{v1} → {} (v{}, {:.0} %)",
                    stored.len(),
                    stored[2],
                    100.0 * (1.0 - stored.len() as f64 / v1 as f64)
                )
            })
            .collect();
        println!("| {n} | {} |", cells.join(" | "));
    }

    // What the threshold skips: compressing a one- or two-command batch.
    println!("\n## small batches compressed anyway (what the threshold avoids)\n");
    println!("| commands | payload | v1 bytes | LZ4 + v2 header | compress µs |");
    println!("|---:|---|---:|---:|---:|");
    for n in [1, 2] {
        for (name, kind) in kinds {
            let v1 = batch(kind, n, 7).encode_uncompressed().unwrap();
            let packed = lz4_flex::block::compress(&v1);
            let t = micros(20_000, || {
                black_box(lz4_flex::block::compress(black_box(&v1)));
            });
            println!(
                "| {n} | {name} | {} | {} | {t:.2} |",
                v1.len(),
                packed.len() + 8
            );
        }
    }
}

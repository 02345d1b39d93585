//! etcd's own Prometheus metrics, read typed: a census of what etcd did.
//!
//! etcd serves `/metrics` on its client URL (plain `http://`). [`parse`]
//! reads the Prometheus text exposition format (version 0.0.4, what etcd 3.4
//! writes) into [`Sample`]s, and [`EtcdCensus`] picks the counters that say
//! what a workload cost etcd: gRPC requests by method, streams started,
//! stream messages, bytes received and sent, and etcd's CPU time. Two
//! censuses taken around a run subtract ([`EtcdCensus::since`]) into what
//! that run cost; the benchmark divides them per command, and tests count
//! streams with them (e.g. one `LeaseKeepAlive` stream per lease).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (for histograms with its `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line of the exposition that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
    /// The line (truncated to 200 characters).
    pub text: String,
}

/// Parse the Prometheus text exposition format. Comments (`# HELP`,
/// `# TYPE`, any `#` line) and blank lines are skipped; every other line
/// must be a well-formed sample.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |reason: &str| ParseError {
            line: i + 1,
            reason: reason.to_owned(),
            text: raw.chars().take(200).collect(),
        };
        out.push(parse_line(line).map_err(|r| error(&r))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Labels after the `{`; returns them and what follows the `}`.
#[allow(clippy::type_complexity)]
fn parse_labels(mut s: &str) -> Result<(Vec<(String, String)>, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s.strip_prefix('"').ok_or("label value without quotes")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, other)) => return Err(format!("bad escape \\{other}")),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = s[end + 1..].trim_start();
        if let Some(tail) = s.strip_prefix(',') {
            s = tail;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// What etcd did, from its counters (totals since it started, or the
/// difference of two of them: [`EtcdCensus::since`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EtcdCensus {
    /// RPCs completed, by gRPC method (`grpc_server_handled_total`, all
    /// codes): `Txn`, `Range`, `Put`, `LeaseGrant`, ... A stream counts once,
    /// when it ends.
    pub handled: BTreeMap<String, f64>,
    /// Streams that ended with a code other than `OK`, by method and code
    /// (e.g. `LeaseKeepAlive/Unavailable`).
    pub handled_not_ok: BTreeMap<String, f64>,
    /// RPCs (unary calls and streams) started, by method
    /// (`grpc_server_started_total`).
    pub started: BTreeMap<String, f64>,
    /// Messages received on RPCs, by method (`grpc_server_msg_received_total`):
    /// for a stream, one per request sent on it.
    pub messages_received: BTreeMap<String, f64>,
    /// Bytes etcd received from gRPC clients
    /// (`etcd_network_client_grpc_received_bytes_total`).
    pub received_bytes: f64,
    /// Bytes etcd sent to gRPC clients (`etcd_network_client_grpc_sent_bytes_total`).
    pub sent_bytes: f64,
    /// etcd's user + system CPU time (`process_cpu_seconds_total`).
    pub cpu_seconds: f64,
}

impl EtcdCensus {
    /// The census in `samples`.
    pub fn from_samples(samples: &[Sample]) -> Self {
        let mut c = EtcdCensus::default();
        for s in samples {
            let method = || s.label("grpc_method").unwrap_or("?").to_owned();
            match s.name.as_str() {
                "grpc_server_handled_total" => {
                    *c.handled.entry(method()).or_default() += s.value;
                    let code = s.label("grpc_code").unwrap_or("?");
                    if code != "OK" && s.value != 0.0 {
                        *c.handled_not_ok
                            .entry(format!("{}/{code}", method()))
                            .or_default() += s.value;
                    }
                }
                "grpc_server_started_total" => {
                    *c.started.entry(method()).or_default() += s.value;
                }
                "grpc_server_msg_received_total" => {
                    *c.messages_received.entry(method()).or_default() += s.value;
                }
                "etcd_network_client_grpc_received_bytes_total" => c.received_bytes += s.value,
                "etcd_network_client_grpc_sent_bytes_total" => c.sent_bytes += s.value,
                "process_cpu_seconds_total" => c.cpu_seconds += s.value,
                _ => {}
            }
        }
        c
    }

    /// Parse an exposition and take the census.
    pub fn from_exposition(text: &str) -> Result<Self, ParseError> {
        parse(text).map(|s| Self::from_samples(&s))
    }

    /// `GET <client_url>/metrics` and take the census.
    pub async fn fetch(
        http: &reqwest::Client,
        client_url: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = format!("{}/metrics", client_url.trim_end_matches('/'));
        let resp = http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        Self::from_exposition(&text).map_err(|e| format!("{url}: {e}"))
    }

    /// What happened between `before` and `self` (counters only grow; a
    /// counter that went down, e.g. after an etcd restart, counts from 0).
    pub fn since(&self, before: &EtcdCensus) -> EtcdCensus {
        fn sub(a: f64, b: f64) -> f64 {
            if a >= b { a - b } else { a }
        }
        fn map(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
            a.iter()
                .map(|(k, v)| (k.clone(), sub(*v, b.get(k).copied().unwrap_or(0.0))))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        }
        EtcdCensus {
            handled: map(&self.handled, &before.handled),
            handled_not_ok: map(&self.handled_not_ok, &before.handled_not_ok),
            started: map(&self.started, &before.started),
            messages_received: map(&self.messages_received, &before.messages_received),
            received_bytes: sub(self.received_bytes, before.received_bytes),
            sent_bytes: sub(self.sent_bytes, before.sent_bytes),
            cpu_seconds: sub(self.cpu_seconds, before.cpu_seconds),
        }
    }

    /// RPCs of `method` completed.
    pub fn handled(&self, method: &str) -> f64 {
        self.handled.get(method).copied().unwrap_or(0.0)
    }

    /// RPCs (or streams) of `method` started.
    pub fn started(&self, method: &str) -> f64 {
        self.started.get(method).copied().unwrap_or(0.0)
    }

    /// Messages received on `method`'s RPCs.
    pub fn messages_received(&self, method: &str) -> f64 {
        self.messages_received.get(method).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from etcd 3.4.23's `/metrics` after a put, a get, a txn, two
    /// lease grants and one `etcdctl lease keep-alive --once` (trimmed to
    /// the families the census reads plus a histogram and gauges).
    const SAMPLE: &str = include_str!("fixtures/etcd-3.4.23-metrics.txt");

    #[test]
    fn parses_the_captured_sample() {
        let samples = parse(SAMPLE).unwrap();
        assert!(samples.len() > 50, "{}", samples.len());
        let inf = samples
            .iter()
            .find(|s| {
                s.name == "etcd_disk_wal_fsync_duration_seconds_bucket"
                    && s.label("le") == Some("+Inf")
            })
            .unwrap();
        assert!(inf.value >= 1.0);
        let go = samples.iter().find(|s| s.name == "go_info").unwrap();
        assert_eq!(go.label("version"), Some("go1.19.8"));
        let start = samples
            .iter()
            .find(|s| s.name == "process_start_time_seconds")
            .unwrap();
        assert!(start.value > 1.0e9, "scientific notation: {}", start.value);

        let c = EtcdCensus::from_samples(&samples);
        assert_eq!(c.handled("Txn"), 1.0);
        assert_eq!(c.handled("Range"), 1.0);
        assert_eq!(c.handled("Put"), 1.0);
        assert_eq!(c.handled("LeaseGrant"), 2.0);
        assert_eq!(c.started("LeaseKeepAlive"), 1.0);
        assert_eq!(c.messages_received("LeaseKeepAlive"), 1.0);
        assert_eq!(
            c.handled_not_ok.get("LeaseKeepAlive/Unavailable"),
            Some(&1.0)
        );
        assert_eq!(c.received_bytes, 33.0);
        assert_eq!(c.sent_bytes, 222.0);
        assert_eq!(c.cpu_seconds, 0.07);
    }

    #[test]
    fn differences_of_two_censuses() {
        let before = EtcdCensus::from_exposition(SAMPLE).unwrap();
        let after_text = SAMPLE
            .replace(
                r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#,
                r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Txn",grpc_service="etcdserverpb.KV",grpc_type="unary"} 11"#,
            )
            .replace(
                "etcd_network_client_grpc_sent_bytes_total 222",
                "etcd_network_client_grpc_sent_bytes_total 1222",
            )
            .replace(
                "process_cpu_seconds_total 0.07",
                "process_cpu_seconds_total 1.57",
            );
        let after = EtcdCensus::from_exposition(&after_text).unwrap();
        let d = after.since(&before);
        assert_eq!(d.handled("Txn"), 10.0);
        assert_eq!(d.handled("Range"), 0.0);
        assert!(!d.handled.contains_key("Range"), "zero deltas are dropped");
        assert_eq!(d.sent_bytes, 1000.0);
        assert_eq!(d.received_bytes, 0.0);
        assert!((d.cpu_seconds - 1.5).abs() < 1e-9);
        // A counter that went down (etcd restarted) counts from zero.
        let restarted = before.since(&after);
        assert_eq!(restarted.handled("Txn"), 1.0);
    }

    #[test]
    fn label_values_with_escapes_and_odd_spacing() {
        let s = parse(
            "# a comment\n\nm{a=\"x\\\"y\",b=\"back\\\\slash\\nnl\" , } 3 1700000000000\nn -Inf\no NaN\np{} +Inf\n",
        )
        .unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].label("a"), Some("x\"y"));
        assert_eq!(s[0].label("b"), Some("back\\slash\nnl"));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, f64::NEG_INFINITY);
        assert!(s[2].value.is_nan());
        assert_eq!(s[3].value, f64::INFINITY);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        for bad in [
            "m{a=\"x\"",
            "m{a=x} 1",
            "m{a=\"x\"} ",
            "m 1 2 3",
            "m one",
            "{a=\"x\"} 1",
            "m{a=\"x\\q\"} 1",
            "m 1 notatime",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).unwrap_err();
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
    }
}

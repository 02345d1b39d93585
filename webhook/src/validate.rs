//! Small validators for names and values that end up in the pod spec. Each returns a
//! human-readable reason on failure; callers add which annotation it came from.

/// Longest DNS-1123 label.
pub const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (ConfigMap names).
pub const SUBDOMAIN_MAX: usize = 253;

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric,
/// at most 63 characters (StatefulSet names, group names).
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > LABEL_MAX {
        return Err(format!("must be at most {LABEL_MAX} characters"));
    }
    let b = s.as_bytes();
    let ok_inner = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    let ok_edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(|&c| ok_inner(c)) || !ok_edge(b[0]) || !ok_edge(b[b.len() - 1]) {
        return Err(
            "must consist of lowercase letters, digits and '-', and start and end with a \
             letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (ConfigMap names).
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > SUBDOMAIN_MAX {
        return Err(format!("must be at most {SUBDOMAIN_MAX} characters"));
    }
    for part in s.split('.') {
        if part.is_empty() || dns1123_label(part).is_err() {
            return Err(
                "must consist of lowercase letters, digits, '-' and '.', and start \
                 and end with a letter or digit"
                    .into(),
            );
        }
    }
    Ok(())
}

/// A ConfigMap key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.`, `..` or `..*`.
pub fn configmap_key(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > SUBDOMAIN_MAX {
        return Err(format!("must be at most {SUBDOMAIN_MAX} characters"));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'".into());
    }
    if s == "." || s.starts_with("..") {
        return Err("must not be '.' or start with '..'".into());
    }
    Ok(())
}

/// An etcd client URL: `http://host:port` or `https://host:port` (port optional, no path,
/// no user info).
pub fn etcd_endpoint(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("has no host".into());
    }
    if rest.contains(['/', '@', '?', '#', ' ', ',']) {
        return Err("must be scheme://host[:port] without path, user or query".into());
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        // [ipv6]:port
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "has an unclosed '[' in the host".to_string())?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| "has garbage after ']'".to_string())?,
            ),
        };
        (host, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("has an invalid port {p:?}")),
        }
    }
    Ok(())
}

/// Whether an endpoint accepted by [`etcd_endpoint`] uses TLS.
pub fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

/// Splits a comma-separated endpoint list, trimming blanks and dropping empty items.
pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["kv", "a", "kv-0", "0abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-kv", "kv-", "Kv", "k_v", "k.v", "k/v", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        for ok in ["kv", "kv.module", "kv-module.v2"] {
            assert!(dns1123_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".kv", "kv.", "kv..x", "KV", "kv/x", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn configmap_keys() {
        for ok in ["module.wasm", "kv.wasm", "A_b-c.d", ".hidden"] {
            assert!(configmap_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "..x", "a/b", "a b", "ü"] {
            assert!(configmap_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        for ok in [
            "http://etcd:2379",
            "https://etcd-0.etcd.dorado-system.svc:2379",
            "http://127.0.0.1:2379/",
            "http://[::1]:2379",
            "http://etcd",
        ] {
            assert!(etcd_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "etcd:2379",
            "ftp://etcd:2379",
            "http://",
            "http://:2379",
            "http://etcd:port",
            "http://etcd:0",
            "http://etcd:2379/v3",
            "http://u@etcd:2379",
            "http://[::1",
        ] {
            assert!(etcd_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            split_endpoints(" http://a:1 ,, http://b:2 "),
            vec!["http://a:1", "http://b:2"]
        );
    }
}

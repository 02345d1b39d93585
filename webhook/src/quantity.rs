//! Kubernetes resource quantities (`250m`, `1.5`, `512Mi`, `1e3`), parsed just far enough
//! to validate them and to compare a request with its limit.
//!
//! Grammar (from `k8s.io/apimachinery/pkg/api/resource`):
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! number          ::= digits | digits "." digits | digits "." | "." digits
//! suffix          ::= binarySI | decimalExponent | decimalSI
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= m | "" | k | M | G | T | P | E
//! decimalExponent ::= ("e" | "E") signedNumber
//! ```

use std::fmt;

/// A validated, positive Kubernetes quantity: the original text (kept verbatim for the pod
/// spec) and its approximate numeric value (for comparisons only).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

/// Why a string is not an acceptable quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("empty quantity")]
    Empty,
    /// The string does not follow the Kubernetes quantity grammar.
    #[error("{0:?} is not a Kubernetes quantity")]
    Malformed(String),
    /// The quantity is zero or negative; Dorado needs a positive amount.
    #[error("{0:?} must be greater than zero")]
    NotPositive(String),
}

impl Quantity {
    /// Parses and validates `text`; zero and negative quantities are rejected.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        if text.is_empty() {
            return Err(QuantityError::Empty);
        }
        let malformed = || QuantityError::Malformed(text.to_owned());
        let (sign, rest) = match text.as_bytes()[0] {
            b'+' => (1.0, &text[1..]),
            b'-' => (-1.0, &text[1..]),
            _ => (1.0, text),
        };
        let (number, suffix) = split_number(rest).ok_or_else(malformed)?;
        let mantissa: f64 = number.parse().map_err(|_| malformed())?;
        let multiplier = suffix_multiplier(suffix).ok_or_else(malformed)?;
        let value = sign * mantissa * multiplier;
        if !value.is_finite() {
            return Err(malformed());
        }
        if value <= 0.0 {
            return Err(QuantityError::NotPositive(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            value,
        })
    }

    /// The quantity exactly as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Approximate value in base units (cores or bytes); for comparisons only.
    pub fn value(&self) -> f64 {
        self.value
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits `digits[.digits]` from the suffix; `None` when there is no digit at all.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut digits = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
        digits += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
            digits += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    Some((&s[..i], &s[i..]))
}

fn suffix_multiplier(suffix: &str) -> Option<f64> {
    let m = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i32 = exp.parse().ok()?;
            10f64.powi(exp)
        }
    };
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (text, value) in [
            ("1", 1.0),
            ("250m", 0.25),
            ("1.5", 1.5),
            (".5", 0.5),
            ("2.", 2.0),
            ("+3", 3.0),
            ("512Mi", 512.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("128M", 128e6),
            ("1k", 1e3),
            ("1e3", 1e3),
            ("1E-3", 1e-3),
            ("12e+2", 1200.0),
        ] {
            let q = Quantity::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!((q.value() - value).abs() < 1e-9 * value.max(1.0), "{text}");
            assert_eq!(q.as_str(), text);
        }
    }

    #[test]
    fn rejects_malformed_and_non_positive() {
        for text in [
            "abc", "1.2.3", "Mi", "1 Gi", "1gi", "1KB", "1e", "1e+", ".", "--1", "1mi", "0x10",
        ] {
            assert!(
                matches!(Quantity::parse(text), Err(QuantityError::Malformed(_))),
                "{text}"
            );
        }
        assert_eq!(Quantity::parse(""), Err(QuantityError::Empty));
        assert!(matches!(
            Quantity::parse("0"),
            Err(QuantityError::NotPositive(_))
        ));
        assert!(matches!(
            Quantity::parse("-1"),
            Err(QuantityError::NotPositive(_))
        ));
    }
}

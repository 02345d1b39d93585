//! `kv`: a replicated JSON key-value store, the reference Dorado guest.
//!
//! Commands: `{"op":"put","key":K,"value":V}`, `{"op":"get","key":K}`,
//! `{"op":"delete","key":K}`, `{"op":"cas","key":K,"expected":V|null,"value":V}`.
//! Queries: `{"op":"get","key":K}`, `{"op":"len"}`.
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`; malformed input
//! gets an error reply, never a trap. Values are any non-null JSON value.
//!
//! The logic lives in `logic.rs` so the host benchmark can run the very same
//! code natively.

mod logic;

pub use logic::{Dialect, Kv};

impl dorado_guest::StateMachine for Kv {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        Kv::apply(self, command)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        Kv::query(self, query)
    }

    fn snapshot(&self) -> Vec<u8> {
        Kv::snapshot(self)
    }

    fn restore(bytes: &[u8]) -> Self {
        Kv::from_snapshot(bytes).unwrap_or_else(|e| panic!("{e}"))
    }
}

dorado_guest::export!(Kv);

#[cfg(test)]
mod tests {
    use super::Kv;

    fn s(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn put_get_delete_cas() {
        let mut kv = Kv::default();
        assert_eq!(
            s(kv.apply(br#"{"op":"put","key":"a","value":1}"#)),
            r#"{"ok":true}"#
        );
        assert_eq!(
            s(kv.apply(br#"{"op":"get","key":"a"}"#)),
            r#"{"ok":true,"value":1}"#
        );
        assert_eq!(
            s(kv.apply(br#"{"op":"cas","key":"a","expected":2,"value":3}"#)),
            r#"{"ok":false,"error":"cas mismatch","current":1}"#
        );
        assert_eq!(
            s(kv.apply(br#"{"op":"cas","key":"a","expected":1,"value":3}"#)),
            r#"{"ok":true}"#
        );
        assert_eq!(
            s(kv.apply(br#"{"op":"cas","key":"b","expected":null,"value":"x"}"#)),
            r#"{"ok":true}"#
        );
        assert_eq!(s(kv.query(br#"{"op":"len"}"#)), r#"{"ok":true,"len":2}"#);
        assert_eq!(
            s(kv.apply(br#"{"op":"delete","key":"a"}"#)),
            r#"{"ok":true,"deleted":true}"#
        );
        assert_eq!(
            s(kv.query(br#"{"op":"get","key":"a"}"#)),
            r#"{"ok":true,"value":null}"#
        );
        let snap = kv.snapshot();
        assert_eq!(s(snap.clone()), r#"{"b":"x"}"#);
        assert_eq!(Kv::from_snapshot(&snap).unwrap(), kv);
    }

    #[test]
    fn escaped_keys_work_like_plain_ones() {
        let mut kv = Kv::default();
        kv.apply(br#"{"op":"put","key":"a\"b\u00e9","value":1}"#);
        kv.apply(br#"{"op":"put","key":"a\"b\u00e9","value":2}"#);
        assert_eq!(s(kv.query(br#"{"op":"len"}"#)), r#"{"ok":true,"len":1}"#);
        assert_eq!(s(kv.snapshot()), "{\"a\\\"b\u{e9}\":2}");
        assert!(s(kv.apply(br#"{"op":"get","key":7}"#)).contains("expected a string"));
    }

    #[test]
    fn bad_input_is_an_error_reply() {
        let mut kv = Kv::default();
        for bad in [
            &b"not json"[..],
            br#"{"op":"put","key":"a"}"#,
            br#"{"op":"nope"}"#,
            b"",
        ] {
            assert!(s(kv.apply(bad)).starts_with(r#"{"ok":false,"error":"#));
        }
        assert!(s(kv.apply(br#"{"op":"cas","key":"a","value":1}"#)).contains("expected"));
        assert_eq!(kv, Kv::default());
    }
}

//! `kv2`: version 2 of the `kv` guest, the worked example of a module upgrade.
//!
//! Everything `kv` does (the very same code: `kv/src/logic.rs` is included,
//! not copied), plus the command `{"op":"incr","key":K,"by":N}` (N a signed
//! 64-bit integer, default 1; a missing key counts as 0; reply
//! `{"ok":true,"value":<new value>}`; a value or `by` that is not an integer,
//! or an overflow, is an error reply). Queries as in `kv`.
//!
//! # Snapshot format and migration
//! kv2 adds an operation, not a kind of state (an `incr`ed value is a JSON
//! integer like any other), so it keeps kv's snapshot format exactly. That is
//! what makes both directions work: an upgrade from kv hands kv2 a snapshot
//! it reads, a rollback to kv hands kv a snapshot *it* reads, and
//! `dorado upgrade --verify` finds the states of both modules byte-identical
//! on a history without `incr`. A version that changes the format would
//! write a marker its successors can recognise, and could then not be rolled
//! back to a version that predates it.
//!
//! `migrate` is the SDK's hook for the switch: it gets the old module's hash
//! with its snapshot. kv2 uses it to refuse anything that is not a kv
//! snapshot with a message naming the module it came from (a refusal is a
//! trap: the upgrade is rejected on every replica and the group stays on the
//! old module), where `restore` would only say "corrupt".

#[path = "../../kv/src/logic.rs"]
mod logic;

pub use logic::{Dialect, Kv};

/// Lower-case hex, for messages (the guest has no `hex` crate).
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl dorado_guest::StateMachine for Kv {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        self.apply_in(Dialect::V2, command)
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

    fn migrate(from_module: [u8; 32], snapshot: &[u8]) -> Self {
        Kv::from_snapshot(snapshot).unwrap_or_else(|e| {
            panic!(
                "kv2 cannot migrate the snapshot of module {}: {e}",
                hex(&from_module)
            )
        })
    }
}

dorado_guest::export!(Kv);

#[cfg(test)]
mod tests {
    use super::Kv;
    use dorado_guest::StateMachine;

    fn s(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    fn apply(kv: &mut Kv, command: &str) -> String {
        s(StateMachine::apply(kv, command.as_bytes()))
    }

    #[test]
    fn incr_counts_from_zero_and_refuses_non_integers() {
        let mut kv = Kv::default();
        assert_eq!(
            apply(&mut kv, r#"{"op":"incr","key":"n","by":5}"#),
            r#"{"ok":true,"value":5}"#
        );
        assert_eq!(
            apply(&mut kv, r#"{"op":"incr","key":"n"}"#),
            r#"{"ok":true,"value":6}"#
        );
        assert_eq!(
            apply(&mut kv, r#"{"op":"incr","key":"n","by":-10}"#),
            r#"{"ok":true,"value":-4}"#
        );
        assert_eq!(
            apply(&mut kv, r#"{"op":"get","key":"n"}"#),
            r#"{"ok":true,"value":-4}"#
        );
        apply(&mut kv, r#"{"op":"put","key":"s","value":"text"}"#);
        apply(
            &mut kv,
            r#"{"op":"put","key":"max","value":9223372036854775807}"#,
        );
        let before = kv.clone();
        for (bad, expected) in [
            (
                r#"{"op":"incr","key":"s","by":1}"#,
                r#"{"ok":false,"error":"incr needs the value to be a signed 64-bit integer","current":"text"}"#,
            ),
            (
                r#"{"op":"incr","key":"n","by":1.5}"#,
                r#"{"ok":false,"error":"incr needs an integer \"by\" (signed 64-bit)"}"#,
            ),
            (
                r#"{"op":"incr","key":"n","by":"1"}"#,
                r#"{"ok":false,"error":"incr needs an integer \"by\" (signed 64-bit)"}"#,
            ),
            (
                r#"{"op":"incr","key":"max"}"#,
                r#"{"ok":false,"error":"incr overflows a signed 64-bit integer","current":9223372036854775807}"#,
            ),
            (
                r#"{"op":"incr","by":1}"#,
                r#"{"ok":false,"error":"incr needs a string \"key\""}"#,
            ),
        ] {
            assert_eq!(apply(&mut kv, bad), expected, "{bad}");
        }
        assert_eq!(kv, before);
    }

    #[test]
    fn v1_commands_behave_as_in_kv_and_unknown_ops_name_incr() {
        let mut v1 = Kv::default();
        let mut v2 = Kv::default();
        for command in [
            r#"{"op":"put","key":"a","value":{"x":1}}"#,
            r#"{"op":"cas","key":"a","expected":null,"value":2}"#,
            r#"{"op":"cas","key":"b","expected":null,"value":2}"#,
            r#"{"op":"delete","key":"a"}"#,
            r#"{"op":"get","key":"b"}"#,
            r#"{"op":"put","key":"c","value":1,"by":"ignored"}"#,
        ] {
            assert_eq!(
                v1.apply(command.as_bytes()),
                apply(&mut v2, command).into_bytes()
            );
        }
        assert_eq!(v1, v2);
        assert!(
            s(v1.apply(br#"{"op":"incr","key":"n"}"#)).contains("expected put, get, delete or cas")
        );
        assert!(
            apply(&mut v2, r#"{"op":"nope"}"#).contains("expected put, get, delete, cas or incr")
        );
    }

    #[test]
    fn migrate_reads_v1_snapshots_and_kv2_snapshots_are_v1_snapshots() {
        let mut v1 = Kv::default();
        v1.apply(br#"{"op":"put","key":"a","value":[1,2]}"#);
        v1.apply(br#"{"op":"put","key":"n","value":41}"#);
        let v1_snapshot = v1.snapshot();

        let mut migrated = <Kv as StateMachine>::migrate([7; 32], &v1_snapshot);
        assert_eq!(migrated, v1);
        assert_eq!(StateMachine::snapshot(&migrated), v1_snapshot);
        assert_eq!(
            apply(&mut migrated, r#"{"op":"incr","key":"n"}"#),
            r#"{"ok":true,"value":42}"#
        );
        // What kv2 writes, kv reads (a rollback).
        let v2_snapshot = StateMachine::snapshot(&migrated);
        assert_eq!(Kv::from_snapshot(&v2_snapshot).unwrap(), migrated);
        assert_eq!(<Kv as StateMachine>::restore(&v2_snapshot), migrated);
        // The empty store: kv v1 may hand over "{}" or nothing at all.
        assert_eq!(<Kv as StateMachine>::migrate([0; 32], b""), Kv::default());
        assert_eq!(<Kv as StateMachine>::migrate([0; 32], b"{}"), Kv::default());
    }

    #[test]
    #[should_panic(
        expected = "kv2 cannot migrate the snapshot of module 0101010101010101010101010101010101010101010101010101010101010101: corrupt kv snapshot"
    )]
    fn migrate_refuses_garbage_naming_the_module() {
        <Kv as StateMachine>::migrate([1; 32], b"garbage");
    }
}

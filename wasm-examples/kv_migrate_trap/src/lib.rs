//! `kv_migrate_trap`: a test guest that behaves exactly like `kv` (the same
//! `kv/src/logic.rs`, included rather than copied) except that its migration
//! hook refuses every upgrade by panicking. The host tests use it to check
//! that a refused migration is a deterministic trap rejection carrying the
//! panic message, and that the instance keeps its state.

#[path = "../../kv/src/logic.rs"]
mod logic;

pub use logic::{Dialect, Kv};

/// The panic message of every migration into this module.
pub const REFUSAL: &str = "kv_migrate_trap refuses every migration";

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

    fn migrate(_from_module: [u8; 32], _snapshot: &[u8]) -> Self {
        panic!("{REFUSAL}")
    }
}

dorado_guest::export!(Kv);

#[cfg(test)]
mod tests {
    use super::Kv;
    use dorado_guest::StateMachine;

    #[test]
    #[should_panic(expected = "kv_migrate_trap refuses every migration")]
    fn migrate_always_panics() {
        <Kv as StateMachine>::migrate([0; 32], b"{}");
    }

    #[test]
    fn restore_still_works() {
        let mut kv = Kv::default();
        kv.apply(br#"{"op":"put","key":"a","value":1}"#);
        assert_eq!(<Kv as StateMachine>::restore(&kv.snapshot()), kv);
    }
}

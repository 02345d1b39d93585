//! Each deliberately planted bug is caught within the CI seed budget (1,000
//! seeds). Run one at a time:
//!
//! ```sh
//! cargo test -p dorado-sim --features bug-unfenced --test planted
//! cargo test -p dorado-sim --features bug-skip-gap-fill --test planted
//! cargo test -p dorado-sim --features bug-no-session-cache --test planted
//! cargo test -p dorado-sim --features bug-deaf-suspicion --test planted
//! ```

#[cfg(any(
    feature = "bug-unfenced",
    feature = "bug-skip-gap-fill",
    feature = "bug-no-session-cache",
    feature = "bug-deaf-suspicion"
))]
#[test]
fn the_planted_bug_is_caught_within_a_thousand_seeds() {
    match dorado_sim::sweep(0, 1000) {
        Ok(_) => panic!("1,000 seeds passed although a bug is planted"),
        Err(f) => eprintln!("caught: {f}"),
    }
}

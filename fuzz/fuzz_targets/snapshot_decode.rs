//! Snapshots as the store hands them back (reassembled chunks): any bytes.
//!
//! Properties:
//! * `SnapshotData::decode` never panics, whatever the bytes;
//! * the encoding is canonical: anything that decodes re-encodes to exactly
//!   the same bytes, so two replicas holding the same state always store and
//!   compare identical snapshots.
#![no_main]

use dorado_core::SnapshotData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = SnapshotData::decode(data) else {
        return;
    };
    let again = snapshot
        .encode()
        .expect("a decoded snapshot must be encodable again");
    assert_eq!(again, data, "decode accepted a non-canonical encoding");
    assert_eq!(SnapshotData::decode(&again).as_ref(), Ok(&snapshot));
});

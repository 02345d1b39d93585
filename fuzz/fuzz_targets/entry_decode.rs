//! Log entries as the store hands them back: any bytes at all.
//!
//! Properties:
//! * `Entry::decode` never panics, whatever the bytes (compressed entries
//!   included: hostile lengths, corrupt LZ4 streams);
//! * version 1 is canonical: a version-1 entry that decodes re-encodes
//!   (uncompressed) to exactly the same bytes, and `uncompressed_len`
//!   predicts that length;
//! * version 2 holds only what the encoder may write: an entry whose
//!   uncompressed encoding is above `COMPRESS_ABOVE`, at most
//!   `MAX_DECOMPRESSED_ENTRY`, and longer than the compressed bytes;
//! * whatever decodes, today's encoder writes bytes that decode to the same
//!   entry and are never longer than the uncompressed form.
#![no_main]

use dorado_core::Entry;
use dorado_core::entry::{COMPRESS_ABOVE, MAX_DECOMPRESSED_ENTRY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::decode(data) else {
        return;
    };
    let v1 = entry
        .encode_uncompressed()
        .expect("a decoded entry must be encodable again");
    assert_eq!(
        v1.len(),
        entry.uncompressed_len(),
        "uncompressed_len is wrong"
    );
    match data[2] {
        1 => assert_eq!(v1, data, "decode accepted a non-canonical version-1 entry"),
        2 => {
            assert!(
                v1.len() > COMPRESS_ABOVE,
                "compressed entry below the threshold"
            );
            assert!(
                v1.len() <= MAX_DECOMPRESSED_ENTRY,
                "compressed entry above the limit"
            );
            assert!(data.len() < v1.len(), "compressed entry not shorter");
        }
        v => panic!("decoded an entry of version {v}"),
    }
    let again = entry.encode().expect("encodable");
    assert!(again.len() <= v1.len(), "encode wrote more than version 1");
    assert_eq!(Entry::decode(&again).as_ref(), Ok(&entry));
    if again[2] == 1 {
        assert_eq!(again, v1);
    }
});

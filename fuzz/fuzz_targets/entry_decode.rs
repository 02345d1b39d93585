//! Log entries as the store hands them back: any bytes at all.
//!
//! Properties:
//! * `Entry::decode` never panics, whatever the bytes;
//! * the encoding is canonical: anything that decodes re-encodes to exactly
//!   the same bytes, and `encoded_len` predicts that length.
#![no_main]

use dorado_core::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::decode(data) else {
        return;
    };
    let again = entry
        .encode()
        .expect("a decoded entry must be encodable again");
    assert_eq!(again.len(), entry.encoded_len(), "encoded_len is wrong");
    assert_eq!(again, data, "decode accepted a non-canonical encoding");
    assert_eq!(Entry::decode(&again).as_ref(), Ok(&entry));
});

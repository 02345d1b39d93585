//! The exactly-once headers of the client API (`dorado-client-id`,
//! `dorado-seq`), parsed by `dorado::api::parse_client_tag` before anything
//! reaches the log. The input is an HTTP header block
//! (`Name: value\r\n...\r\n`), so seeds are readable and mutations stay
//! close to what a client can send.
//!
//! Properties:
//! * never panics, whatever header names and values arrive (also repeated);
//! * refusals are `400 bad_header`; `None` exactly when neither header is set;
//! * an accepted tag is what the log format can carry: 1..=255 printable
//!   ASCII bytes and seq > 0, and an entry holding it round-trips.
#![no_main]

use dorado::api::{CLIENT_ID, SEQ, parse_client_tag};
use dorado::wire::ErrorCode;
use dorado_core::entry::MAX_CLIENT_ID;
use dorado_core::{Command, Entry};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parsed = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(data, &mut parsed)
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in parsed.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }
    let neither = !headers.contains_key(CLIENT_ID) && !headers.contains_key(SEQ);
    match parse_client_tag(&headers) {
        Ok(None) => assert!(neither, "headers present but no tag"),
        Ok(Some(tag)) => {
            assert!(!tag.id.is_empty() && tag.id.len() <= MAX_CLIENT_ID);
            assert!(tag.id.bytes().all(|b| b.is_ascii_graphic()));
            assert!(tag.seq > 0);
            let entry = Entry::Batch(vec![Command {
                client: Some(tag),
                payload: b"x".to_vec(),
            }]);
            let bytes = entry.encode().expect("an accepted tag must be encodable");
            assert_eq!(Entry::decode(&bytes), Ok(entry));
        }
        Err(e) => {
            assert!(!neither);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.body.code, ErrorCode::BadHeader);
        }
    }
});

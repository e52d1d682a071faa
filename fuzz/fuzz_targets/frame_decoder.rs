//! The guest↔SVM frame decoder on an arbitrary byte stream: frames are split off the front
//! with `decode_frame` until the input is incomplete or invalid, and every decoded message
//! must survive `to_frame` → `decode_frame` unchanged (and re-encode to the same bytes).
#![no_main]

use hypervisor_api::proto::{decode_frame, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = DEFAULT_MAX_PAYLOAD;
    let mut buf = data;
    // Ok(None) (incomplete) and Err (invalid) both end the stream, as in the daemon.
    while let Ok(Some((msg, n))) = decode_frame(buf, max) {
        assert!(n >= HEADER_LEN && n <= buf.len(), "frame length {n} of {}", buf.len());
        let frame = msg.to_frame();
        let again = decode_frame(&frame, max);
        assert_eq!(
            again,
            Ok(Some((msg.clone(), frame.len()))),
            "round trip of {msg:?}"
        );
        // The encoding is canonical: a strictly decoded frame re-encodes to its own bytes.
        assert_eq!(&frame[..], &buf[..n], "re-encoding of {msg:?}");
        buf = &buf[n..];
    }
});

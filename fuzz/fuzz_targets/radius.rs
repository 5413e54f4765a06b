//! RADIUS: an Accounting-Response from the network, checked against our
//! request. (The client.conf reader also opens the files it names, so it is
//! left to the config tests.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_accounting::radius::packet::{check_response, encode_request, encode_response, Attribute};

fuzz_target!(|data: &[u8]| {
    let secret = b"fuzz-secret";
    let request = encode_request(7, &[Attribute::text(1, "mediaproxy@default")], secret);
    let _ = check_response(data, &request, secret);
    // A genuine answer always passes.
    let good = encode_response(&request, &[], secret);
    assert!(check_response(&good, &request, secret).is_ok());
});

//! SNTP answers as `relaybox clock` reads them from the network.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_proto::sntp::{request, Reply};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (times, packet) = data.split_at(16);
    let t1 = i64::from_le_bytes(times[..8].try_into().unwrap()) as i128 * 1000;
    let t4 = i64::from_le_bytes(times[8..].try_into().unwrap()) as i128 * 1000;
    let (_, sent) = request(t1);
    if let Ok(reply) = Reply::parse(packet, sent, t1, t4) {
        // Whatever the packet says, the result is finite arithmetic.
        let _ = format!("{reply:?}");
    }
});

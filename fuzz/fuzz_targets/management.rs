//! The management port's line decoder and command parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::mgmt::{reply_line, MgmtCommand};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let read = usize::from(cut % 64) + 1;
    let mut lines = LineDecoder::new(1024);
    for chunk in data.chunks(read) {
        lines.push(chunk);
        while let Some(line) = lines.next_line() {
            if let Ok(line) = line {
                let _ = MgmtCommand::parse(&line);
                let reply = reply_line(&line);
                assert!(reply.ends_with("\r\n"));
                assert_eq!(reply.matches('\n').count(), 1, "a reply is one line");
            }
        }
    }
});

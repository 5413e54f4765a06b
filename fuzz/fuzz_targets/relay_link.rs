//! Both ends of the relay link: the relay's `RelayDecoder` (commands and
//! `pong` between frames) and the dispatcher's `LineDecoder` +
//! `RelayLine::parse` + `UpdateReply::parse` (answers, `ping`, `expired`
//! JSON). No input may panic; what decodes re-encodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_proto::headers::LineDecoder;
use relaybox_proto::link::{RelayDecoder, RelayInbound, RelayLine, UpdateReply};
use relaybox_proto::module::Limits;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let read = usize::from(cut % 64) + 1;

    let mut relay = RelayDecoder::new(1024, 64, Limits { max_media: 16 });
    for chunk in data.chunks(read) {
        relay.push(chunk);
        while let Some(inbound) = relay.next_inbound() {
            if let RelayInbound::Command(command) = inbound {
                let mut again = RelayDecoder::new(usize::MAX, usize::MAX, Limits { max_media: 16 });
                again.push(command.encode().as_bytes());
                assert_eq!(again.next_inbound(), Some(RelayInbound::Command(command)));
            }
        }
    }

    let mut lines = LineDecoder::new(4096);
    for chunk in data.chunks(read) {
        lines.push(chunk);
        while let Some(line) = lines.next_line() {
            let Ok(line) = line else { continue };
            if let Ok(parsed) = RelayLine::parse(&line) {
                let encoded = parsed.encode();
                let reparsed = RelayLine::parse(encoded.trim_end_matches("\r\n")).expect("an encoded line parses");
                if !matches!(parsed, RelayLine::Expired(_)) {
                    assert_eq!(reparsed, parsed);
                }
            }
            if let Ok(reply) = UpdateReply::parse(&line) {
                assert_eq!(UpdateReply::parse(&reply.payload()).ok(), Some(reply));
            }
        }
    }
});

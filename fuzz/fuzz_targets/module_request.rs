//! The proxy module's socket: bytes, cut into reads at positions the input
//! chooses, through `FrameDecoder` and `ModuleRequest::parse`, as the
//! dispatcher reads them. No input may panic; a decoded request re-encodes
//! to a request that decodes to the same value; the decoder never holds
//! more than one line's worth once drained.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox_proto::module::{Limits, ModuleReply};
use relaybox_proto::{FrameDecoder, ModuleRequest};

const MAX_LINE: usize = 512;
const MAX_LINES: usize = 64;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read size (1..=64 bytes).
    let Some((&cut, data)) = data.split_first() else { return };
    let read = usize::from(cut % 64) + 1;
    let limits = Limits { max_media: 16 };
    let mut decoder = FrameDecoder::new(MAX_LINE, MAX_LINES);
    for chunk in data.chunks(read) {
        decoder.push(chunk);
        while let Some(frame) = decoder.next_frame() {
            let Ok(frame) = frame else { continue };
            if let Ok(request) = ModuleRequest::parse(&frame, &limits) {
                let text = request.encode();
                let mut again = FrameDecoder::new(usize::MAX, usize::MAX);
                again.push(text.as_bytes());
                let frame = again.next_frame().expect("a whole frame").expect("an encoded frame decodes");
                let reparsed = ModuleRequest::parse(&frame, &limits).expect("an encoded request parses");
                assert_eq!(reparsed, request, "round trip of {text:?}");
            }
        }
    }
    // Reply lines, as the module reads them.
    if let Ok(line) = std::str::from_utf8(data) {
        if let Ok(reply) = ModuleReply::parse(line) {
            assert_eq!(ModuleReply::parse(&reply.encode()).ok(), Some(reply));
        }
    }
});

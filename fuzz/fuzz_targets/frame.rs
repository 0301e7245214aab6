//! Fuzzes the frame decoder: `wire::read_frame` over an in-memory stream
//! that hands out its bytes in small pieces and sometimes is not ready,
//! as a QUIC stream does, under each of the protocol's real frame limits.
//!
//! Input: one selector byte (which limit, how the stream trickles), then the
//! stream's bytes. Up to `MAX_FRAMES_PER_INPUT` frames are read, as a swarm
//! link reads one frame after another, until the first error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pimg::wire::{self, FrameError, MAX_ANNOUNCE_FRAME, MAX_FIRST_FRAME, MAX_FRAME, MAX_LINK_FRAME};
use p2pimg_fuzz::Trickle;

/// The limits the library applies to the streams it reads.
const LIMITS: [u32; 4] = [MAX_FRAME, MAX_FIRST_FRAME, MAX_LINK_FRAME, MAX_ANNOUNCE_FRAME];
/// Frames read from one input: enough to exercise back-to-back frames.
const MAX_FRAMES_PER_INPUT: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(selector & 3)];
    let mut reader = Trickle::new(stream, selector >> 2);
    p2pimg_fuzz::block_on(async {
        for _ in 0..MAX_FRAMES_PER_INPUT {
            let before = reader.consumed();
            let result = wire::read_frame(&mut reader, limit).await;
            let used = reader.consumed() - before;
            if !check(result, used, limit) {
                break;
            }
        }
    });
});

/// Checks one `read_frame` result against the bytes it consumed; false once
/// the stream is done (any error ends a real link).
fn check(result: Result<wire::Message, FrameError>, used: usize, limit: u32) -> bool {
    match result {
        Ok(msg) => {
            // A frame is a 4-byte prefix and a body within the limit.
            assert!(
                used >= 5 && used - 4 <= limit as usize,
                "frame of {used} bytes read"
            );
            // What was accepted re-encodes to a frame that fits the same
            // limit and decodes to the same message.
            let frame = wire::encode(&msg);
            assert!(
                frame.len() <= used,
                "re-encoding grew from {used} to {}",
                frame.len()
            );
            let back = p2pimg_fuzz::block_on(wire::read_frame(&mut &frame[..], limit))
                .expect("a re-encoded frame decodes");
            assert_eq!(back, msg);
            true
        }
        Err(FrameError::Closed) => {
            assert_eq!(used, 0, "Closed after consuming bytes");
            false
        }
        Err(FrameError::TooLarge { len, max }) => {
            assert!(len > max && max == limit);
            // Refused from the prefix alone, before reading any body.
            assert_eq!(used, 4);
            false
        }
        Err(FrameError::Io(_) | FrameError::Decode(_)) => false,
    }
}

//! Fuzzes the message decoder: `postcard::from_bytes::<Message>` on
//! arbitrary bytes. A message that decodes must re-encode canonically,
//! decode back to itself, and survive a trip through a frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pimg::wire::{self, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = postcard::from_bytes::<Message>(data) else {
        return;
    };
    let _ = msg.kind();
    let encoded = postcard::to_allocvec(&msg).expect("a decoded message encodes");
    // Canonical encoding is never longer than what was accepted.
    assert!(encoded.len() <= data.len());
    let back: Message = postcard::from_bytes(&encoded).expect("a re-encoded message decodes");
    assert_eq!(back, msg);
    assert_eq!(postcard::to_allocvec(&back).unwrap(), encoded);

    let frame = wire::encode(&msg);
    assert_eq!(frame[4..], encoded[..]);
    assert_eq!(
        u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
        encoded.len()
    );
    let limit = u32::try_from(encoded.len()).unwrap();
    let framed = p2pimg_fuzz::block_on(wire::read_frame(&mut &frame[..], limit))
        .expect("a frame of a decoded message reads back");
    assert_eq!(framed, msg);

    inspect(&msg);
});

/// What receivers do with a message before trusting it must not panic.
fn inspect(msg: &Message) {
    match msg {
        Message::Announce { manifest }
        | Message::ForceAnnounce { manifest }
        | Message::PlanQuery { manifest }
        | Message::ForcePlanQuery { manifest } => {
            p2pimg_fuzz::checks::validated_manifest(manifest);
        }
        Message::Hello { have, want, .. } => {
            for len in [0, have.0.len() * 8, want.0.len() * 8, usize::MAX / 2] {
                let _ = have.fits(len) && want.fits(len);
            }
            let _ = have.get(usize::MAX) || want.get(have.0.len() * 8 + 1);
        }
        _ => {}
    }
}

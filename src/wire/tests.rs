//! Frozen encodings (golden bytes) and round-trip properties of the protocol.

use proptest::prelude::*;

use super::*;
use crate::content::manifest::{ChunkEntry, ImageEntry, LayerEntry};

fn h(byte: u8) -> Hash {
    Hash([byte; 32])
}

fn tiny_manifest() -> Manifest {
    Manifest {
        images: vec![ImageEntry {
            id: "sha256:ab".into(),
            refs: vec!["a:1".into()],
            config: b"{}".to_vec(),
            layers: vec![0],
        }],
        layers: vec![LayerEntry {
            diff_id: "sha256:cd".into(),
            size: 3,
            first_chunk: 0,
            chunk_count: 1,
        }],
        chunks: vec![ChunkEntry {
            hash: h(1),
            size: 3,
            zsize: 12,
        }],
    }
}

/// One golden frame per message kind, as hex. A change here is a wire
/// format change: bump the ALPN version and update PROTOCOL.md.
fn golden() -> Vec<(Message, &'static str)> {
    let addr = "127.0.0.1:7701".parse().unwrap();
    vec![
        (Message::Finish, "0000000105"),
        (
            Message::Query {
                refs: vec!["a:1".into()],
            },
            "000000060b0103613a31",
        ),
        (
            Message::Status {
                ids: vec![Some("x".into()), None],
                engine: "d".into(),
                digests: vec![Some("y".into()), None],
            },
            "0000000d0c020101780001640201017900",
        ),
        (Message::Have { index: 300 }, "0000000307ac02"),
        (
            Message::Hello {
                dist: h(2),
                have: Bitfield(vec![0b101]),
                want: Bitfield(vec![0b10]),
            },
            concat!(
                "00000025",
                "06",
                "0202020202020202020202020202020202020202020202020202020202020202",
                "0105",
                "0102"
            ),
        ),
        (
            Message::Request { dist: h(3), index: 1 },
            concat!(
                "00000022",
                "08",
                "0303030303030303030303030303030303030303030303030303030303030303",
                "01"
            ),
        ),
        (
            Message::Chunk {
                data: vec![0xde, 0xad],
            },
            "000000040902dead",
        ),
        (
            Message::Error {
                code: ErrorCode::NotFound,
                message: "no".into(),
            },
            "000000050a02026e6f",
        ),
        (
            Message::Error {
                code: ErrorCode::Busy,
                message: "no".into(),
            },
            "000000050a06026e6f",
        ),
        (
            Message::Plan(Plan {
                present: vec![true, false],
                need_chunks: 2,
                need_bytes: 1000,
                stored_chunks: 1,
                engine: "e".into(),
            }),
            "0000000a0102010002e807010165",
        ),
        (
            Message::Start {
                peers: vec![PeerInfo {
                    name: "n1".into(),
                    addr,
                }],
            },
            "0000000c0201026e31007f000001953c",
        ),
        (
            Message::Progress(Progress {
                chunks: 1,
                bytes: 2,
                loading: true,
                reason: None,
            }),
            "000000050301020100",
        ),
        (
            Message::Progress(Progress {
                chunks: 0,
                bytes: 0,
                loading: false,
                reason: Some("ab".into()),
            }),
            "000000080300000001026162",
        ),
        (Message::Done(Outcome::Skipped), "000000020400"),
        (
            Message::Done(Outcome::Loaded {
                received: vec![PeerBytes {
                    peer: "p".into(),
                    chunks: 1,
                    bytes: 5,
                }],
            }),
            "0000000704010101700105",
        ),
        (
            Message::Announce {
                manifest: tiny_manifest(),
            },
            concat!(
                "00000047",
                "00",
                "01",
                "097368613235363a6162",
                "0103613a31",
                "027b7d",
                "0100",
                "01",
                "097368613235363a6364",
                "030001",
                "01",
                "0101010101010101010101010101010101010101010101010101010101010101",
                "030c"
            ),
        ),
        (
            Message::ForceAnnounce {
                manifest: tiny_manifest(),
            },
            concat!(
                "00000047",
                "0e",
                "01",
                "097368613235363a6162",
                "0103613a31",
                "027b7d",
                "0100",
                "01",
                "097368613235363a6364",
                "030001",
                "01",
                "0101010101010101010101010101010101010101010101010101010101010101",
                "030c"
            ),
        ),
        (
            Message::ForcePlanQuery {
                manifest: tiny_manifest(),
            },
            concat!(
                "00000047",
                "0f",
                "01",
                "097368613235363a6162",
                "0103613a31",
                "027b7d",
                "0100",
                "01",
                "097368613235363a6364",
                "030001",
                "01",
                "0101010101010101010101010101010101010101010101010101010101010101",
                "030c"
            ),
        ),
        (
            Message::PlanQuery {
                manifest: tiny_manifest(),
            },
            concat!(
                "00000047",
                "0d",
                "01",
                "097368613235363a6162",
                "0103613a31",
                "027b7d",
                "0100",
                "01",
                "097368613235363a6364",
                "030001",
                "01",
                "0101010101010101010101010101010101010101010101010101010101010101",
                "030c"
            ),
        ),
    ]
}

#[test]
fn golden_encodings() {
    let changed: Vec<String> = golden()
        .into_iter()
        .filter(|(msg, hex)| hex::encode(encode(msg)) != *hex)
        .map(|(msg, hex)| format!("{msg:?}: expected {hex}, got {}", hex::encode(encode(&msg))))
        .collect();
    assert!(changed.is_empty(), "encodings changed:\n{}", changed.join("\n"));
}

#[tokio::test]
async fn frames_round_trip_over_a_stream() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    for (msg, _) in golden() {
        write_frame(&mut a, &msg).await.unwrap();
        assert_eq!(read_frame(&mut b, MAX_ANNOUNCE_FRAME).await.unwrap(), msg);
    }
    drop(a);
    assert!(matches!(
        read_frame(&mut b, MAX_FRAME).await,
        Err(FrameError::Closed)
    ));
}

#[tokio::test]
async fn oversize_length_is_refused_before_allocating() {
    let (mut a, mut b) = tokio::io::duplex(64);
    a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = read_frame(&mut b, MAX_FRAME).await.unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            len: u32::MAX,
            max: MAX_FRAME
        }
    ));
}

#[tokio::test]
async fn truncated_frame_is_an_error_not_a_message() {
    let (mut a, mut b) = tokio::io::duplex(64);
    let frame = encode(&Message::Have { index: 300 });
    a.write_all(&frame[..frame.len() - 1]).await.unwrap();
    drop(a);
    assert!(matches!(
        read_frame(&mut b, MAX_FRAME).await,
        Err(FrameError::Io(_))
    ));
}

#[test]
fn bitfield_bits_and_fit() {
    let mut b = Bitfield::new(10);
    b.set(0);
    b.set(9);
    assert!(b.get(0) && b.get(9) && !b.get(5) && !b.get(100));
    assert!(b.fits(10));
    assert!(!b.fits(8));
    b.0[1] |= 0x80; // a bit past chunk 9
    assert!(!b.fits(10));
}

/// `Progress` as version 1 had it before `reason`: what a pusher of then
/// decodes. Variants before it only take up their index.
#[derive(Debug, PartialEq, Deserialize)]
enum MessageBeforeReason {
    Announce(()),
    Plan(()),
    Start(()),
    Progress { chunks: u32, bytes: u64, loading: bool },
}

/// `reason` is the last field of the last thing in its frame, and postcard
/// ignores bytes past a message: a pusher from before it still reads an
/// agent's progress (PROTOCOL.md, Versioning).
#[test]
fn a_pusher_from_before_reason_still_reads_progress() {
    let msg = Message::Progress(Progress {
        chunks: 3,
        bytes: 4,
        loading: true,
        reason: Some("waiting for the Docker Engine".into()),
    });
    let old: MessageBeforeReason = postcard::from_bytes(&encode(&msg)[4..]).unwrap();
    assert_eq!(
        old,
        MessageBeforeReason::Progress {
            chunks: 3,
            bytes: 4,
            loading: true
        }
    );
}

/// `Plan` and `Status` as pushers before the engines release decode them.
#[derive(Debug, PartialEq, Deserialize)]
enum MessageBeforeEngines {
    Announce(()),
    Plan {
        present: Vec<bool>,
        need_chunks: u32,
        need_bytes: u64,
        stored_chunks: u32,
    },
}

/// `Plan.engine` is the last field of its frame: a pusher from before it
/// still reads an agent's plan.
#[test]
fn a_pusher_from_before_engines_still_reads_plans() {
    let msg = Message::Plan(Plan {
        present: vec![true],
        need_chunks: 2,
        need_bytes: 3,
        stored_chunks: 1,
        engine: "containerd (namespace k8s.io, linux/amd64)".into(),
    });
    let old: MessageBeforeEngines = postcard::from_bytes(&encode(&msg)[4..]).unwrap();
    let expected = MessageBeforeEngines::Plan {
        present: vec![true],
        need_chunks: 2,
        need_bytes: 3,
        stored_chunks: 1,
    };
    assert_eq!(old, expected);
}

/// Every message up to `PlanQuery`, as a version 2 agent decodes them.
/// Variants only take up their index.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
enum MessageOfVersion2 {
    Announce(()),
    Plan(()),
    Start(()),
    Progress(()),
    Done(()),
    Finish,
    Hello(()),
    Have(()),
    Request(()),
    Chunk(()),
    Error(()),
    Query(()),
    Status(()),
    PlanQuery(()),
}

/// A version 2 agent cannot read the forced messages (it would close the
/// connection as broken), which is why they are version 3 and sent only to
/// agents that speak it (PROTOCOL.md, Versioning).
#[test]
fn the_forced_messages_are_version_3() {
    for msg in [
        Message::ForceAnnounce {
            manifest: tiny_manifest(),
        },
        Message::ForcePlanQuery {
            manifest: tiny_manifest(),
        },
    ] {
        assert!(postcard::from_bytes::<MessageOfVersion2>(&encode(&msg)[4..]).is_err());
    }
    assert_eq!(ALPN, b"p2pimg/3", "a version 2 agent would close the connection");
}

#[test]
fn progress_reasons_are_checked_on_receipt() {
    let with = |reason: &str| Progress {
        reason: Some(reason.into()),
        ..Progress::default()
    };
    assert!(Progress::default().check().is_ok());
    assert!(with("no peer offers the 3 chunks it still needs").check().is_ok());
    assert!(with(&"é".repeat(MAX_REASON_LEN / 2)).check().is_ok());
    assert!(with(&"x".repeat(MAX_REASON_LEN + 1)).check().is_err());
    assert!(with("line\nbreak").check().is_err());
    assert!(with("\u{1b}[2Jcleared").check().is_err());
}

#[test]
fn reason_text_fits_the_check() {
    let long = "é".repeat(MAX_REASON_LEN);
    for text in ["engine\ngone", "\u{1b}[31mred", long.as_str(), ""] {
        let reason = reason_text(text);
        let progress = Progress {
            reason: Some(reason.clone()),
            ..Progress::default()
        };
        assert!(progress.check().is_ok(), "{reason:?}");
    }
    assert_eq!(reason_text("engine\ngone"), "engine gone");
    assert_eq!(reason_text(&long).len(), MAX_REASON_LEN);
}

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    let bytes = prop::collection::vec(
        (".{0,8}", any::<u32>(), any::<u64>()).prop_map(|(peer, chunks, bytes)| PeerBytes {
            peer,
            chunks,
            bytes,
        }),
        0..3,
    );
    prop_oneof![
        Just(Outcome::Skipped),
        bytes.clone().prop_map(|received| Outcome::Loaded { received }),
        (".{0,20}", bytes).prop_map(|(reason, received)| Outcome::Failed { reason, received }),
    ]
}

/// postcard carries an address's IP and port, not an IPv6 flow label or
/// scope, which never apply to the routable addresses agents listen on.
fn without_scope(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip(), addr.port())
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::Finish),
        any::<u32>().prop_map(|index| Message::Have { index }),
        (
            arb_hash(),
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(dist, have, want)| Message::Hello {
                dist,
                have: Bitfield(have),
                want: Bitfield(want)
            }),
        (arb_hash(), any::<u32>()).prop_map(|(dist, index)| Message::Request { dist, index }),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|data| Message::Chunk { data }),
        (
            any::<Vec<bool>>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            ".{0,40}"
        )
            .prop_map(|(present, c, b, s, engine)| {
                Message::Plan(Plan {
                    present,
                    need_chunks: c,
                    need_bytes: b,
                    stored_chunks: s,
                    engine,
                })
            }),
        (
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(".{0,40}")
        )
            .prop_map(|(chunks, bytes, loading, reason)| Message::Progress(Progress {
                chunks,
                bytes,
                loading,
                reason
            })),
        arb_outcome().prop_map(Message::Done),
        (
            "[a-z0-9]{1,8}",
            any::<std::net::SocketAddr>().prop_map(without_scope)
        )
            .prop_map(|(name, addr)| Message::Start {
                peers: vec![PeerInfo { name, addr }]
            }),
        ".{0,30}".prop_map(|message| Message::Error {
            code: ErrorCode::Internal,
            message
        }),
        Just(Message::PlanQuery {
            manifest: tiny_manifest()
        }),
        Just(Message::ForceAnnounce {
            manifest: tiny_manifest()
        }),
        Just(Message::ForcePlanQuery {
            manifest: tiny_manifest()
        }),
    ]
}

proptest! {
    #[test]
    fn decode_inverts_encode(msg in arb_message()) {
        let frame = encode(&msg);
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert_eq!(postcard::from_bytes::<Message>(&frame[4..]).unwrap(), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = postcard::from_bytes::<Message>(&bytes);
    }
}

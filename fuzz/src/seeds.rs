//! Small valid inputs: one message of each kind, a manifest that
//! validates, and well-formed `docker save` archives in both layouts. The
//! seed generator (`examples/gen_seeds.rs`) writes them out; the tests
//! check the generators against the library with them.

use p2pimg::content::hash::Hash;
use p2pimg::content::manifest::Manifest;
use p2pimg::wire::{Bitfield, ErrorCode, Message, Outcome, PeerBytes, PeerInfo, Plan, Progress};

use crate::manifest_gen::{ImageGen, ManifestSpec};
use crate::save_gen::{Compression, ImageSpec, LayerSpec, LinkKind, SaveSpec};

/// A small manifest that validates.
pub fn valid_manifest() -> Manifest {
    let spec = ManifestSpec {
        layers: vec![vec![(99, 40)], vec![(4095, 120), (7, 9)]],
        images: vec![ImageGen {
            layers: vec![0, 1],
            refs: vec![(1, 2)],
            variant: 0,
        }],
        tweaks: Vec::new(),
    };
    let m = spec.build();
    m.validate().expect("seed manifest is valid");
    m
}

/// One message of each kind.
pub fn messages(manifest: &Manifest) -> Vec<(&'static str, Message)> {
    let h = Hash([7; 32]);
    let received = vec![PeerBytes {
        peer: "n2".into(),
        chunks: 3,
        bytes: 4096,
    }];
    vec![
        ("finish", Message::Finish),
        ("have", Message::Have { index: 300 }),
        (
            "hello",
            Message::Hello {
                dist: h,
                have: Bitfield(vec![0b101]),
                want: Bitfield(vec![0b010]),
            },
        ),
        ("request", Message::Request { dist: h, index: 2 }),
        (
            "chunk",
            Message::Chunk {
                data: vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0],
            },
        ),
        (
            "error",
            Message::Error {
                code: ErrorCode::BadManifest,
                message: "no".into(),
            },
        ),
        (
            "plan",
            Message::Plan(Plan {
                present: vec![false, true],
                need_chunks: 3,
                need_bytes: 12345,
                stored_chunks: 1,
                engine: "docker 20.10.24 (overlay2, linux/amd64)".into(),
            }),
        ),
        (
            "start",
            Message::Start {
                peers: vec![PeerInfo {
                    name: "n1".into(),
                    addr: "10.0.0.1:7701".parse().unwrap(),
                }],
            },
        ),
        (
            "progress",
            Message::Progress(Progress {
                chunks: 1,
                bytes: 99,
                loading: true,
                reason: None,
            }),
        ),
        (
            "progress-waiting",
            Message::Progress(Progress {
                chunks: 2,
                bytes: 300,
                loading: false,
                reason: Some("none of its 2 peers offers any of the 3 chunks it still lacks".into()),
            }),
        ),
        (
            "done-loaded",
            Message::Done(Outcome::Loaded {
                received: received.clone(),
            }),
        ),
        (
            "done-failed",
            Message::Done(Outcome::Failed {
                reason: "disk".into(),
                received,
            }),
        ),
        ("done-skipped", Message::Done(Outcome::Skipped)),
        (
            "announce",
            Message::Announce {
                manifest: manifest.clone(),
            },
        ),
        (
            "force-announce",
            Message::ForceAnnounce {
                manifest: manifest.clone(),
            },
        ),
        (
            "force-plan-query",
            Message::ForcePlanQuery {
                manifest: manifest.clone(),
            },
        ),
    ]
}

/// Well-formed archives: each layout, each compression, shared layers.
pub fn save_specs() -> Vec<(String, SaveSpec)> {
    let layer = |files: Vec<(u8, Vec<u8>)>, compression, alias_of| LayerSpec {
        files,
        compression,
        alias_of,
    };
    let image = |layers: Vec<u8>, tags: Vec<(u8, u8)>, variant| ImageSpec {
        layers,
        tags,
        variant,
    };
    let mut specs = Vec::new();
    for oci in [false, true] {
        let layout = if oci { "oci" } else { "legacy" };
        let base = layer(vec![(1, b"base layer file".to_vec())], Compression::None, None);
        specs.push((
            format!("{layout}-one-image"),
            SaveSpec {
                oci,
                layers: vec![base.clone()],
                images: vec![image(vec![0], vec![(1, 0)], 0)],
                extras: Vec::new(),
                faults: Vec::new(),
            },
        ));
        let compression = if oci { Compression::Zstd } else { Compression::Gzip };
        specs.push((
            format!("{layout}-shared-base"),
            SaveSpec {
                oci,
                layers: vec![
                    base,
                    layer(vec![(2, vec![b'x'; 300])], compression, None),
                    layer(Vec::new(), Compression::None, Some((0, LinkKind::Symlink))),
                    layer(vec![(3, b"app".to_vec())], Compression::GzipTwoMembers, None),
                ],
                images: vec![
                    image(vec![0, 1], vec![(2, 1)], 1),
                    image(vec![2, 3], Vec::new(), 2),
                ],
                extras: Vec::new(),
                faults: Vec::new(),
            },
        ));
    }
    specs
}

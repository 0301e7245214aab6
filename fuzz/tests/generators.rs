//! The generators agree with the library: seed archives parse to exactly
//! what the model expects, the seed manifest validates, and every fault
//! builds an archive without panicking the generator or the parser.
//! Run with `cargo test` in `fuzz/` (no sanitizer, no nightly features).

use p2pimg::content::pack::PackOptions;
use p2pimg::content::store::ChunkStore;
use p2pimg::engine::parse_save;
use p2pimg_fuzz::checks;
use p2pimg_fuzz::save_gen::{Fault, NameSpec, SaveSpec};
use p2pimg_fuzz::seeds::{save_specs, valid_manifest};

const OPTS: PackOptions = PackOptions {
    chunk_size: 4096,
    zstd_level: 1,
};

fn parse(
    spec: &SaveSpec,
    store: &ChunkStore,
) -> Result<p2pimg::content::manifest::Manifest, p2pimg::engine::SaveError> {
    parse_save(&spec.build().bytes[..], store, &OPTS)
}

#[test]
fn seed_archives_parse_to_what_the_model_expects() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    for (name, spec) in save_specs() {
        let built = spec.build();
        let expected = built.expected.expect("seeds are well-formed");
        let manifest = parse_save(&built.bytes[..], &store, &OPTS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let layers = checks::stored_save(&manifest, &store);
        checks::matches_expected(&manifest, &layers, &expected);
    }
}

#[test]
fn seed_manifest_is_valid_and_indexable() {
    assert!(checks::validated_manifest(&valid_manifest()));
}

#[test]
fn every_fault_builds_and_parses_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let name = NameSpec::Parent(3);
    let faults = [
        Fault::ConfigLies(0, 1),
        Fault::ConfigRaw(1, b"{}".to_vec()),
        Fault::ManifestRaw(b"[{}]".to_vec()),
        Fault::ManifestConfigPath(0, NameSpec::Absolute(2)),
        Fault::ManifestLayerPath(1, 0, NameSpec::Deep(2100, 1)),
        Fault::ManifestDuplicate(1),
        Fault::Drop(4),
        Fault::Duplicate(2),
        Fault::Move(1, 9),
        Fault::Rename(5, name.clone()),
        Fault::ReplaceData(6, b"[1]".to_vec()),
        Fault::SetType(3, b'S'),
        Fault::SizeLies(7, u64::MAX),
        Fault::PaxPath(8, name),
        Fault::Truncate(3000),
        Fault::Flip(700, 0x40),
    ];
    for (_, mut spec) in save_specs() {
        for fault in &faults {
            spec.faults = vec![fault.clone()];
            assert!(spec.build().expected.is_none());
            if let Ok(manifest) = parse(&spec, &store) {
                checks::stored_save(&manifest, &store);
            }
        }
    }
}

#[test]
fn a_lying_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    for (name, mut spec) in save_specs() {
        spec.faults = vec![Fault::ConfigLies(0, 2)];
        let err = parse(&spec, &store).expect_err(&name);
        assert!(err.to_string().contains("hash to"), "{name}: {err}");
    }
}

//! Fuzzes the manifest validator: `Manifest::validate` on manifests
//! decoded from arbitrary bytes (even first byte) and on generated ones,
//! valid unless the fuzzer tweaks them (odd first byte). Validation must
//! never panic; a manifest that passes must be safely indexable
//! (`layer_chunks`, `ImageEntry::chain_ids`, `Manifest::id`; see
//! `p2pimg_fuzz::checks`), and an untweaked generated one must pass.

#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use p2pimg::content::manifest::Manifest;
use p2pimg_fuzz::checks::validated_manifest;
use p2pimg_fuzz::manifest_gen::ManifestSpec;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(manifest) = postcard::from_bytes::<Manifest>(rest) {
            validated_manifest(&manifest);
        }
        return;
    }
    let Ok(spec) = ManifestSpec::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let manifest = spec.build();
    let valid = validated_manifest(&manifest);
    if spec.must_validate(&manifest) {
        assert!(valid, "generated manifest rejected: {:?}", manifest.validate());
    }
});

//! Fuzzes the `docker save` parser on archives built from a fuzzer-chosen
//! description (`p2pimg_fuzz::save_gen`): both layouts, compressed and
//! linked layers, extra entries and faults. Nothing may panic; whatever
//! `parse_save` accepts must be consistent with the store; a well-formed
//! archive must parse to exactly the images it was built from.

#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use p2pimg::engine::parse_save;
use p2pimg_fuzz::save_gen::SaveSpec;
use p2pimg_fuzz::{checks, scratch};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(spec) = SaveSpec::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let built = spec.build();
    let opts = scratch::pack_options(selector);
    scratch::with_store(|store| {
        let result = parse_save(&built.bytes[..], store, &opts);
        let layers = result.as_ref().ok().map(|m| checks::stored_save(m, store));
        match (built.expected.as_deref(), &result, layers) {
            (Some([]), Ok(m), _) => panic!("no images, yet parse_save returned {}", m.images.len()),
            (Some(expected), Ok(m), Some(layers)) => checks::matches_expected(m, &layers, expected),
            (Some(expected), Err(e), _) if !expected.is_empty() => {
                panic!("a well-formed archive was refused: {e}")
            }
            _ => {}
        }
    });
});

//! `cargo +nightly fuzz run parse`: the Buildfile parser must not panic or
//! hang on any input, and whatever it accepts must reprint (canonical
//! `Display`) to text that parses back to the same BuildFile.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tplbuild::buildfile::parse_str;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/Buildfile");
    // One build arg, so that both defaults and overrides are exercised.
    let args = BTreeMap::from([("B".to_string(), "b v".to_string())]);
    match parse_str(path, src, &args) {
        Ok(f) => {
            let text = f.to_string();
            let back = parse_str(path, &text, &BTreeMap::new())
                .unwrap_or_else(|d| panic!("reprint does not parse:\n{text}\n{d}"));
            assert_eq!(back.with_spans_cleared(), f.with_spans_cleared(), "{text}");
        }
        Err(d) => {
            // Rendering must not panic either (carets, tabs, wide chars).
            let _ = d.to_string();
        }
    }
});

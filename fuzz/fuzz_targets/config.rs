//! The config file parser (`driftless::config::parse`) over arbitrary text. Must never panic;
//! every source it accepts has a valid name (1-53 of a-z, 0-9, '-', not at either end), a repo,
//! maxPrunePercent at most 100, an interval of at least 1 s, and no name twice.
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(sources) = driftless::config::parse(text) else { return };
    let mut names = BTreeSet::new();
    for s in &sources {
        let n = &s.name;
        assert!(!n.is_empty() && n.len() <= 53, "{n:?}");
        assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{n:?}");
        assert!(!n.starts_with('-') && !n.ends_with('-'), "{n:?}");
        assert!(!s.spec.url.is_empty());
        assert!(s.max_prune_percent <= 100);
        assert!(s.interval >= Duration::from_secs(1));
        assert!(names.insert(n.clone()), "{n} twice");
    }
});

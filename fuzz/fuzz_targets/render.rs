//! The renderer (`driftless::render::render`) over arbitrary bytes, as YAML and as JSON, under
//! the default limits and under tight ones (so the depth, node, document and size limits are hit
//! by inputs of a few KiB). Render must never panic, and what it returns must hold what its
//! documentation promises: every object has a string apiVersion, kind and metadata.name, no more
//! objects than `max_documents`, lines inside the file, and an error lists at least one problem.
#![no_main]

use driftless::manifest::SourceFile;
use driftless::render::{render, Limits};
use libfuzzer_sys::fuzz_target;

fn tight() -> Limits {
    Limits { max_file_bytes: 2048, max_total_bytes: 3072, max_documents: 16, max_depth: 8, max_nodes: 512 }
}

fn check(files: &[SourceFile], limits: &Limits) {
    match render(files, limits) {
        Ok(manifests) => {
            assert!(manifests.len() <= limits.max_documents, "{} objects over max_documents", manifests.len());
            for m in &manifests {
                assert!(!m.api_version().is_empty() && !m.kind().is_empty() && !m.name().is_empty(), "{m:?}");
                let file = files.iter().find(|f| f.path == m.origin.file).expect("origin names an input file");
                let lines = 1 + file.content.iter().filter(|&&b| b == b'\n').count();
                assert!(m.origin.line >= 1 && m.origin.line <= lines, "line {} of {lines}", m.origin.line);
                assert!(m.value().is_object());
            }
        }
        Err(error) => {
            assert!(!error.problems.is_empty());
            let _ = error.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::default(), tight()] {
        for path in ["fuzz.yaml", "fuzz.json"] {
            check(&[SourceFile { path: path.into(), content: data.to_vec() }], &limits);
        }
    }
    // Two files: the total-size limit is crossed by the second one when the input is over 1.5 KiB.
    let two = [
        SourceFile { path: "a.yaml".into(), content: data.to_vec() },
        SourceFile { path: "b.yml".into(), content: data.to_vec() },
    ];
    check(&two, &tight());
});

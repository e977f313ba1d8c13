//! Tests of [`render`](super::render) as a whole: files in, manifests or problems out.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn file(path: &str, content: &str) -> SourceFile {
    SourceFile { path: path.to_owned(), content: content.as_bytes().to_vec() }
}

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

/// (kind/name, file, line, doc) of each manifest.
fn summary(manifests: &[Manifest]) -> Vec<(String, String, usize, usize)> {
    manifests.iter().map(|m| (format!("{}/{}", m.kind(), m.name()), m.origin.file.clone(), m.origin.line, m.origin.doc)).collect()
}

fn render_err(files: &[SourceFile], limits: &Limits) -> RenderError {
    match render(files, limits) {
        Ok(manifests) => panic!("expected an error, got {:?}", summary(&manifests)),
        Err(err) => err,
    }
}

/// (line, object, cause) of each problem of a single-file render.
fn problems(err: &RenderError) -> Vec<(Option<usize>, Option<String>, String)> {
    err.problems.iter().map(|p| (p.line, p.object.clone(), p.cause.clone())).collect()
}

#[test]
fn multi_document_yaml_with_comments_and_separators() {
    let text = format!(
        "# header comment\n---\n{}--- # a comment after the marker\n\n# comment\n{}---\n---\n# only comments\n---   \n{}...\n",
        cm("a"),
        cm("b"),
        cm("c"),
    );
    let manifests = render(&[file("app/cms.yaml", &text)], &Limits::default()).unwrap();
    assert_eq!(
        summary(&manifests),
        vec![
            ("ConfigMap/a".to_owned(), "app/cms.yaml".to_owned(), 3, 0),
            ("ConfigMap/b".to_owned(), "app/cms.yaml".to_owned(), 10, 1),
            ("ConfigMap/c".to_owned(), "app/cms.yaml".to_owned(), 18, 2),
        ]
    );
    assert_eq!(manifests[0].value(), json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}));
}

#[test]
fn files_keep_their_order() {
    let files = [file("b.yaml", &cm("from-b")), file("a.json", r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#)];
    let manifests = render(&files, &Limits::default()).unwrap();
    assert_eq!(
        summary(&manifests),
        vec![("ConfigMap/from-b".to_owned(), "b.yaml".to_owned(), 1, 0), ("Namespace/x".to_owned(), "a.json".to_owned(), 1, 0),]
    );
}

#[test]
fn empty_documents_and_files_are_skipped() {
    let text = format!("---\n# nothing\n---\nnull\n---\n~\n---\n{}---\n\n", cm("only"));
    let files = [
        file("empty.yaml", ""),
        file("comments.yml", "# just a comment\n\n"),
        file("blank.json", "\n \n"),
        file("null.json", "null"),
        file("mixed.yaml", &text),
    ];
    let manifests = render(&files, &Limits::default()).unwrap();
    assert_eq!(summary(&manifests), vec![("ConfigMap/only".to_owned(), "mixed.yaml".to_owned(), 8, 2)]);
}

#[test]
fn utf8_bom_is_accepted() {
    let text = format!("\u{feff}{}", cm("bom"));
    let manifests = render(&[file("bom.yaml", &text)], &Limits::default()).unwrap();
    assert_eq!(manifests[0].name(), "bom");
}

#[test]
fn list_is_expanded_with_the_origin_of_the_list() {
    let text = format!(
        "{}---\n# a list\napiVersion: v1\nkind: List\nitems:\n- {}\n- apiVersion: v1\n  kind: Secret\n  metadata: {{name: s}}\n",
        cm("before"),
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "in-list"}}"#,
    );
    let manifests = render(&[file("list.yaml", &text)], &Limits::default()).unwrap();
    assert_eq!(
        summary(&manifests),
        vec![
            ("ConfigMap/before".to_owned(), "list.yaml".to_owned(), 1, 0),
            ("ConfigMap/in-list".to_owned(), "list.yaml".to_owned(), 7, 1),
            ("Secret/s".to_owned(), "list.yaml".to_owned(), 7, 1),
        ]
    );
}

#[test]
fn typed_lists_and_empty_lists() {
    let text = "apiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n---\napiVersion: v1\nkind: List\nitems: []\n---\napiVersion: v1\nkind: List\n";
    let manifests = render(&[file("l.yaml", text)], &Limits::default()).unwrap();
    assert_eq!(summary(&manifests), vec![("ConfigMap/x".to_owned(), "l.yaml".to_owned(), 1, 0)]);
}

#[test]
fn list_items_are_checked() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: ok}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {}}\n- 3\n";
    let err = render_err(&[file("l.yaml", text)], &Limits::default());
    assert_eq!(
        problems(&err),
        vec![
            (Some(1), Some("kind ConfigMap (no name) (items[1])".to_owned()), "metadata.name is required".to_owned()),
            (Some(1), Some("items[2]".to_owned()), "expected a mapping with apiVersion, kind and metadata, found a number".to_owned()),
        ]
    );
    let err = render_err(&[file("l.yaml", "apiVersion: v1\nkind: List\nitems: {a: 1}\n")], &Limits::default());
    assert_eq!(err.problems[0].cause, "items must be a list");
}

#[test]
fn json_files() {
    let text = "\n{\n  \"apiVersion\": \"apps/v1\",\n  \"kind\": \"Deployment\",\n  \"metadata\": {\"name\": \"api\", \"namespace\": \"web\"}\n}\n";
    let manifests = render(&[file("d.json", text)], &Limits::default()).unwrap();
    assert_eq!(summary(&manifests), vec![("Deployment/api".to_owned(), "d.json".to_owned(), 2, 0)]);
    assert_eq!(manifests[0].namespace(), Some("web"));

    let err = render_err(&[file("bad.json", "{\n\"apiVersion\": \"v1\",\n}\n")], &Limits::default());
    assert_eq!(err.problems[0].line, Some(3));
    assert!(err.problems[0].cause.starts_with("invalid JSON"), "{err}");

    let list = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"j"}}]}"#;
    let manifests = render(&[file("l.json", list)], &Limits::default()).unwrap();
    assert_eq!(manifests[0].name(), "j");
}

#[test]
fn missing_fields_name_the_line_and_object() {
    let text = format!(
        "{}---\n# second\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  labels: {{app: api}}\n---\nkind: Service\nmetadata:\n  name: web\n---\napiVersion: v1\nmetadata: {{name: x}}\n---\napiVersion: 1\nkind: Pod\nmetadata: {{name: \"\"}}\n",
        cm("fine")
    );
    let err = render_err(&[file("app/deploy.yaml", &text)], &Limits::default());
    assert_eq!(
        problems(&err),
        vec![
            (Some(7), Some("kind Deployment (no name)".to_owned()), "metadata.name is required".to_owned()),
            (Some(12), Some("Service web".to_owned()), "apiVersion is required".to_owned()),
            (Some(16), Some("object x (no kind)".to_owned()), "kind is required".to_owned()),
            (Some(19), Some("kind Pod (no name)".to_owned()), "apiVersion must be a string, not a number".to_owned()),
            (Some(19), Some("kind Pod (no name)".to_owned()), "metadata.name is required".to_owned()),
        ]
    );
    assert!(err.to_string().starts_with(
        "app/deploy.yaml:7: kind Deployment (no name): metadata.name is required; app/deploy.yaml:12: Service web: apiVersion is required"
    ), "{err}");
}

#[test]
fn metadata_fields_must_be_strings() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: 42\n  namespace: 7\n  labels: {tier: 1}\n  annotations:\n    driftless.dev/wave: 2\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: [a]\n";
    let err = render_err(&[file("m.yaml", text)], &Limits::default());
    let causes: Vec<_> = err.problems.iter().map(|p| p.cause.as_str()).collect();
    assert_eq!(
        causes,
        vec![
            "metadata.name must be a string, not a number (quote it)",
            "metadata.namespace must be a string, not a number (quote it)",
            "metadata.labels.tier must be a string, not a number (quote it)",
            "metadata.annotations.driftless.dev/wave must be a string, not a number (quote it)",
            "metadata must be a mapping, not a list",
        ]
    );
    assert_eq!(err.problems[4].line, Some(10));
}

#[test]
fn non_mapping_documents_are_errors() {
    let text = format!("- a\n- b\n---\njust a string\n---\n{}", cm("ok"));
    let err = render_err(&[file("n.yaml", &text)], &Limits::default());
    assert_eq!(
        problems(&err),
        vec![
            (Some(1), None, "expected a mapping with apiVersion, kind and metadata, found a list".to_owned()),
            (Some(4), None, "expected a mapping with apiVersion, kind and metadata, found a string".to_owned()),
        ]
    );
}

#[test]
fn yaml_error_in_third_document_reports_the_file_line() {
    let text = format!("{}---\n{}---\n# third\n{}  labels:\n    a: b: c\n", cm("one"), cm("two"), cm("three"));
    let err = render_err(&[file("x.yaml", &text)], &Limits::default());
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].line, Some(17), "{err}");
    assert!(err.problems[0].cause.starts_with("invalid YAML: mapping values are not allowed"), "{err}");
    assert_eq!(err.problems[0].object.as_deref(), Some("ConfigMap three"), "{err}");
    assert!(err.to_string().starts_with("x.yaml:17: ConfigMap three: invalid YAML"), "{err}");
}

#[test]
fn parsing_stops_at_the_first_syntax_error_but_other_files_continue() {
    let text = format!("{}---\nkey: [unclosed\n---\n{}---\nalso: [bad\n", cm("a"), cm("b"));
    let files = [file("a.yaml", &text), file("b.yaml", "apiVersion: v1\nkind: ConfigMap\n")];
    let err = render_err(&files, &Limits::default());
    let got: Vec<_> = err.problems.iter().map(|p| (p.file.as_str(), p.line)).collect();
    assert_eq!(got, vec![("a.yaml", Some(7)), ("b.yaml", Some(1))], "{err}");
    assert_eq!(err.problems[1].cause, "metadata.name is required");
}

#[test]
fn file_size_limit() {
    let limits = Limits { max_file_bytes: 100, ..Limits::default() };
    let big = format!("{}  annotations:\n    a: \"{}\"\n", cm("big"), "x".repeat(200));
    let files = [file("big.yaml", &big), file("small.yaml", &cm("small")), file("bad.yaml", "kind: X\n")];
    let err = render_err(&files, &limits);
    let got: Vec<_> = err.problems.iter().map(|p| (p.file.as_str(), p.cause.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("big.yaml", "the file has 278 bytes, more than the limit of 100 (max_file_bytes)"),
            ("bad.yaml", "apiVersion is required"),
            ("bad.yaml", "metadata.name is required"),
        ]
    );
    // Exactly at the limit is fine.
    let exact = Limits { max_file_bytes: cm("small").len() as u64, ..Limits::default() };
    assert!(render(&[file("small.yaml", &cm("small"))], &exact).is_ok());
}

#[test]
fn total_size_limit() {
    let one = cm("a");
    let limits = Limits { max_total_bytes: one.len() as u64 * 2, ..Limits::default() };
    assert_eq!(render(&[file("1.yaml", &one), file("2.yaml", &one)], &limits).unwrap().len(), 2);
    let files = [file("1.yaml", &one), file("2.yaml", &one), file("3.yaml", &one), file("4.yaml", "garbage: [")];
    let err = render_err(&files, &limits);
    assert_eq!(err.problems.len(), 1, "nothing is parsed past the total limit: {err}");
    assert_eq!(err.problems[0].file, "3.yaml");
    assert!(err.problems[0].cause.contains("max_total_bytes"), "{err}");
}

#[test]
fn document_limit_counts_documents_and_list_items() {
    let limits = Limits { max_documents: 3, ..Limits::default() };
    let three = format!("{}---\n{}---\n{}", cm("a"), cm("b"), cm("c"));
    assert_eq!(render(&[file("ok.yaml", &three)], &limits).unwrap().len(), 3);

    let err = render_err(&[file("ok.yaml", &three), file("more.yaml", &cm("d")), file("later.yaml", "x")], &limits);
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].file, "more.yaml");
    assert!(err.problems[0].cause.contains("max_documents"), "{err}");

    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: A, metadata: {name: a}}\n- {apiVersion: v1, kind: A, metadata: {name: b}}\n- {apiVersion: v1, kind: A, metadata: {name: c}}\n- {apiVersion: v1, kind: A, metadata: {name: d}}\n";
    let err = render_err(&[file("list.yaml", list)], &limits);
    assert!(err.problems[0].cause.contains("max_documents"), "{err}");
    assert_eq!(err.problems[0].line, Some(1));
}

#[test]
fn depth_limit() {
    let limits = Limits { max_depth: 5, ..Limits::default() };
    // Root map (1) > data's map (2) > a's map (3) > b's map (4) > c's list (5).
    let ok = format!("{}data: {{a: {{b: {{c: [1]}}}}}}\n", cm("ok"));
    assert!(render(&[file("ok.yaml", &ok)], &limits).is_ok());
    let deep = format!("{}data: {{a: {{b: {{c: [[1]]}}}}}}\n", cm("deep"));
    let err = render_err(&[file("deep.yaml", &deep)], &limits);
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].line, Some(5));
    assert!(err.problems[0].cause.contains("max_depth"), "{err}");

    // Far deeper than any parser's own recursion limit: still a clean error.
    let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = render_err(&[file("deep.yaml", &very_deep), file("deep.json", &very_deep)], &Limits::default());
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems.iter().all(|p| p.cause.contains("max_depth")), "{err}");
}

#[test]
fn node_limit() {
    let limits = Limits { max_nodes: 50, ..Limits::default() };
    let items: String = (0..60).map(|i| format!("  k{i}: v\n")).collect();
    let text = format!("{}---\n{}data:\n{items}", cm("small"), cm("big"));
    let err = render_err(&[file("n.yaml", &text)], &limits);
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].line.map(|l| l > 5), Some(true), "{err}");
    assert!(err.problems[0].cause.contains("max_nodes"), "{err}");
}

/// The classic "billion laughs": nine levels of nine aliases each.
fn billion_laughs() -> String {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(",");
        text.push_str(&format!("{0}: &{0} [{refs}]\n", pair[1]));
    }
    text
}

#[test]
fn billion_laughs_fails_fast() {
    let start = Instant::now();
    let err = render_err(&[file("bomb.yaml", &billion_laughs())], &Limits::default());
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].file, "bomb.yaml");
    let cause = &err.problems[0].cause;
    assert!(cause.contains("max_nodes") || cause.contains("YAML bomb"), "{cause}");
}

#[test]
fn wide_alias_bomb_hits_the_node_limit() {
    // Few aliases, each expanding a large node: the node limit, not the alias repetition limit
    // (serde_yaml's, which the renderer keeps), stops this one.
    let wide = ["x"; 1000].join(",");
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: wide}}\na: &a [{wide}]\nb: &b [{b}]\nc: &c [{c}]\nd: [{d}]\n",
        b = ["*a"; 10].join(","),
        c = ["*b"; 10].join(","),
        d = ["*c"; 10].join(","),
    );
    let start = Instant::now();
    let err = render_err(&[file("wide.yaml", &text)], &Limits::default());
    assert!(start.elapsed() < Duration::from_millis(500), "took {:?}", start.elapsed());
    assert!(err.problems[0].cause.contains("max_nodes"), "{err}");
}

#[test]
fn many_small_bombs_hit_the_revision_node_limit() {
    // Each document expands to ~1100 nodes from ~150 bytes; each is under max_nodes, but the
    // revision may hold only max_nodes plus one node per byte.
    let doc = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: n}}\na: &a [{}]\nb: [{}]\n",
        ["x"; 10].join(","),
        ["*a"; 100].join(","),
    );
    let limits = Limits { max_nodes: 2_000, ..Limits::default() };
    let text = vec![doc; 50].join("---\n");
    let err = render_err(&[file("many.yaml", &text), file("next.yaml", "not: [valid")], &limits);
    assert_eq!(err.problems.len(), 1, "stops at the revision limit: {err}");
    assert!(err.problems[0].cause.contains("the revision has more than"), "{err}");
}

#[test]
fn yaml_aliases_within_limits_are_expanded() {
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: alias\n  labels: &l {app: web}\n  annotations: *l\n";
    let manifests = render(&[file("a.yaml", text)], &Limits::default()).unwrap();
    assert_eq!(manifests[0].annotation("app"), Some("web"));
}

#[test]
fn invalid_utf8_names_the_file() {
    let mut content = cm("a").into_bytes();
    content.extend_from_slice(b"data:\n  x: \xff\xfe\n");
    let files = [SourceFile { path: "bin.yaml".to_owned(), content }, file("ok.yaml", &cm("b"))];
    let err = render_err(&files, &Limits::default());
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].file, "bin.yaml");
    assert_eq!(err.problems[0].line, Some(6));
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn never_panics_on_garbage() {
    // A deterministic pseudo-random generator (xorshift) so failures can be reproduced.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"-: \n\t[]{},&*!|>'\"#%@`?.0123456789abcdefxyz~\\\r\x00\x01";
    let samples: Vec<&[u8]> = vec![
        b"\xff\xfe\x00a\x00b",
        b"---\n--- |\n...\n%YAML 1.2\n---\n!!binary AAAA\n",
        b"&a [*a]\n",
        b"*unknown\n",
        b"? - a\n  - b\n: c\n",
        b"a: !!int abc\n",
        b"{a: 1, a: 2}\n",
        b"<<: 3\n",
        b"a: [*b]\n",
        b"\"\\uD800\"\n",
        b"%TAG ! tag:x,2000:\n--- !foo\na: 1\n",
    ];
    let mut files: Vec<SourceFile> = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        for ext in ["yaml", "json"] {
            files.push(SourceFile { path: format!("sample{i}.{ext}"), content: sample.to_vec() });
        }
    }
    for i in 0..300 {
        let len = (next() % 200) as usize;
        let content: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 17 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        let ext = if i % 3 == 0 { "json" } else { "yaml" };
        files.push(SourceFile { path: format!("random{i}.{ext}"), content });
    }
    // One file at a time, so that each one is parsed whatever the others hold.
    let mut errors = 0;
    for f in &files {
        match std::panic::catch_unwind(|| render(std::slice::from_ref(f), &Limits::default())) {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                errors += 1;
                assert!(err.problems.iter().all(|p| p.file == f.path), "{err}");
                assert!(!err.to_string().is_empty());
            }
            Err(_) => {
                panic!("render panicked on {}: {:?}", f.path, String::from_utf8_lossy(&f.content))
            }
        }
    }
    assert!(errors > 250, "garbage should mostly be rejected, got {errors} errors");
}

#[test]
fn display_lists_problems_and_caps_them() {
    let problem = |i: usize| Problem {
        file: format!("f{i}.yaml"),
        line: Some(i),
        object: i.is_multiple_of(2).then(|| format!("ConfigMap c{i}")),
        cause: "metadata.name is required".to_owned(),
    };
    let err = RenderError { problems: vec![problem(1), problem(2)] };
    assert_eq!(err.to_string(), "f1.yaml:1: metadata.name is required; f2.yaml:2: ConfigMap c2: metadata.name is required");
    let no_line = Problem { file: "x.yaml".into(), line: None, object: None, cause: "too big".into() };
    assert_eq!(no_line.to_string(), "x.yaml: too big");
    let many = RenderError { problems: (1..=25).map(problem).collect() };
    let text = many.to_string();
    assert_eq!(text.matches("metadata.name is required").count(), RenderError::SHOWN);
    assert!(text.ends_with("; and 5 more problems"), "{text}");
}

/// Seed 002's change to the postgres Deployment, as its write-up gives it: the three `---` lines,
/// tabs in the indentation, and the typos `persistenctVolumeClaim` and `constainers`.
const SEED_002_POSTGRES: &str = "---
---
---
spec:
 volumes:
  - name: pg-storage
    persistenctVolumeClaim:
\t claimName: db-pvc
 constainers:
  - name: postgres
    image: postgres
\tports:
\t - containerPort: 5432
\tvolumeMounts:
\t - name: pg-storage
\t   mountPath: /var/lib/postgresql/data
\t   subPath: postgres
";

#[test]
fn seed_002_tab_indentation_names_the_file_line_and_cause() {
    let files = [file("k8s/postgres-deployment.yaml", SEED_002_POSTGRES), file("k8s/ok.yaml", &cm("ok"))];
    let err = render_err(&files, &Limits::default());
    assert_eq!(
        err.to_string(),
        "k8s/postgres-deployment.yaml:8: invalid YAML: tabs are not allowed for indentation (a tab \
         at column 1); indent with spaces"
    );

    // the same lines as the spec of the Deployment they change: the object is named too
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: postgres-deployment\n{}",
        SEED_002_POSTGRES.trim_start_matches("---\n")
    );
    let err = render_err(&[file("k8s/postgres-deployment.yaml", &deployment)], &Limits::default());
    assert_eq!(
        err.to_string(),
        "k8s/postgres-deployment.yaml:9: Deployment postgres-deployment: invalid YAML: tabs are not \
         allowed for indentation (a tab at column 1); indent with spaces"
    );
    assert!(!err.to_string().contains('\n'));

    // with the tabs made spaces, it renders: the typos are for the API server to name
    let spaces = deployment.replace('\t', "    ");
    let manifests = render(&[file("k8s/postgres-deployment.yaml", &spaces)], &Limits::default()).unwrap();
    assert_eq!(manifests[0].value()["spec"]["volumes"][0]["persistenctVolumeClaim"]["claimName"], "db-pvc");
}

#[test]
fn file_modes_and_booleans_in_manifests() {
    // kubectl reads `0644` as the octal 420 (serde_yaml read the string "0644", which the API
    // server rejects for an integer field); `yes` stays a string, as before.
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    enabled: yes\nspec:\n  volumes:\n  - name: c\n    configMap:\n      name: c\n      defaultMode: 0644\n";
    let manifests = render(&[file("pod.yaml", text)], &Limits::default()).unwrap();
    assert_eq!(manifests[0].value()["spec"]["volumes"][0]["configMap"]["defaultMode"], 420);
    assert_eq!(manifests[0].annotation("enabled"), Some("yes"));
}

#[test]
fn tab_after_a_sequence_dash_names_the_file_line_and_object() {
    let text = format!("{}spec:\n  args:\n  - a\n  -\tb\n", cm("args"));
    let err = render_err(&[file("a.yaml", &text)], &Limits::default());
    assert_eq!(
        err.to_string(),
        "a.yaml:8: ConfigMap args: invalid YAML: tabs are not allowed for indentation (a tab at \
         column 4); indent with spaces"
    );
}

/// libyaml (kubectl) reads a quoted scalar's continuation lines whatever their indentation;
/// YAML 1.2 wants them deeper than their block. They are read as kubectl reads them, lines and
/// all other errors unchanged.
#[test]
fn underindented_continuation_lines_of_quoted_scalars_read_as_kubectl_reads_them() {
    let cases = [
        ("metadata:\n  name: a\n  annotations:\n    note: \"one\ntwo\"\n", "/metadata/annotations/note", "one two"),
        ("metadata:\n  name: a\n  annotations:\n    note: 'one\n  two\n three'\n", "/metadata/annotations/note", "one two three"),
        ("metadata:\n  name: a\ndata:\n  k: \"one\n two\\\n  three\"\n", "/data/k", "one twothree"),
        ("metadata:\n  name: a\ndata:\n  k: \"one\n\ntwo\"\n", "/data/k", "one\ntwo"),
        ("metadata:\n  name: a\ndata:\n  list:\n  - \"x\n y\"\n", "/data/list/0", "x y"),
    ];
    for (body, pointer, expected) in cases {
        let text = format!("apiVersion: v1\nkind: ConfigMap\n{body}---\n{}", cm("after"));
        let manifests = render(&[file("a.yaml", &text)], &Limits::default()).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(manifests[0].value().pointer(pointer).and_then(|v| v.as_str()), Some(expected), "{body:?}");
        // the document after it keeps its line
        assert_eq!(summary(&manifests)[1].2, text.lines().position(|l| l == "---").unwrap() + 2, "{body:?}");
    }
    // an unclosed quote is still reported as one
    let err = render_err(
        &[file("a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: \"one\ntwo\n")],
        &Limits::default(),
    );
    assert!(err.to_string().contains("quoted scalar"), "{err}");
}

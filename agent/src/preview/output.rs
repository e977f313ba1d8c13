//! A [`Preview`] written for a terminal ([`table`]) or as a pull-request comment ([`markdown`]);
//! JSON is the serialized [`Preview`]. Object names, messages and diffs come from a repository
//! and the API server: untrusted, so in a comment they are escaped (no markup, no mentions, no
//! HTML) and a diff cannot leave its code block; in a terminal control characters are dropped.

use std::fmt::Write as _;

use super::{Counts, ObjectPlan, PlanAction, Preview, PruneAction};
use crate::manifest::ObjectRef;

/// The longest comment GitHub accepts is 65536 characters; diffs beyond what fits below this are
/// left out of a comment.
pub const MAX_COMMENT_BYTES: usize = 60_000;

/// How many objects of the definitions wave are named.
const NAMED_DEFINITIONS: usize = 10;

/// The plan as a terminal shows it: the changed objects, their diffs, the prunes, the wave order
/// and a summary.
pub fn table(p: &Preview) -> String {
    let mut out = String::new();
    let held = p.held.is_some();
    // one row per object a sync would touch, then per prune
    let mut rows: Vec<(&str, String, String)> =
        changed(p).map(|o| (o.action.as_str(), o.object.group_kind().to_string(), row_name(&o.object, &o.message))).collect();
    rows.extend(p.prunes.iter().map(|r| (prune_action(r.action, held), r.object.group_kind().to_string(), row_name(&r.object, &r.reason))));
    if !rows.is_empty() {
        let kind_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(4).max(4);
        let _ = writeln!(out, "{:<10} {:<kind_width$} NAMESPACE/NAME", "ACTION", "KIND");
        for (action, kind, name) in &rows {
            let _ = writeln!(out, "{action:<10} {:<kind_width$} {}", terminal(kind), terminal(name));
        }
    }
    // each diff, indented
    for o in changed(p) {
        let Some(diff) = &o.diff else { continue };
        let _ = writeln!(out, "\n{} {}:", o.action.as_str(), terminal(&o.object.to_string()));
        for line in diff.lines() {
            let _ = writeln!(out, "    {}", terminal(line));
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    // why the prune is held, the wave order, the revision's problems, then the summary
    if let Some(why) = &p.held {
        let _ = writeln!(out, "prune held: {}", terminal(why));
    }
    if !p.waves.is_empty() {
        let _ = writeln!(out, "waves: {}", waves(p, terminal));
    }
    for problem in &p.problems {
        let _ = writeln!(out, "problem: {}", terminal(problem));
    }
    let _ = writeln!(out, "{}", terminal(&summary(p)));
    out
}

/// The plan as a pull-request comment: a heading, the summary in bold, the problems, a table of
/// changes, each diff folded, the prunes and the wave order.
pub fn markdown(p: &Preview) -> String {
    let held = p.held.is_some();
    // the heading, the summary and the problems
    let mut head = format!("### Driftless plan: {} at {}\n\n**{}**\n\n", escape(&p.source), escape(short(&p.commit)), escape(&summary(p)));
    if !p.renderer.is_empty() {
        let _ = writeln!(head, "Rendered by {}.\n", escape(&p.renderer));
    }
    if !p.problems.is_empty() {
        head.push_str("**Problems** (the revision would fail):\n\n");
        for problem in &p.problems {
            let _ = writeln!(head, "- {}", escape(problem));
        }
        head.push('\n');
    }
    // the table of changes
    let changes: Vec<&ObjectPlan> = changed(p).collect();
    if !changes.is_empty() {
        head.push_str("| action | kind | namespace/name | message |\n|---|---|---|---|\n");
        for o in &changes {
            let _ = writeln!(
                head,
                "| {} | {} | {} | {} |",
                o.action.as_str(),
                escape(&o.object.group_kind().to_string()),
                escape(&name(&o.object)),
                escape(&o.message)
            );
        }
        head.push('\n');
    }
    // the prunes and the wave order
    let mut tail = String::new();
    if let Some(why) = &p.held {
        let _ = writeln!(tail, "**Prune held:** {}\n", escape(why));
    }
    if !p.prunes.is_empty() {
        tail.push_str("**Prune:**\n\n");
        for r in &p.prunes {
            let _ = writeln!(
                tail,
                "- {} {} {}: {}",
                prune_action(r.action, held),
                escape(&r.object.group_kind().to_string()),
                escape(&name(&r.object)),
                escape(&r.reason)
            );
        }
        tail.push('\n');
    }
    if !p.waves.is_empty() {
        let _ = writeln!(tail, "**Waves:** {}", waves(p, escape));
    }
    // each diff folded, as many as the comment holds; each left out is a note, room kept for all
    let blocks: Vec<(String, String)> = changes
        .iter()
        .filter_map(|o| {
            let diff = o.diff.as_deref()?;
            let summary = format!("{} {} {}", o.action.as_str(), escape(&o.object.group_kind().to_string()), escape(&name(&o.object)));
            let fence = "`".repeat(longest_backtick_run(diff).max(2) + 1);
            let body = format!("{fence}diff\n{}\n{fence}", diff.trim_end_matches('\n'));
            Some((folded(&summary, &body), folded(&summary, LEFT_OUT)))
        })
        .collect();
    let notes: usize = blocks.iter().map(|(_, note)| note.len()).sum();
    let mut budget = MAX_COMMENT_BYTES.saturating_sub(head.len() + tail.len() + notes);
    let mut diffs = String::new();
    for (block, note) in blocks {
        let extra = block.len().saturating_sub(note.len());
        if extra <= budget {
            budget -= extra;
            diffs.push_str(&block);
        } else {
            diffs.push_str(&note);
        }
    }
    head + &diffs + &tail
}

/// What a comment says of a diff it leaves out.
const LEFT_OUT: &str = "The diff is left out: the comment would exceed GitHub's limit. `driftless plan` shows it.";

/// A diff folded under its summary.
fn folded(summary: &str, body: &str) -> String {
    format!("<details><summary>{summary}</summary>\n\n{body}\n\n</details>\n\n")
}

/// The objects a sync would touch.
fn changed(p: &Preview) -> impl Iterator<Item = &ObjectPlan> {
    p.objects.iter().filter(|o| o.action != PlanAction::Unchanged)
}

/// A prune as it would happen: none does while the prune is held.
fn prune_action(action: PruneAction, held: bool) -> &'static str {
    if held {
        PruneAction::Held.as_str()
    } else {
        action.as_str()
    }
}

/// `plan for source shop at commit 0123456789ab: 1 to create, ...`.
fn summary(p: &Preview) -> String {
    let Counts { create, update, unchanged, invalid, prune, held } = p.counts();
    let mut s = format!(
        "plan for source {} at commit {}: {create} to create, {update} to update, {unchanged} unchanged, {prune} to prune, {held} held",
        p.source,
        short(&p.commit)
    );
    if invalid > 0 {
        let _ = write!(s, ", {invalid} invalid");
    }
    match p.problems.len() {
        0 => {}
        1 => s.push_str(", 1 problem"),
        n => {
            let _ = write!(s, ", {n} problems");
        }
    }
    s
}

/// `definitions [Namespace/shop, ...]; wave 0: 12 objects; wave 1: 1 object`, each name
/// written with `text`.
fn waves(p: &Preview, text: fn(&str) -> String) -> String {
    let parts: Vec<String> = p
        .waves
        .iter()
        .map(|w| {
            if w.definitions {
                let mut names: Vec<String> = w.objects.iter().take(NAMED_DEFINITIONS).map(|id| text(&slashed(id))).collect();
                if w.objects.len() > NAMED_DEFINITIONS {
                    names.push(format!("and {} more", w.objects.len() - NAMED_DEFINITIONS));
                }
                format!("definitions [{}]", names.join(", "))
            } else {
                let n = w.objects.len();
                format!("wave {}: {n} object{}", w.wave, if n == 1 { "" } else { "s" })
            }
        })
        .collect();
    parts.join("; ")
}

/// The first 12 characters of a commit.
fn short(commit: &str) -> &str {
    commit.char_indices().nth(12).map_or(commit, |(i, _)| commit.get(..i).unwrap_or(commit))
}

/// `namespace/name`, or `name` of a cluster-scoped object.
fn name(id: &ObjectRef) -> String {
    if id.namespace.is_empty() {
        id.name.clone()
    } else {
        format!("{}/{}", id.namespace, id.name)
    }
}

/// `Kind.group/namespace/name`, as the wave order names an object.
fn slashed(id: &ObjectRef) -> String {
    format!("{}/{}", id.group_kind(), name(id))
}

/// A table row's name, with its message in parentheses.
fn row_name(id: &ObjectRef, message: &str) -> String {
    if message.is_empty() {
        name(id)
    } else {
        format!("{}  ({message})", name(id))
    }
}

/// Text for a terminal: control characters (escape sequences, line breaks) as spaces; tabs kept.
fn terminal(s: &str) -> String {
    s.chars().map(|c| if c.is_control() && c != '\t' { ' ' } else { c }).collect()
}

/// Untrusted text for a comment: every character markdown or HTML reads (and `@`, which
/// mentions) as an entity, line breaks as spaces. Safe in a table cell and in `<summary>`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '|' | '`' | '\\' | '*' | '_' | '[' | ']' | '~' | '@' | '#' | '!' => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The longest run of backticks in a text: a fence one longer cannot be closed by it.
fn longest_backtick_run(s: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::super::tests::{object, preview, prune};
    use super::super::{PrunePlan, Wave};
    use super::*;

    fn sample() -> Preview {
        let mut web = object("Deployment", "shop", "web", PlanAction::Update);
        web.diff = Some(
            "--- live Deployment.apps shop/web\n+++ git Deployment.apps shop/web\n@@ -1 +1 @@\n-  replicas: 2\n+  replicas: 3\n".into(),
        );
        let mut job = object("Job", "shop", "migrate", PlanAction::Recreate);
        job.message = "spec.template is immutable".into();
        let mut p = preview(
            vec![object("Namespace", "", "shop", PlanAction::Create), web, job, object("Service", "shop", "quiet", PlanAction::Unchanged)],
            vec![
                prune("old", PruneAction::Delete),
                PrunePlan { reason: "driftless.dev/prune: disabled".into(), ..prune("kept", PruneAction::Held) },
            ],
        );
        p.waves = vec![
            Wave { wave: 0, definitions: true, objects: vec![ObjectRef::new("", "Namespace", "", "shop")] },
            Wave {
                wave: 0,
                definitions: false,
                objects: vec![ObjectRef::new("apps", "Deployment", "shop", "web"), ObjectRef::new("", "Service", "shop", "quiet")],
            },
            Wave { wave: 1, definitions: false, objects: vec![ObjectRef::new("batch", "Job", "shop", "migrate")] },
        ];
        p
    }

    #[test]
    fn the_table_lists_changes_diffs_prunes_waves_and_a_summary() {
        let t = table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.first().copied(), Some("ACTION     KIND            NAMESPACE/NAME"), "{t}");
        assert!(t.contains("\ncreate     Namespace       shop\n"), "{t}");
        assert!(t.contains("\nupdate     Deployment.apps shop/web\n"), "{t}");
        assert!(t.contains("\nrecreate   Job             shop/migrate  (spec.template is immutable)\n"), "{t}");
        assert!(t.contains("\ndelete     ConfigMap       shop/old  (no longer in git)\n"), "{t}");
        assert!(t.contains("\nheld       ConfigMap       shop/kept  (driftless.dev/prune: disabled)\n"), "{t}");
        assert!(!t.contains("quiet  "), "unchanged objects have no row: {t}");
        assert!(t.contains("\nupdate Deployment.apps shop/web:\n    --- live Deployment.apps shop/web\n"), "{t}");
        assert!(t.contains("\n    -  replicas: 2\n    +  replicas: 3\n"), "{t}");
        assert!(t.contains("\nwaves: definitions [Namespace/shop]; wave 0: 2 objects; wave 1: 1 object\n"), "{t}");
        assert_eq!(
            lines.last().copied(),
            Some("plan for source shop at commit 0123456789ab: 1 to create, 2 to update, 1 unchanged, 1 to prune, 1 held"),
            "{t}"
        );
    }

    #[test]
    fn a_held_prune_holds_every_delete_and_says_why() {
        let mut p = sample();
        p.held = Some("would delete 2 of 3 objects (more than 50%)".into());
        let t = table(&p);
        assert!(t.contains("\nheld       ConfigMap       shop/old  (no longer in git)\n"), "{t}");
        assert!(t.contains("\nprune held: would delete 2 of 3 objects (more than 50%)\n"), "{t}");
        assert!(t.ends_with("0 to prune, 2 held\n"), "{t}");
        let m = markdown(&p);
        assert!(m.contains("**Prune held:** would delete 2 of 3 objects (more than 50%)\n"), "{m}");
        assert!(m.contains("- held ConfigMap shop/old: no longer in git\n"), "{m}");
    }

    #[test]
    fn nothing_to_do_is_only_the_summary_and_problems_and_invalid_are_counted() {
        let quiet = preview(vec![object("Service", "shop", "quiet", PlanAction::Unchanged)], vec![]);
        assert_eq!(
            table(&quiet),
            "plan for source shop at commit 0123456789ab: 0 to create, 0 to update, 1 unchanged, 0 to prune, 0 held\n"
        );
        let mut bad = preview(vec![object("Job", "shop", "x", PlanAction::Invalid)], vec![]);
        bad.problems = vec!["render failed: a.yaml:3: mapping expected".into()];
        let t = table(&bad);
        assert!(t.contains("\nproblem: render failed: a.yaml:3: mapping expected\n"), "{t}");
        assert!(t.ends_with(", 0 held, 1 invalid, 1 problem\n"), "{t}");
        let m = markdown(&bad);
        assert!(m.contains("**Problems** (the revision would fail):\n\n- render failed: a.yaml:3: mapping expected\n"), "{m}");
    }

    #[test]
    fn the_comment_has_a_heading_summary_table_folded_diffs_prunes_and_waves() {
        let m = markdown(&sample());
        assert!(m.starts_with("### Driftless plan: shop at 0123456789ab\n\n**plan for source shop at commit 0123456789ab: 1 to create, 2 to update, 1 unchanged, 1 to prune, 1 held**\n"), "{m}");
        assert!(m.contains("| action | kind | namespace/name | message |\n|---|---|---|---|\n| create | Namespace | shop |  |\n"), "{m}");
        assert!(m.contains("| recreate | Job | shop/migrate | spec.template is immutable |\n"), "{m}");
        assert!(!m.contains("quiet |"), "{m}");
        assert!(
            m.contains("<details><summary>update Deployment.apps shop/web</summary>\n\n```diff\n--- live Deployment.apps shop/web\n"),
            "{m}"
        );
        assert!(m.contains("+  replicas: 3\n```\n\n</details>\n"), "{m}");
        assert!(
            m.contains(
                "**Prune:**\n\n- delete ConfigMap shop/old: no longer in git\n- held ConfigMap shop/kept: driftless.dev/prune: disabled\n"
            ),
            "{m}"
        );
        assert!(m.contains("**Waves:** definitions [Namespace/shop]; wave 0: 2 objects; wave 1: 1 object\n"), "{m}");
    }

    #[test]
    fn hostile_names_and_messages_are_escaped() {
        let mut o = object("ConfigMap", "a|b", "<script>alert(1)</script>", PlanAction::Invalid);
        o.message = "denied by `policy` | see [here](https://evil) @team <img src=x> & *bold*\nnext".into();
        o.diff = Some("+  x: </details>\n+  y: ```\n+  z: ````\n".into());
        let p = preview(vec![o], vec![]);
        let m = markdown(&p);
        for raw in ["<script>", "a|b", "`policy`", "[here]", "@team", "<img", "*bold*", "& "] {
            assert!(!m.contains(raw), "{raw} unescaped: {m}");
        }
        assert!(m.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{m}");
        assert!(m.contains("| invalid | ConfigMap | a&#124;b/&lt;script&gt;"), "{m}");
        let row = m.lines().find(|l| l.starts_with("| invalid")).unwrap();
        assert_eq!(row.matches('|').count(), 5, "the message stays in its cell: {row}");
        assert!(m.contains("&amp;"), "{m}");
        // the diff's fence is longer than any run of backticks in it
        assert!(m.contains("\n`````diff\n+  x: </details>\n+  y: ```\n+  z: ````\n`````\n"), "{m}");
        // a terminal gets no control characters
        let t = table(&p);
        assert!(!t.contains("\nnext") && t.contains("& *bold* next)"), "{t}");
    }

    #[test]
    fn diffs_beyond_the_comment_limit_are_left_out() {
        let big = "+".repeat(1000) + "\n";
        let objects: Vec<ObjectPlan> = (0..100)
            .map(|i| {
                let mut o = object("ConfigMap", "shop", &format!("c{i}"), PlanAction::Create);
                o.diff = Some(big.clone());
                o
            })
            .collect();
        let m = markdown(&preview(objects, vec![]));
        assert!(m.len() <= MAX_COMMENT_BYTES, "{}", m.len());
        assert!(m.contains("<details><summary>create ConfigMap shop/c0</summary>\n\n```diff\n"), "the first ones fit");
        assert!(m.contains("<details><summary>create ConfigMap shop/c99</summary>\n\nThe diff is left out"), "the last does not");
    }

    #[test]
    fn a_short_commit_is_twelve_characters() {
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short(""), "");
    }
}

//! The status page (`GET /` and `GET /sources/{name}`): server-rendered HTML of what `/status`
//! says, for a person on call. Rendered here from the status model, so the page works without
//! JavaScript; the small script in [`assets`] only fetches the same page again every few seconds
//! and swaps in its content. Read-only: nothing on it changes anything.
//!
//! Every text from git, the cluster or the request goes through [`html::Esc`]; the page names
//! objects and causes only, as the status does, so it carries no Secret value.

pub mod assets;
pub mod html;
pub mod links;
pub mod recent;

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use html::{Esc, Segment};
use recent::Recent;

use super::cli::human;
use super::model::{ObjectStatus, SourceStatus, SyncState};
use super::rfc3339;
use crate::live::health::Health;
use crate::report::changes::Action;
use crate::source::short;

/// Seconds between the script's refreshes (and the no-script page's reloads).
const REFRESH_SECONDS: u64 = 3;
/// The most characters of a message in the overview (the source page has it in full).
const OVERVIEW_MESSAGE: usize = 200;

/// What the page knows about the replica serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reconciling (the leader, or the only replica).
    Leading,
    /// Waiting for the lease: another replica writes; what is shown is from this one's last term.
    Standby,
}

/// The overview: one row per source.
pub fn overview(sources: &[SourceStatus], role: Role, now: SystemTime) -> String {
    let mut body = String::new();
    banner(&mut body, role);
    let _ = write!(body, "<h1>Sources</h1><p class=\"summary\">{}</p>", Esc(&summary(sources)));
    if sources.is_empty() {
        body.push_str("<p class=\"empty\">The configuration lists no sources.</p>");
        return layout("Sources", &body, now);
    }
    body.push_str(concat!(
        "<div class=\"scroll\"><table id=\"sources\"><thead><tr>",
        "<th scope=\"col\">Source</th><th scope=\"col\">Revision</th><th scope=\"col\">State</th>",
        "<th scope=\"col\">Health</th><th scope=\"col\">Last sync</th><th scope=\"col\">Commit to healthy</th>",
        "<th scope=\"col\">Changes</th><th scope=\"col\">Drift</th></tr></thead><tbody>"
    ));
    for s in sources {
        let _ = write!(
            body,
            "<tr data-source=\"{name}\"><td class=\"source\"><a href=\"/sources/{seg}\">{name}</a><div class=\"repo\">{repo}{reference}</div></td>\
             <td class=\"commit\">{commit}</td><td class=\"state\">{state}{message}</td><td class=\"health\">{health}</td>\
             <td class=\"synced\">{synced}</td><td class=\"lead\">{lead}</td><td class=\"counts\">{counts}</td><td class=\"drift\">{drift}</td></tr>",
            name = Esc(&s.name),
            seg = Segment(&s.name),
            repo = Esc(&s.repo),
            reference = s.reference.as_deref().map(|r| format!(" @ {}", Esc(r))).unwrap_or_default(),
            commit = commit(s),
            state = state_badge(s),
            message = first_words(&s.message).map(|m| format!("<div class=\"msg\">{}</div>", Esc(&m))).unwrap_or_default(),
            health = health_badge(s.health),
            synced = sync_time(s, now),
            lead = s.commit_to_healthy_seconds.map(seconds).unwrap_or_else(|| "-".into()),
            counts = counts(s),
            drift = drift(s),
        );
    }
    body.push_str("</tbody></table></div>");
    layout("Sources", &body, now)
}

/// One source: what it applied, its objects by wave and kind (only those of `health`, when
/// given), the recent Events of its parent and its last error in full.
pub fn source(s: &SourceStatus, health: Option<Health>, events: &Recent, role: Role, now: SystemTime) -> String {
    let mut body = String::new();
    banner(&mut body, role);
    let _ = write!(
        body,
        "<p class=\"crumbs\"><a href=\"/\">Sources</a> /</p><h1 data-source=\"{name}\">{name} {state} {health}</h1>",
        name = Esc(&s.name),
        state = state_badge(s),
        health = health_badge(s.health),
    );
    facts(&mut body, s, now);
    if !s.message.is_empty() {
        let title = if matches!(s.state, SyncState::Failed | SyncState::RolledBack) { "Last error" } else { "Message" };
        let _ = write!(body, "<section class=\"message\"><h2>{title}</h2><pre id=\"message\">{}</pre></section>", Esc(&s.message));
    }
    objects(&mut body, s, health);
    recent_events(&mut body, events, now);
    layout(&s.name, &body, now)
}

/// The page of a source this agent does not have.
pub fn not_found(name: &str, now: SystemTime) -> String {
    let body = format!("<h1>No source named {}</h1><p><a href=\"/\">All sources</a></p>", Esc(name));
    layout("Not found", &body, now)
}

/// The document around a page's content: the header with the time it was rendered (which the
/// script keeps current), the stylesheet and the script.
fn layout(title: &str, body: &str, now: SystemTime) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Driftless</title>\
         <link rel=\"stylesheet\" href=\"/ui/style.css?v={version}\">\
         <script src=\"/ui/app.js?v={version}\" defer></script>\
         <noscript><meta http-equiv=\"refresh\" content=\"{refresh}\"></noscript></head>\
         <body><header><a class=\"brand\" href=\"/\">Driftless</a> <span class=\"version\">{version}</span>\
         <span id=\"updated\" data-refresh=\"{refresh}\">Last updated <time datetime=\"{at}\">{clock}</time></span></header>\
         <main id=\"content\">{body}</main>\
         <footer>Read-only. Machine-readable: <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></footer></body></html>\n",
        title = Esc(title),
        version = Esc(crate::VERSION),
        refresh = REFRESH_SECONDS,
        at = rfc3339(now),
        clock = clock(now),
    )
}

fn banner(out: &mut String, role: Role) {
    if role == Role::Standby {
        out.push_str(
            "<p class=\"banner standby\" id=\"standby\">Standby: this replica waits for the lease and writes nothing; \
             another replica reconciles. What is shown is from this replica's last term, if it had one.</p>",
        );
    }
}

/// `3 sources: 2 Synced, 1 Failed`.
fn summary(sources: &[SourceStatus]) -> String {
    let mut by_state: Vec<(SyncState, usize)> = Vec::new();
    for s in sources {
        match by_state.iter_mut().find(|(state, _)| *state == s.state) {
            Some((_, n)) => *n += 1,
            None => by_state.push((s.state, 1)),
        }
    }
    let parts: Vec<String> = by_state.iter().map(|(state, n)| format!("{n} {}", state.as_str())).collect();
    let noun = if sources.len() == 1 { "source" } else { "sources" };
    if parts.is_empty() {
        format!("{} {noun}", sources.len())
    } else {
        format!("{} {noun}: {}", sources.len(), parts.join(", "))
    }
}

/// The applied commit, short, linked to the forge when the repository is on a known one.
fn commit(s: &SourceStatus) -> String {
    let Some(c) = s.last_applied_commit.as_deref() else { return "<span class=\"none\">none yet</span>".into() };
    match links::commit_url(&s.repo, c) {
        Some(url) => format!("<a href=\"{}\" title=\"{}\"><code>{}</code></a>", Esc(&url), Esc(c), Esc(short(c))),
        None => format!("<code title=\"{}\">{}</code>", Esc(c), Esc(short(c))),
    }
}

fn state_badge(s: &SourceStatus) -> String {
    let reason = s.reason.map(|r| format!(" <span class=\"reason\">{}</span>", r.as_str())).unwrap_or_default();
    format!("<span class=\"badge state-{0}\">{0}</span>{reason}", s.state.as_str())
}

fn health_badge(h: Health) -> String {
    format!("<span class=\"badge health-{0}\">{0}</span>", h.as_str())
}

/// The first line of a message, cut to [`OVERVIEW_MESSAGE`] characters.
fn first_words(message: &str) -> Option<String> {
    let line = message.lines().next().filter(|l| !l.trim().is_empty())?;
    let mut cut: String = line.chars().take(OVERVIEW_MESSAGE).collect();
    if line.chars().count() > OVERVIEW_MESSAGE || message.trim_end().lines().nth(1).is_some() {
        cut.push('…');
    }
    Some(cut)
}

fn sync_time(s: &SourceStatus, now: SystemTime) -> String {
    let Some(t) = s.last_sync_time else { return "never".into() };
    let took = s.last_sync_duration_seconds.map(|d| format!(", took {}", seconds(d))).unwrap_or_default();
    format!("<time datetime=\"{}\">{} ago</time>{took}", rfc3339(t), human(now.duration_since(t).unwrap_or_default()))
}

/// `0.4s`, `12s`, `3m 05s`.
fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    match s {
        s if s < 10.0 => format!("{s:.1}s"),
        s if s < 120.0 => format!("{s:.0}s"),
        s => {
            let whole = s as u64;
            format!("{}m {:02}s", whole / 60, whole % 60)
        }
    }
}

/// `2 created, 5 unchanged` in a fixed order.
fn counts(s: &SourceStatus) -> String {
    let order =
        [Action::Created, Action::Configured, Action::Recreated, Action::Deleted, Action::Unchanged, Action::Skipped, Action::Failed];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|a| s.counts.get(a).filter(|n| **n > 0).map(|n| format!("<span class=\"action-{0}\">{n} {0}</span>", a.as_str())))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn drift(s: &SourceStatus) -> String {
    let fights = if s.fights > 0 { format!(", <span class=\"fights\">{} fights</span>", s.fights) } else { String::new() };
    format!("{} corrected{fights}", s.drift_corrections)
}

/// The source's facts as a definition list.
fn facts(out: &mut String, s: &SourceStatus, now: SystemTime) {
    out.push_str("<dl class=\"facts\">");
    let mut fact = |term: &str, value: String| {
        let _ = write!(out, "<div><dt>{term}</dt><dd>{value}</dd></div>");
    };
    fact("Repository", Esc(&s.repo).to_string());
    fact("Ref", Esc(s.reference.as_deref().unwrap_or("the remote's default branch")).to_string());
    fact("Path", Esc(if s.path.is_empty() { "/" } else { &s.path }).to_string());
    fact("Applied commit", commit(s));
    if s.last_fetched_commit.is_some() && s.last_fetched_commit != s.last_applied_commit {
        let fetched = s.last_fetched_commit.as_deref().unwrap_or_default();
        fact("Fetched commit", format!("<code title=\"{}\">{}</code>", Esc(fetched), Esc(short(fetched))));
    }
    fact("Last sync", sync_time(s, now));
    fact("Commit to healthy", s.commit_to_healthy_seconds.map(seconds).unwrap_or_else(|| "-".into()));
    fact("Changes", counts(s));
    fact("Drift", drift(s));
    if let Some(r) = &s.renderer {
        fact("Rendered by", Esc(r).to_string());
    }
    if let Some((started, _)) = s.reconcile.running() {
        fact("Reconciling", format!("since {} ago", human(now.duration_since(started).unwrap_or_default())));
    }
    out.push_str("</dl>");
}

const HEALTHS: [Health; 4] = [Health::Healthy, Health::Progressing, Health::Degraded, Health::Unknown];

/// The health named in a query string (`?health=Degraded`), if any.
pub fn health_filter(query: Option<&str>) -> Option<Health> {
    let value = query?.split('&').find_map(|pair| pair.strip_prefix("health="))?;
    HEALTHS.into_iter().find(|h| h.as_str().eq_ignore_ascii_case(value))
}

/// The objects, by wave and kind, with the health filter's links.
fn objects(out: &mut String, s: &SourceStatus, health: Option<Health>) {
    let _ = write!(out, "<section class=\"objects\"><h2>Objects</h2><nav class=\"filter\" aria-label=\"Filter by health\">");
    let link = |label: &str, query: &str, n: usize, on: bool| {
        let current = if on { " aria-current=\"page\"" } else { "" };
        format!("<a href=\"/sources/{}{query}\"{current}>{label} ({n})</a>", Segment(&s.name))
    };
    out.push_str(&link("All", "", s.objects.len(), health.is_none()));
    for h in HEALTHS {
        let n = s.objects.iter().filter(|o| o.health == h).count();
        out.push_str(&link(h.as_str(), &format!("?health={}", h.as_str()), n, health == Some(h)));
    }
    out.push_str("</nav>");
    let mut shown: Vec<&ObjectStatus> = s.objects.iter().filter(|o| health.is_none_or(|h| o.health == h)).collect();
    if shown.is_empty() {
        let what = if s.objects.is_empty() { "No objects yet." } else { "No object has this health." };
        let _ = write!(out, "<p class=\"empty\">{what}</p></section>");
        return;
    }
    shown.sort_by(|a, b| {
        (a.wave, a.id.group_kind().to_string(), &a.id.namespace, &a.id.name).cmp(&(
            b.wave,
            b.id.group_kind().to_string(),
            &b.id.namespace,
            &b.id.name,
        ))
    });
    let mut wave = None;
    let mut kind = String::new();
    for o in shown {
        if wave != Some(o.wave) {
            if wave.is_some() {
                out.push_str("</tbody></table></div>");
            }
            wave = Some(o.wave);
            kind.clear();
            let _ = write!(
                out,
                "<h3>Wave {}</h3><div class=\"scroll\"><table class=\"wave\"><thead><tr><th scope=\"col\">Name</th>\
                 <th scope=\"col\">Action</th><th scope=\"col\">Health</th><th scope=\"col\">Reason</th></tr></thead><tbody>",
                o.wave
            );
        }
        let gk = o.id.group_kind().to_string();
        if gk != kind {
            let _ = write!(out, "<tr class=\"kind\"><th colspan=\"4\" scope=\"rowgroup\">{}</th></tr>", Esc(&gk));
            kind = gk;
        }
        let name = if o.id.namespace.is_empty() { o.id.name.clone() } else { format!("{}/{}", o.id.namespace, o.id.name) };
        let _ = write!(
            out,
            "<tr class=\"object\"><td>{}</td><td class=\"action-{action}\">{action}</td><td>{}</td><td class=\"msg\">{}</td></tr>",
            Esc(&name),
            health_badge(o.health),
            Esc(&o.message),
            action = o.action.as_str(),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn recent_events(out: &mut String, events: &Recent, now: SystemTime) {
    out.push_str("<section class=\"events\"><h2>Recent Events</h2>");
    match events {
        Err(why) => {
            let _ = write!(out, "<p class=\"empty\">{}</p>", Esc(why));
        }
        Ok(list) if list.is_empty() => out.push_str("<p class=\"empty\">No Events on the source's ApplySet parent.</p>"),
        Ok(list) => {
            out.push_str(
                "<div class=\"scroll\"><table id=\"events\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Type</th>\
                 <th scope=\"col\">Reason</th><th scope=\"col\">Note</th></tr></thead><tbody>",
            );
            for e in list.iter() {
                let when = e
                    .time
                    .map(|t| format!("<time datetime=\"{}\">{} ago</time>", rfc3339(t), human(now.duration_since(t).unwrap_or_default())))
                    .unwrap_or_else(|| "-".into());
                let (class, kind) = if e.warning { ("warning", "Warning") } else { ("normal", "Normal") };
                let times = if e.count > 1 { format!(" <span class=\"count\">×{}</span>", e.count) } else { String::new() };
                let _ = write!(
                    out,
                    "<tr class=\"{class}\"><td>{when}</td><td>{kind}</td><td>{}</td><td class=\"msg\">{}{times}</td></tr>",
                    Esc(&e.reason),
                    Esc(&e.note)
                );
            }
            out.push_str("</tbody></table></div>");
        }
    }
    out.push_str("</section>");
}

/// `18:40:12 UTC`.
fn clock(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests;

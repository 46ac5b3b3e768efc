//! The console's HTML, as maud templates: every interpolated value is escaped;
//! no inline script or style (the CSP forbids both), so behaviour is plain
//! links and forms, and `<details>` expands rows without JavaScript. Tables
//! have captions and header cells, sit in a focusable scrolling region on
//! narrow screens, and navigation is by ordinary links (keyboard-friendly).

use super::auth::{Role, Session};
use super::pages::{AccessQuery, AuditQuery, DeadLetterQuery, Overview, can_act};
use crate::audit::AuditRow;
use crate::audit::query::Page;
use crate::audit::verify::VerifyRun;
use crate::config::Config;
use crate::connection_tests::Recorded;
use crate::dead_letters::{DeadLetter, Preview, State};
use crate::grants::list::GrantRow;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use std::fmt::Write;

/// A notice at the top of a page.
pub enum Flash {
    Ok(String),
}

/// Percent-encodes a query value or path segment (RFC 3986 unreserved kept).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An id-safe form of a name (for anchors).
pub fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// `?k=v&...` of the non-empty pairs.
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={}", urlencode(v))))
        .collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) { (t.format("%Y-%m-%d %H:%M:%S")) } }
}

fn opt_time(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

fn opt_text(s: Option<&str>) -> Markup {
    match s {
        Some(s) if !s.is_empty() => html! { (s) },
        _ => html! { span.muted { "—" } },
    }
}

/// "3 d 4 h" from a duration.
fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The JSM link of a ticket.
fn ticket_link(config: &Config, ticket: &str) -> Markup {
    let base = config.jsm.base_url.trim_end_matches('/');
    html! { a href=(format!("{base}/browse/{}", urlencode(ticket))) rel="noreferrer" { (ticket) } }
}

fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

const NAV: [(&str, &str); 5] = [
    ("Overview", "/console"),
    ("Access", "/console/access"),
    ("Audit", "/console/audit"),
    ("Dead letters", "/console/dead-letters"),
    ("Applications", "/console/applications"),
];

/// The frame of every page.
fn layout(title: &str, session: Option<&Session>, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · accessgov console" }
                link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "accessgov" }
                    @if let Some(s) = session {
                        nav aria-label="Console" {
                            ul {
                                @for (name, href) in NAV {
                                    li { a href=(href) aria-current=[(name == active).then_some("page")] { (name) } }
                                }
                            }
                        }
                        div.who {
                            span { (s.operator.name) " " span.role { (s.role.as_str()) } }
                            form method="post" action="/console/logout" {
                                (csrf(s))
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with a message (errors, refusals).
pub fn message_page(session: Option<&Session>, title: &str, message: &str) -> Markup {
    layout(
        title,
        session,
        "",
        html! {
            p.notice.error role="alert" { (message) }
            p { a href="/console" { "Back to the overview" } }
        },
    )
}

pub fn login(csrf: &str, next: &str, message: Option<&str>, operator: &str, roles: &[Role]) -> Markup {
    layout(
        "Log in",
        None,
        "",
        html! {
            @if let Some(m) = message { p.notice.error role="alert" { (m) } }
            form.login method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                p {
                    label for="operator" { "Your name" }
                    input id="operator" name="operator" type="text" required autocomplete="username" maxlength="128" value=(operator);
                    small { "Recorded as the actor of everything you do here." }
                }
                p {
                    label for="token" { "Console token" }
                    input id="token" name="token" type="password" required autocomplete="current-password";
                    small {
                        "The " (roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ")) " token from your administrator."
                    }
                }
                p { button type="submit" { "Log in" } }
            }
        },
    )
}

// ---------------------------------------------------------------- overview

pub fn overview(session: &Session, config: &Config, o: &Overview) -> Markup {
    let live: Vec<(&String, &crate::config::ApplicationConfig)> =
        config.applications.iter().filter(|(_, a)| !a.dry_run).collect();
    layout(
        "Overview",
        Some(session),
        "Overview",
        html! {
            section.cards aria-label="Figures" {
                div.card { h2 { "Events today" } p.figure { (o.events_today) } p.muted { "processed since 00:00 UTC" } }
                div.card { h2 { "Active holds" } p.figure { a href="/console/access" { (o.counts.active_holds) } } }
                div.card {
                    h2 { "Expiring within 7 days" }
                    p.figure { a href="/console/access?expiring=7d" { (o.counts.expiring_soon) } }
                }
                div.card.warn[o.open_dead_letters > 0] {
                    h2 { "Open dead letters" }
                    p.figure { a href="/console/dead-letters" { (o.open_dead_letters) } }
                    @if let Some(oldest) = o.oldest_dead_letter {
                        p.muted { "oldest " (age(o.now - oldest)) " old" }
                    }
                }
                div.card {
                    h2 { "Requests queue" }
                    @match &o.queue_depth {
                        Ok(n) => { p.figure { (n) } p.muted { "messages ready" } },
                        Err(e) => { p.figure.muted { "?" } p.muted { "broker: " (e) } },
                    }
                }
            }
            h2 { "Audit chain" }
            (verify_status(o.verify.as_ref()))
            div.table-wrap role="region" aria-label="Connection tests" tabindex="0" {
                table {
                    caption { "Live applications: last connection test" }
                    thead { tr { th scope="col" { "Application" } th scope="col" { "Kind" } th scope="col" { "Result" } th scope="col" { "Latency" } th scope="col" { "When" } th scope="col" { "By" } } }
                    tbody {
                        @if live.is_empty() { tr { td colspan="6" { "No live application (all are dry-run)." } } }
                        @for (name, app) in &live {
                            @let t = o.tests.iter().find(|t| &&t.application == name);
                            tr {
                                th scope="row" { a href=(format!("/console/applications#app-{}", slug(name))) { (name) } }
                                td { (app.kind.as_str()) }
                                @match t {
                                    Some(t) => {
                                        td { span class=(if t.ok { "ok" } else { "bad" }) { (t.result) } }
                                        td { (t.latency_ms.map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms"))) }
                                        td { (time(t.at)) }
                                        td { (t.actor) " (" (t.via) ")" }
                                    },
                                    None => { td colspan="4" { span.muted { "never tested" } } },
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn verify_status(run: Option<&VerifyRun>) -> Markup {
    html! {
        @match run {
            None => p.notice { "The chain has not been verified yet: run " code { "accessgov audit verify" } "." },
            Some(r) if r.ok => p.notice.ok {
                "Intact: " (r.rows_checked) " rows checked from seq " (r.since_seq)
                @if let Some(l) = r.last_seq { " to " (l) }
                ", " (time(r.at)) " by " (r.actor) "."
            },
            Some(r) => p.notice.error role="alert" {
                "BROKEN at seq " (r.broken_seq.map_or_else(|| "?".to_owned(), |s| s.to_string())) ": "
                (r.broken_reason.as_deref().unwrap_or("")) " (verified " (time(r.at)) " by " (r.actor) ")."
            },
        }
    }
}

// ---------------------------------------------------------------- access

fn rule_text(config: &Config, application: &str, access_level: &str) -> String {
    match config.rule_for(application, access_level) {
        Some(r) => format!("{application} / {}", r.access_level),
        None => format!("{application} / {access_level} (no rule now)"),
    }
}

pub fn access(
    session: &Session,
    config: &Config,
    q: &AccessQuery,
    grants: &[GrantRow],
    searched: bool,
    max_rows: usize,
) -> Markup {
    let holds: usize = grants.iter().map(|g| g.holds.len().max(1)).sum();
    let csv = format!(
        "/console/access.csv{}",
        query(&[
            ("user", q.user.as_deref()),
            ("application", q.application.as_deref()),
            ("target", q.target.as_deref()),
            ("expiring", q.expiring.as_deref()),
            ("state", q.state.as_deref()),
        ])
    );
    let state = q.state.as_deref().unwrap_or("active");
    // One line per hold; a grant without a hold (revoked) is one line of its own.
    let lines: Vec<(&GrantRow, Option<&crate::grants::list::HoldRow>)> = grants
        .iter()
        .flat_map(|g| {
            let none = g.holds.is_empty().then_some((g, None));
            none.into_iter().chain(g.holds.iter().map(move |h| (g, Some(h))))
        })
        .take(max_rows)
        .collect();
    layout(
        "Who has what",
        Some(session),
        "Access",
        html! {
            form.filters method="get" action="/console/access" role="search" {
                p { label for="f-user" { "User" } input id="f-user" name="user" type="search" value=[q.user.as_deref()] placeholder="account id"; }
                p {
                    label for="f-app" { "Application" }
                    select id="f-app" name="application" {
                        option value="" { "any" }
                        @for name in config.applications.keys() {
                            option value=(name) selected[q.application.as_deref() == Some(name.as_str())] { (name) }
                        }
                    }
                }
                p { label for="f-target" { "Target" } input id="f-target" name="target" type="search" value=[q.target.as_deref()] placeholder="group or permission"; }
                p {
                    label for="f-exp" { "Expiring within" }
                    select id="f-exp" name="expiring" {
                        @for (v, label) in [("", "any time"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days")] {
                            option value=(v) selected[q.expiring.as_deref().unwrap_or("") == v] { (label) }
                        }
                    }
                }
                p {
                    label for="f-state" { "State" }
                    select id="f-state" name="state" {
                        @for v in ["active", "revoked", "all"] { option value=(v) selected[state == v] { (v) } }
                    }
                }
                p.actions { button type="submit" { "Search" } a href="/console/access" { "Clear" } }
            }
            p { a.button href=(csv) download { "Export CSV" } " " span.muted { (grants.len()) " access(es), " (holds) " line(s)" } }
            @if !searched && grants.is_empty() { p.muted { "Nothing is held." } }
            div.table-wrap role="region" aria-label="Holds" tabindex="0" {
                table.holds {
                    caption { "Holds: who has which access, through which ticket" }
                    thead { tr {
                        th scope="col" { "User" } th scope="col" { "Application" } th scope="col" { "Target" }
                        th scope="col" { "Ticket" } th scope="col" { "Approved by" } th scope="col" { "Rule" }
                        th scope="col" { "Granted" } th scope="col" { "Expires" } th scope="col" { "State" }
                    } }
                    tbody {
                        @if grants.is_empty() { tr { td colspan="9" { "No access matches." } } }
                        @for (g, h) in &lines {
                            tr {
                                td { (g.subject) } td { (g.application) } td { (g.target) }
                                @match h {
                                    Some(h) => {
                                        td { (ticket_link(config, &h.ticket)) }
                                        td { (opt_text(h.approved_by.as_deref())) }
                                        td { (rule_text(config, &g.application, &h.access_level)) }
                                        td { (time(h.held_since)) }
                                        td { (opt_time(h.expires_at)) }
                                        td { (g.state) }
                                    },
                                    None => {
                                        td { span.muted { "—" } } td { span.muted { "—" } } td { span.muted { "—" } }
                                        td { (opt_time(g.granted_at)) } td { span.muted { "—" } }
                                        td { (g.state) @if let Some(r) = g.revoked_at { " " (time(r)) } }
                                    },
                                }
                            }
                        }
                    }
                }
            }
            @if holds > max_rows { p.notice { "Showing the first " (max_rows) " lines; narrow the search or export the CSV for all." } }
        },
    )
}

/// The access CSV: one line per hold (RFC 4180; text quoted, NULL empty).
pub fn access_csv(config: &Config, grants: &[GrantRow]) -> String {
    let mut out = String::from(
        "application,subject,target,state,ticket,access_level,rule,approved_by,held_since,expires_at,granted_at,revoked_at\r\n",
    );
    let t = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    for g in grants {
        let mut line = |fields: [Option<String>; 12]| {
            let cells: Vec<String> = fields
                .iter()
                .map(|f| {
                    let mut v = Vec::new();
                    let _ = crate::audit::query::csv_field(&mut v, f.as_deref());
                    String::from_utf8(v).unwrap_or_default()
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        };
        let base = |ticket: Option<String>, level: Option<String>, rule, by, since, exp| {
            [
                Some(g.application.clone()),
                Some(g.subject.clone()),
                Some(g.target.clone()),
                Some(g.state.clone()),
                ticket,
                level,
                rule,
                by,
                since,
                exp,
                t(g.granted_at),
                t(g.revoked_at),
            ]
        };
        if g.holds.is_empty() {
            line(base(None, None, None, None, None, None));
        }
        for h in &g.holds {
            line(base(
                Some(h.ticket.clone()),
                Some(h.access_level.clone()),
                Some(rule_text(config, &g.application, &h.access_level)),
                h.approved_by.clone(),
                t(Some(h.held_since)),
                t(h.expires_at),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------- audit

pub fn audit(session: &Session, q: &AuditQuery, limit: i64, page: &Page, run: Option<&VerifyRun>) -> Markup {
    let filters = [
        ("ticket", q.ticket.as_deref()),
        ("user", q.user.as_deref()),
        ("application", q.application.as_deref()),
        ("action", q.action.as_deref()),
        ("since", q.since.as_deref()),
        ("until", q.until.as_deref()),
    ];
    let limit_s = (limit != 50).then(|| limit.to_string());
    let link = |cursor: (&str, i64)| {
        let c = cursor.1.to_string();
        let mut pairs: Vec<(&str, Option<&str>)> = filters.to_vec();
        pairs.push(("limit", limit_s.as_deref()));
        pairs.push((cursor.0, Some(&c)));
        format!("/console/audit{}", query(&pairs))
    };
    let export = |format: &str| {
        let mut pairs: Vec<(&str, Option<&str>)> = filters.to_vec();
        pairs.push(("format", Some(format)));
        format!("/console/audit/export{}", query(&pairs))
    };
    let pager = html! {
        nav.pager aria-label="Pages" {
            a href=(format!("/console/audit{}", query(&filters))) { "Newest" }
            @if let Some(n) = page.newer { a rel="prev" href=(link(("after", n))) { "← Newer" } } @else { span.muted { "← Newer" } }
            @if let Some(o) = page.older { a rel="next" href=(link(("before", o))) { "Older →" } } @else { span.muted { "Older →" } }
        }
    };
    layout(
        "Audit trail",
        Some(session),
        "Audit",
        html! {
            (verify_status(run))
            form.filters method="get" action="/console/audit" role="search" {
                @for (name, label, hint) in [("ticket", "Ticket", "ACC-42"), ("user", "User", "account id"), ("application", "Application", ""), ("action", "Action", "granted, replayed, ...")] {
                    p {
                        label for=(format!("a-{name}")) { (label) }
                        input id=(format!("a-{name}")) name=(name) type="search" placeholder=(hint)
                            value=[filters.iter().find(|(k, _)| *k == name).and_then(|(_, v)| *v)];
                    }
                }
                p { label for="a-since" { "Since" } input id="a-since" name="since" type="text" placeholder="2026-01-31, 24h, 7d" value=[q.since.as_deref()]; }
                p { label for="a-until" { "Until" } input id="a-until" name="until" type="text" placeholder="RFC 3339 or date" value=[q.until.as_deref()]; }
                p.actions { button type="submit" { "Filter" } a href="/console/audit" { "Clear" } }
            }
            p {
                "Export the matching rows with their hashes: "
                a.button href=(export("jsonl")) download { "JSON Lines" } " "
                a.button href=(export("csv")) download { "CSV" }
            }
            (pager)
            div.table-wrap role="region" aria-label="Audit rows" tabindex="0" {
                table.audit {
                    caption { "Audit rows, newest first" }
                    thead { tr {
                        th scope="col" { "Seq" } th scope="col" { "At (UTC)" } th scope="col" { "Ticket" }
                        th scope="col" { "Action" } th scope="col" { "Outcome" } th scope="col" { "Application" }
                        th scope="col" { "User" } th scope="col" { "Target" } th scope="col" { "Actor" } th scope="col" { "Detail" }
                    } }
                    tbody {
                        @if page.rows.is_empty() { tr { td colspan="10" { "No row matches." } } }
                        @for r in &page.rows { (audit_row(r)) }
                    }
                }
            }
            (pager)
        },
    )
}

fn audit_row(r: &AuditRow) -> Markup {
    let detail = serde_json::to_string_pretty(&r.detail).unwrap_or_default();
    html! {
        tr id=(format!("seq-{}", r.seq)) data-seq=(r.seq) {
            th scope="row" { (r.seq) }
            td { (time(r.at)) }
            td { (opt_text(r.ticket.as_deref())) }
            td { (r.action) }
            td { span class=(match r.outcome.as_str() { "ok" => "ok", "failed" | "refused" => "bad", _ => "" }) { (r.outcome) } }
            td { (opt_text(r.application.as_deref())) }
            td { (opt_text(r.subject.as_deref())) }
            td { (opt_text(r.target.as_deref())) }
            td { (opt_text(r.actor.as_deref())) }
            td {
                details {
                    summary { "Show" }
                    dl {
                        dt { "event id" } dd { (r.event_id.map(|u| u.to_string()).unwrap_or_else(|| "—".into())) }
                        dt { "prev_hash" } dd { code { (r.prev_hash) } }
                        dt { "hash" } dd { code { (r.hash) } }
                    }
                    pre { (detail) }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- dead letters

pub fn dead_letters(session: &Session, q: &DeadLetterQuery, rows: &[DeadLetter], max_rows: usize) -> Markup {
    let state = q.state.as_deref().unwrap_or("open");
    layout(
        "Dead letters",
        Some(session),
        "Dead letters",
        html! {
            form.filters method="get" action="/console/dead-letters" role="search" {
                p { label for="d-app" { "Application" } input id="d-app" name="application" type="search" value=[q.application.as_deref()]; }
                p {
                    label for="d-class" { "Error class" }
                    select id="d-class" name="error_class" {
                        @for v in ["", "transient", "permanent", "unauthorized", "not_found", "poison"] {
                            option value=(v) selected[q.error_class.as_deref().unwrap_or("") == v] { (if v.is_empty() { "any" } else { v }) }
                        }
                    }
                }
                p {
                    label for="d-state" { "State" }
                    select id="d-state" name="state" {
                        @for v in ["open", "replayed", "discarded", "all"] { option value=(v) selected[state == v] { (v) } }
                    }
                }
                p { label for="d-since" { "Died since" } input id="d-since" name="since" type="text" placeholder="24h, 7d, 2026-01-31" value=[q.since.as_deref()]; }
                p.actions { button type="submit" { "Filter" } a href="/console/dead-letters" { "Clear" } }
            }
            div.table-wrap role="region" aria-label="Dead letters" tabindex="0" {
                table {
                    caption { "Dead letters (" (state) "), oldest first" }
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "Ticket" } th scope="col" { "Application" } th scope="col" { "Action" }
                        th scope="col" { "User" } th scope="col" { "Class" } th scope="col" { "Last error" } th scope="col" { "Attempts" }
                        th scope="col" { "Died" } th scope="col" { "State" }
                    } }
                    tbody {
                        @if rows.is_empty() { tr { td colspan="10" { "No dead letter matches." } } }
                        @for r in rows.iter().take(max_rows) {
                            tr {
                                th scope="row" { a href=(format!("/console/dead-letters/{}", r.id)) { "#" (r.id) } }
                                td { (opt_text(r.ticket.as_deref())) }
                                td { (opt_text(r.application.as_deref())) }
                                td { (opt_text(r.action.as_deref())) }
                                td { (opt_text(r.subject.as_deref())) }
                                td { (r.error_class) }
                                td.clip { (r.last_error.chars().take(160).collect::<String>()) }
                                td { (r.attempts) }
                                td { (time(r.died_at)) }
                                td { (r.state().as_str()) }
                            }
                        }
                    }
                }
            }
            @if rows.len() > max_rows { p.notice { "Showing the first " (max_rows) "; narrow the filter." } }
        },
    )
}

pub fn dead_letter(session: &Session, config: &Config, r: &DeadLetter, flash: Option<&Flash>) -> Markup {
    let history: Option<Vec<crate::broker::envelope::AttemptRecord>> =
        serde_json::from_value(r.attempt_history.clone()).ok();
    let message = serde_json::to_string_pretty(&r.message).unwrap_or_default();
    let open = r.state() == State::Open;
    layout(
        &format!("Dead letter #{}", r.id),
        Some(session),
        "Dead letters",
        html! {
            @if let Some(Flash::Ok(m)) = flash { p.notice.ok role="status" { (m) } }
            dl.facts {
                dt { "State" } dd { (r.state().as_str())
                    @if let (Some(at), Some(by)) = (r.replayed_at, &r.replayed_by) { " — replayed " (time(at)) " by " (by) }
                    @if let (Some(at), Some(by)) = (r.discarded_at, &r.discarded_by) { " — discarded " (time(at)) " by " (by) ": " (r.discard_reason.as_deref().unwrap_or("")) }
                }
                dt { "Ticket" } dd { @if let Some(t) = &r.ticket { (ticket_link(config, t)) " · " a href=(format!("/console/audit?ticket={}", urlencode(t))) { "audit rows" } } @else { span.muted { "—" } } }
                dt { "Application" } dd { (opt_text(r.application.as_deref())) }
                dt { "Action" } dd { (opt_text(r.action.as_deref())) }
                dt { "User" } dd { (opt_text(r.subject.as_deref())) }
                dt { "Event id" } dd { (r.event_id.map(|u| u.to_string()).unwrap_or_else(|| "—".into())) }
                dt { "Error class" } dd { (r.error_class) }
                dt { "Last error" } dd { (r.last_error) }
                dt { "Attempts" } dd { (r.attempts) " over " (r.deaths) " death(s)" }
                dt { "First failed" } dd { (opt_time(r.first_failed_at)) }
                dt { "Died" } dd { (time(r.died_at)) }
            }
            h2 { "Actions" }
            div.actions {
                a.button href=(format!("/console/dead-letters/{}/preview", r.id)) { "Preview replay" }
                @if can_act(session) && open {
                    form.inline method="post" action=(format!("/console/dead-letters/{}/discard", r.id)) {
                        (csrf(session))
                        label for="reason" { "Reason" }
                        input id="reason" name="reason" type="text" required maxlength="500" placeholder="why it is closed without a replay";
                        button.danger type="submit" { "Discard" }
                    }
                }
            }
            @if !can_act(session) { p.muted { "Replaying and discarding need the operator role." } }
            div.table-wrap role="region" aria-label="Attempts" tabindex="0" {
                table {
                    caption { "Every attempt, oldest first" }
                    thead { tr { th scope="col" { "Attempt" } th scope="col" { "At" } th scope="col" { "Class" } th scope="col" { "Error" } } }
                    tbody {
                        @match &history {
                            Some(h) if !h.is_empty() => {
                                @for a in h { tr { th scope="row" { (a.attempt) } td { (time(a.at)) } td { (a.error_class) } td { (a.error) } } }
                            },
                            _ => { tr { td colspan="4" { pre { (serde_json::to_string_pretty(&r.attempt_history).unwrap_or_default()) } } } },
                        }
                    }
                }
            }
            h2 { "The event" }
            pre.event { (message) }
        },
    )
}

pub fn preview(session: &Session, r: &DeadLetter, p: &Preview) -> Markup {
    let decision = p.decision.as_ref().map(|d| serde_json::to_string_pretty(d).unwrap_or_default());
    layout(
        &format!("Replay preview: dead letter #{}", r.id),
        Some(session),
        "Dead letters",
        html! {
            p { a href=(format!("/console/dead-letters/{}", r.id)) { "← Dead letter #" (r.id) } }
            p.notice role="status" { "A replay now would: " strong.would { (p.would) } ". Nothing has been changed." }
            div.table-wrap role="region" aria-label="Provider calls" tabindex="0" {
                table {
                    caption { "Provider calls the worker would make" }
                    thead { tr { th scope="col" { "Call" } th scope="col" { "Target" } } }
                    tbody {
                        @if p.provider_calls.is_empty() { tr { td colspan="2" { "None." } } }
                        @for op in &p.provider_calls {
                            @let (call, target) = match op { crate::grants::ProviderOp::Grant(t) => ("grant", t), crate::grants::ProviderOp::Revoke(t) => ("revoke", t) };
                            tr { td { (call) } td { (target) } }
                        }
                    }
                }
            }
            @if !p.notes.is_empty() {
                h2 { "Ledger notes" }
                ul { @for n in &p.notes { li { code { (serde_json::to_string(n).unwrap_or_default()) } } } }
            }
            @if !p.remarks.is_empty() {
                h2 { "Remarks" }
                ul { @for m in &p.remarks { li { (m) } } }
            }
            @if let Some(d) = decision { details { summary { "Decision" } pre { (d) } } }
            @if can_act(session) && p.would != "not_replayable" {
                form method="post" action=(format!("/console/dead-letters/{}/replay", r.id)) {
                    (csrf(session))
                    @if r.state() != State::Open {
                        p { label { input type="checkbox" name="force" value="on"; " Replay again although it is " (r.state().as_str()) " (the worker still deduplicates)" } }
                    }
                    button type="submit" id="replay" { "Replay dead letter #" (r.id) }
                }
            }
        },
    )
}

// ---------------------------------------------------------------- applications

pub fn applications(session: &Session, config: &Config, tests: &[Recorded], tested: Option<&str>) -> Markup {
    layout(
        "Applications and rules",
        Some(session),
        "Applications",
        html! {
            @if let Some(name) = tested {
                @let t = tests.iter().find(|t| t.application == name);
                @match t {
                    Some(t) if t.ok => p.notice.ok role="status" { "Connection test of " (name) ": ok" @if let Some(ms) = t.latency_ms { " (" (ms) " ms)" } "." },
                    Some(t) => p.notice.error role="alert" { "Connection test of " (name) ": " (t.result) " — " (t.error.as_deref().unwrap_or("")) },
                    None => p.notice role="status" { (name) " is dry-run: it never calls its provider, so there is nothing to test." },
                }
            }
            div.table-wrap role="region" aria-label="Applications" tabindex="0" {
                table {
                    caption { "Applications" }
                    thead { tr {
                        th scope="col" { "Application" } th scope="col" { "Kind" } th scope="col" { "Mode" } th scope="col" { "Owner" }
                        th scope="col" { "Last connection test" } th scope="col" { "Test" }
                    } }
                    tbody {
                        @for (name, app) in &config.applications {
                            @let t = tests.iter().find(|t| &t.application == name);
                            tr id=(format!("app-{}", slug(name))) {
                                th scope="row" { (name) }
                                td { (app.kind.as_str()) }
                                td { @if app.dry_run { span.muted { "dry-run" } } @else { "live" } }
                                td { (opt_text(app.owner.as_deref())) }
                                td {
                                    @match t {
                                        Some(t) => { span class=(if t.ok { "ok" } else { "bad" }) { (t.result) } " " (time(t.at)) " by " (t.actor) },
                                        None => span.muted { "never" },
                                    }
                                }
                                td {
                                    @if can_act(session) && !app.dry_run {
                                        form method="post" action=(format!("/console/applications/{}/test", urlencode(name))) {
                                            (csrf(session))
                                            button type="submit" { "Test connection" }
                                        }
                                    } @else if app.dry_run { span.muted { "dry-run" } } @else { span.muted { "operators only" } }
                                }
                            }
                        }
                    }
                }
            }
            div.table-wrap role="region" aria-label="Rules" tabindex="0" {
                table {
                    caption { "Rules: access level → targets, approvers, duration, plan" }
                    thead { tr {
                        th scope="col" { "Application" } th scope="col" { "Access level" } th scope="col" { "Targets" }
                        th scope="col" { "Approvers" } th scope="col" { "Max duration" } th scope="col" { "Plan comment" }
                    } }
                    tbody {
                        @if config.rules.is_empty() { tr { td colspan="6" { "No rule." } } }
                        @for r in &config.rules {
                            tr {
                                th scope="row" { (r.application) }
                                td { (r.access_level) }
                                td {
                                    @if let Some(p) = &r.permission { "permission " (p) } @else { (r.groups.join(", ")) }
                                    @if let Some(role) = &r.role { " (role " (role) ")" }
                                }
                                td {
                                    @if !r.stages.is_empty() {
                                        ol { @for s in &r.stages { li { (s.status) ": " (s.approvers.join(", ")) @if s.min_approvals > 1 { " (" (s.min_approvals) " needed)" } } } }
                                    } @else if r.approvers.is_empty() {
                                        "the owner" @if let Some(o) = config.applications.get(&r.application).and_then(|a| a.owner.as_deref()) { " (" (o) ")" }
                                    } @else { (r.approvers.join(", ")) }
                                    @if r.require_distinct_approver { br; small.muted { "not the requester" } }
                                }
                                td { (r.max_duration.map_or_else(|| "—".to_owned(), crate::config::duration::format)) }
                                td { (if r.plan { "yes" } else { "no" }) }
                            }
                        }
                    }
                }
            }
        },
    )
}

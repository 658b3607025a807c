//! The agent's plan as `apply`, `diff` and `rollback` print it: per service
//! what changes (and which fields force replacement), each changed value as
//! `old -> new`, and the steps; plus the `PUT /v1/manifest` request that
//! `apply` and `diff` send.

use anyhow::Result;
use berth_core::manifest;
use berth_core::plan::{ChangeKind, ServiceAction, ServiceChange, ServicePlan, Step};
use bytes::Bytes;
use hyper::Method;

use super::client;
use crate::cli::Cli;
use crate::client::Reply;
use crate::table::print_table;

/// Sends `files` to `PUT /v1/manifest` with the given query flags.
pub async fn put_manifest(
    cli: &Cli,
    files: &manifest::SourceFiles,
    dry_run: bool,
    prune: bool,
) -> Result<Reply> {
    let body = serde_json::to_vec(files)?;
    let mut query = Vec::new();
    if dry_run {
        query.push("dry_run=true");
    }
    if prune {
        query.push("prune=true");
    }
    let path = if query.is_empty() {
        "/v1/manifest".to_string()
    } else {
        format!("/v1/manifest?{}", query.join("&"))
    };
    client(cli)?
        .request(
            Method::PUT,
            &path,
            Some("application/json"),
            Bytes::from(body),
        )
        .await
}

/// The changes table, the changed values and the plan table, in the order
/// `apply` and `diff` print them.
pub fn print_all(changes: &[ServiceChange], plan: &[ServicePlan]) {
    print_changes(changes);
    print_values(changes);
    outln!();
    print_plan(plan);
}

/// Per changed service, each changed value as `field old -> new`.
fn print_values(changes: &[ServiceChange]) {
    for c in changes.iter().filter(|c| !c.values.is_empty()) {
        outln!();
        outln!("{}:", c.service);
        for v in &c.values {
            outln!("  {} {} -> {}", v.field, v.from, v.to);
        }
    }
}

fn action_text(a: ServiceAction) -> &'static str {
    match a {
        ServiceAction::Create => "create",
        ServiceAction::Replace => "replace",
        ServiceAction::ScaleUp => "scale-up",
        ServiceAction::ScaleDown => "scale-down",
        ServiceAction::Remove => "remove",
        ServiceAction::Unchanged => "unchanged",
    }
}

/// The plan table: per service its action, replicas before -> after, and the
/// steps (starts, replacements with their fields, removals with reasons).
pub fn print_plan(plan: &[ServicePlan]) {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "ACTION".into(),
        "REPLICAS".into(),
        "DETAIL".into(),
    ]];
    for p in plan {
        let mut details = Vec::new();
        let starts = p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Start { .. }))
            .count();
        if starts > 0 {
            details.push(format!("start {starts}"));
        }
        for s in &p.steps {
            match s {
                Step::Replace { container, fields } => {
                    details.push(format!("replace {container} ({})", fields.join(", ")))
                }
                Step::Remove { container, reason } => details.push(format!(
                    "remove {container} ({})",
                    serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )),
                Step::Start { .. } => {}
            }
        }
        details.extend(p.notes.iter().cloned());
        rows.push([
            p.service.clone(),
            action_text(p.action).into(),
            format!("{} -> {}", p.current_replicas, p.desired_replicas),
            details.join("; "),
        ]);
    }
    print_table(&rows);
}

fn print_changes(changes: &[ServiceChange]) {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "CHANGE".into(),
        "REPLICAS".into(),
        "FIELDS FORCING REPLACEMENT".into(),
    ]];
    for c in changes {
        let change = match c.change {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Scaled => "scaled",
            ChangeKind::Unchanged => "unchanged",
        };
        rows.push([
            c.service.clone(),
            change.into(),
            format!("{} -> {}", c.replicas_from, c.replicas_to),
            c.fields
                .iter()
                .chain(c.notes.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    print_table(&rows);
}

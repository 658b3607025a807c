//! `berthctl history`: the applied revisions, newest last, with when and from
//! where each was applied, its state and its services' digests.

use std::process::ExitCode;

use anyhow::{Context, Result};
use berth_core::api::RevisionInfo;
use hyper::Method;

use super::call;
use crate::cli::Cli;
use crate::table::{print_table, short_digest};

/// `GET /v1/revisions` as a table (or the JSON as sent).
pub async fn run(cli: &Cli) -> Result<ExitCode> {
    let reply = call(cli, Method::GET, "/v1/revisions").await?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        let revs: Vec<RevisionInfo> =
            serde_json::from_slice(&reply.body).context("decoding revisions")?;
        print_history(&revs);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_history(revs: &[RevisionInfo]) {
    let mut rows = vec![[
        "REVISION".to_string(),
        "APPLIED".into(),
        "SOURCE".into(),
        "STATE".into(),
        "SERVICES".into(),
    ]];
    for r in revs {
        let services = r
            .services
            .iter()
            .map(|s| match r.digests.get(s) {
                Some(d) => format!("{s}@{}", short_digest(d)),
                None => s.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push([
            r.number.to_string(),
            r.applied_at.clone(),
            r.source.clone(),
            r.state.to_string(),
            services,
        ]);
    }
    print_table(&rows);
}

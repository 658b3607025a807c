//! `berthctl images`: the images in the agent's store with their digest,
//! size, layer count and whether a kept revision uses them.

use std::process::ExitCode;

use anyhow::Result;
use hyper::Method;

use super::call;
use crate::cli::Cli;
use crate::table::{human_bytes, print_table, short_digest};

/// `GET /v1/images` as a table (or the JSON as sent).
pub async fn run(cli: &Cli) -> Result<ExitCode> {
    let reply = call(cli, Method::GET, "/v1/images").await?;
    if cli.json() {
        outln!("{}", String::from_utf8_lossy(&reply.body));
    } else {
        let images: Vec<berth_core::api::ImageView> = serde_json::from_slice(&reply.body)?;
        let mut rows = vec![[
            "IMAGE".to_string(),
            "DIGEST".into(),
            "SIZE".into(),
            "LAYERS".into(),
            "IN USE".into(),
        ]];
        for i in images {
            rows.push([
                i.reference,
                short_digest(&i.digest),
                human_bytes(i.size),
                i.layers.to_string(),
                if i.in_use { "yes".into() } else { "no".into() },
            ]);
        }
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

//! `accessgov roles plan`: what onboarding someone into a role would change.

use super::output::Table;
use crate::cli::RolesCommand;
use crate::config::Config;
use crate::worker::onboard::{self, Diff};
use anyhow::Context;
use std::process::ExitCode;

pub async fn run(config: &Config, cmd: RolesCommand) -> anyhow::Result<ExitCode> {
    let RolesCommand::Plan { user, role, json } = cmd;
    let Some(bundle) = config.roles.iter().find(|r| r.department.trim().eq_ignore_ascii_case(role.trim())) else {
        let known: Vec<&str> = config.roles.iter().map(|r| r.department.as_str()).collect();
        anyhow::bail!(
            "no [[roles]] bundle for {role:?}; configured: {}",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    let pool = crate::db::pool(&config.database.url, 1, &config.database.timeouts())?;
    let previous = onboard::current_role(&pool, &user).await.context("reading role_assignments")?;
    pool.close().await;
    let old = previous.as_ref().map(|(_, _, items)| items.clone()).unwrap_or_default();
    let d: Diff = onboard::diff(&old, &bundle.items());
    if json {
        let v = serde_json::json!({
            "user": user,
            "role": bundle.department,
            "previous": previous.as_ref().map(|(r, t, _)| serde_json::json!({"role": r, "ticket": t})),
            "diff": d,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["CHANGE", "APPLICATION", "ACCESS LEVEL", "HELD THROUGH"]);
    for (app, level) in &d.grant {
        t.row(vec!["grant".into(), app.clone(), level.clone(), "-".into()]);
    }
    for (change, items) in [("keep", &d.keep), ("revoke", &d.revoke), ("leave", &d.left)] {
        for (app, level, ticket) in items {
            t.row(vec![change.into(), app.clone(), level.clone(), ticket.clone()]);
        }
    }
    print!("{}", t.render());
    match &previous {
        Some((r, ticket, _)) => eprintln!("{user} holds role {r:?} through {ticket}; nothing was changed"),
        None => eprintln!("{user} holds no role yet (a joiner); nothing was changed"),
    }
    Ok(ExitCode::SUCCESS)
}

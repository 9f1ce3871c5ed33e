//! `kubectl tsk migrate`: the stored-version migration of
//! [`tenant_key_operator::migrate`], with what it did per CRD.

use anyhow::{Result, bail};
use kube::Client;
use tenant_key_operator::{crd::VERSION, migrate::KindReport};

use crate::output::{self, Format};

pub async fn run(client: &Client, format: Option<Format>) -> Result<()> {
    let reports = tenant_key_operator::migrate::run(client).await?;
    let text = match format {
        Some(format) => output::render(format, &reports)?,
        None => reports.iter().map(describe).collect(),
    };
    output::emit(&text)?;
    let failed: usize = reports.iter().map(|r| r.failed.len()).sum();
    if failed > 0 {
        bail!(
            "{failed} objects could not be rewritten at {VERSION}; status.storedVersions is unchanged: fix them and run `kubectl tsk migrate` again"
        );
    }
    Ok(())
}

/// What happened to one CRD, in a few lines.
fn describe(report: &KindReport) -> String {
    let mut text = format!(
        "{}: storedVersions [{}]\n",
        report.crd,
        report.stored_versions.join(", ")
    );
    if report.stored_versions == [VERSION] {
        text.push_str("  already migrated, nothing to do\n");
        return text;
    }
    text.push_str(&format!(
        "  objects rewritten at {VERSION}: {}\n",
        report.rewritten
    ));
    for failure in &report.failed {
        text.push_str(&format!("  failed: {failure}\n"));
    }
    if report.stored_versions_updated {
        text.push_str(&format!("  set storedVersions to [{VERSION}]\n"));
    } else {
        text.push_str("  storedVersions left unchanged\n");
    }
    text
}

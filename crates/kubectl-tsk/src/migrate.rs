//! `kubectl tsk migrate`: the stored-version migration of
//! [`tenant_key_api::migrate`], with what it did per CRD.

use anyhow::{Result, bail};
use kube::Client;
use tenant_key_api::{crd::VERSION, migrate::KindReport};

use crate::output::{self, Format};

pub async fn run(client: &Client, format: Option<Format>) -> Result<()> {
    let reports = tenant_key_api::migrate::run(client).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stored: &[&str]) -> KindReport {
        KindReport {
            crd: "tenantsecuritykeys.imbursepayments.com".into(),
            stored_versions: stored.iter().map(|v| (*v).to_owned()).collect(),
            ..KindReport::default()
        }
    }

    #[test]
    fn each_outcome_says_what_happened_to_storedversions() {
        assert_eq!(
            describe(&report(&["v1beta1"])),
            "tenantsecuritykeys.imbursepayments.com: storedVersions [v1beta1]\n  already migrated, nothing to do\n"
        );
        let migrated = KindReport {
            rewritten: 2,
            stored_versions_updated: true,
            ..report(&["v1alpha1", "v1beta1"])
        };
        assert_eq!(
            describe(&migrated),
            "tenantsecuritykeys.imbursepayments.com: storedVersions [v1alpha1, v1beta1]\n  objects rewritten at v1beta1: 2\n  set storedVersions to [v1beta1]\n"
        );
        let failed = KindReport {
            rewritten: 1,
            failed: vec!["payments/checkout-api: refused".into()],
            ..report(&["v1alpha1", "v1beta1"])
        };
        assert!(describe(&failed).ends_with(
            "  failed: payments/checkout-api: refused\n  storedVersions left unchanged\n"
        ));
    }
}

//! `docs/reference/status-reasons.md`, from `Reason::ALL`.

use std::fmt::Write as _;

use anyhow::Result;
use tenant_key_operator::controller::error::Reason;

use super::{cell, header};

pub fn page() -> Result<String> {
    let mut page = header("Status reasons", "`Reason::ALL` in src/controller/error.rs");
    page.push_str(
        "A TenantSecurityKey, ImburseAccount or ClusterImburseAccount that fails reports the \
         reason below on its `Ready` condition (status `False`), and on `Stalled` or \
         `Reconciling` (status `True`): `Stalled` when retrying cannot help until the resource, \
         its account or a Secret changes, `Reconciling` when the operator retries with backoff. \
         A Warning Event with the same reason is published when the reason changes. \
         [Troubleshooting](../troubleshooting.md) says what to do about each.\n\n\
         | Reason | Condition | Meaning |\n|---|---|---|\n",
    );
    for reason in Reason::ALL {
        let name = reason.as_str();
        let condition = if reason.is_permanent() {
            "Stalled"
        } else {
            "Reconciling"
        };
        writeln!(
            page,
            "| [`{name}`](../troubleshooting.md#{}) | `{condition}` | {} |",
            name.to_lowercase(),
            cell(reason.summary())
        )?;
    }
    Ok(page)
}

//! `damselfly vm list`: the VMs seen in the lake, when they were last seen, and their cloud and region.

use damselfly_query::LakeSql;
use damselfly_query::api::vm_list;

use crate::cli::VmListArgs;

pub async fn list(args: VmListArgs) -> anyhow::Result<()> {
    let sql = LakeSql::open(&args.lake).await?;
    let since = super::now_ms() - args.since.as_millis() as i64;
    let vms = vm_list(&sql, since).await?;
    if args.json {
        println!("{}", serde_json::to_string(&vms)?);
        return Ok(());
    }
    let headers = ["ns", "mcis", "vm", "csp", "region", "os", "last_seen"];
    let rows: Vec<Vec<String>> = vms
        .into_iter()
        .map(|v| vec![v.ns, v.mcis, v.vm, v.csp, v.region, v.os, v.last_seen])
        .collect();
    print!("{}", super::metric::table(&headers, &rows));
    eprintln!(
        "{} VMs seen since {}",
        rows.len(),
        humantime::format_duration(args.since)
    );
    Ok(())
}

//! `damselfly sql`: one SQL statement over the lake, printed as a table, CSV or JSON.

use damselfly_query::{LakeSql, OutputFormat};

use crate::cli::{Format, SqlArgs};

pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let lake = LakeSql::open(&args.lake).await?;
    let batches = lake.query(&args.query).await?;
    let fmt = match args.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    println!("{}", damselfly_query::format(&batches, fmt)?);
    Ok(())
}

//! `damselfly sql`: one SQL statement over the lake, printed as a table, CSV or JSON; without one,
//! an interactive prompt with history and multi-line statements.

use std::time::Instant;

use damselfly_query::{LakeSql, OutputFormat};
use rustyline::error::ReadlineError;

use crate::cli::{Format, SqlArgs};

pub async fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let lake = LakeSql::open(&args.lake).await?;
    let fmt = match args.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    match args.query {
        Some(query) => {
            let batches = lake.query(&query).await?;
            println!("{}", damselfly_query::format(&batches, fmt)?);
            Ok(())
        }
        None => prompt(&lake, &args.lake, fmt).await,
    }
}

/// Where the prompt keeps its history.
fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".damselfly_sql_history"))
}

/// Reads statements (ending with `;`, over as many lines as they take) until end of input or
/// `.quit`, answering each; an error is printed and the prompt goes on. Ctrl-C drops the
/// statement being typed.
async fn prompt(lake: &LakeSql, url: &str, fmt: OutputFormat) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    eprintln!(
        "SQL over {url} (tables raw, rollup_1m, rollup_1h, rollup_1d, dlq, alarms; rollups have \
         avg and a *_merged view; partition columns dt, hour). End statements with ';'. .quit or \
         Ctrl-D leaves."
    );
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "damselfly> "
        } else {
            "       ..> "
        };
        let line = match tokio::task::block_in_place(|| editor.readline(prompt)) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if statement.is_empty() {
            match trimmed {
                "" => continue,
                ".quit" | ".exit" | "\\q" => break,
                _ => {}
            }
        }
        statement.push_str(&line);
        statement.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = statement.trim().trim_end_matches(';').trim().to_owned();
        statement.clear();
        let _ = editor.add_history_entry(sql.replace('\n', " "));
        let started = Instant::now();
        match lake.query(&sql).await {
            Ok(batches) => {
                println!("{}", damselfly_query::format(&batches, fmt)?);
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                eprintln!("{rows} rows in {:.3} s", started.elapsed().as_secs_f64());
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

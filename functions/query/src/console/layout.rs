//! The frame every console page shares (head, navigation, range and refresh pickers) and the
//! helpers that write numbers and times twice: exactly for machines, readably for people.

use chrono::DateTime;
use maud::{DOCTYPE, Markup, html};

use super::view::{REFRESH_CHOICES, Range, View};

/// Which page is shown (`body[data-page]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The fleet overview.
    Fleet,
    /// The VM list.
    Vms,
    /// One VM.
    Vm,
    /// Alarm states, history and rules.
    Alarms,
    /// Dead letters.
    Dlq,
    /// One dead letter.
    Record,
}

impl Page {
    /// The name in `data-page`.
    pub fn name(self) -> &'static str {
        match self {
            Page::Fleet => "fleet",
            Page::Vms => "vms",
            Page::Vm => "vm",
            Page::Alarms => "alarms",
            Page::Dlq => "dlq",
            Page::Record => "record",
        }
    }
}

/// A whole page: `title`, the view's pickers (linking to the same page), and `body`.
pub fn page(page: Page, title: &str, view: &View, body: Markup) -> Markup {
    let top = [
        ("fleet", "", "Fleet"),
        ("alarms", "alarms", "Alarms"),
        ("dlq", "dlq", "Dead letters"),
    ];
    let root = view.root;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if view.refresh > 0 {
                    meta http-equiv="refresh" content=(view.refresh);
                }
                title { (title) " · Damselfly" }
                link rel="stylesheet" href={ (root) "console/style.css" };
                link rel="icon" href={ (root) "console/favicon.svg" } type="image/svg+xml";
            }
            body data-page=(page.name()) {
                header {
                    a.brand href=(view.href("", &[])) { "Damselfly" }
                    nav.top {
                        @for (name, href, label) in top {
                            a data-nav=(name) href=(view.href(href, &[]))
                              aria-current=[(page.name() == name).then_some("page")] { (label) }
                        }
                    }
                    nav.range aria-label="time range" {
                        @for r in Range::ALL {
                            a data-range=(r.name()) href=(view.query(&[("range", r.name())]))
                              aria-current=[(r == view.range).then_some("true")] { (r.name()) }
                        }
                        span.sep { "refresh" }
                        @for s in REFRESH_CHOICES {
                            @let label = if s == 0 { "off".to_owned() } else { format!("{s}s") };
                            a data-refresh=(s) href=(view.query(&[("refresh", &s.to_string())]))
                              aria-current=[(s == view.refresh).then_some("true")] { (label) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    p.window {
                        (time_text(view.from_ms())) " to " (time_text(view.end_ms))
                        @if view.end_fixed {
                            " · " a href=(live_query(view)) { "follow now" }
                        }
                    }
                    (body)
                }
            }
        }
    }
}

/// The view's query string without its fixed end.
fn live_query(view: &View) -> String {
    let mut live = view.clone();
    live.end_fixed = false;
    live.query(&[])
}

/// A time as people read it: `2026-11-21 21:03 UTC`.
pub fn time_text(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A number as people read it: up to 3 significant decimals, thousands with a suffix.
pub fn number_text(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        v.to_string()
    } else if a >= 1e12 {
        format!("{:.2}T", v / 1e12)
    } else if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A table cell holding a number: exact in `data-value`, readable as text.
pub fn num_cell(col: &str, v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! { td.num data-col=(col) data-value=(v) { (number_text(v)) } },
        None => html! { td.num data-col=(col) data-value="" { "–" } },
    }
}

/// A table cell holding a count.
pub fn count_cell(col: &str, v: u64) -> Markup {
    html! { td.num data-col=(col) data-value=(v) { (v) } }
}

/// A table cell holding a time: milliseconds in `data-value`.
pub fn time_cell(col: &str, ms: i64) -> Markup {
    html! { td data-col=(col) data-value=(ms) { time { (time_text(ms)) } } }
}

/// A table cell holding text.
pub fn text_cell(col: &str, v: &str) -> Markup {
    html! { td data-col=(col) data-value=(v) { (v) } }
}

/// The link to a VM's page, keeping the view's range and end.
pub fn vm_link(view: &View, ns: &str, mcis: &str, vm: &str) -> Markup {
    use super::view::encode;
    let mut v = view.clone();
    v.extra.clear();
    html! {
        a data-vm=(vm) href=(v.href(&format!("vm/{}/{}/{}", encode(ns), encode(mcis), encode(vm)), &[])) { (vm) }
    }
}

/// A note shown where a table has no rows.
pub fn empty(what: &str) -> Markup {
    html! { p.empty { (what) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_exact_in_data_and_short_in_text() {
        assert_eq!(number_text(23.456), "23.46");
        assert_eq!(number_text(12_345.0), "12.3k");
        assert_eq!(number_text(3.0e9), "3.00G");
        assert_eq!(number_text(7.0), "7");
        let cell = num_cell("value", Some(0.1 + 0.2)).into_string();
        assert!(
            cell.contains(r#"data-value="0.30000000000000004""#),
            "{cell}"
        );
        assert!(
            num_cell("v", Some(1e-7))
                .into_string()
                .contains(r#"data-value="0.0000001""#)
        );
    }

    #[test]
    fn a_page_escapes_what_it_shows_and_marks_the_current_range() {
        let view = View::parse(&[("range".into(), "6h".into())], 0, &[]).unwrap();
        let view = view.at_depth(3);
        let html = page(Page::Vm, "<vm>", &view, html! { p { "x" } }).into_string();
        assert!(
            html.contains("<title>&lt;vm&gt; · Damselfly</title>"),
            "{html}"
        );
        assert!(
            html.contains(r#"data-range="6h" href="?range=6h" aria-current="true""#),
            "{html}"
        );
        assert!(!html.contains("http-equiv"), "no refresh unless asked");
        assert!(!html.contains("<script"));
    }
}

//! The summary table, as markdown (also readable in a terminal) and as HTML.

use super::GroupSummary;

const HEADINGS: [&str; 9] = [
    "group",
    "runs",
    "final test acc. (%)",
    "best test acc. (%)",
    "param. updates",
    "updates vs first",
    "wall time (s)",
    "samples/s",
    "all-reduce calls",
];

/// The headings, with a language model's validation losses in place of the accuracies where
/// every group is one (`lm`).
fn headings(lm: bool) -> [&'static str; 9] {
    let mut h = HEADINGS;
    if lm {
        h[2] = "final val. bits/token";
        h[3] = "final val. loss (nats)";
    }
    h
}

/// Whether every group is a language model's.
fn language_models(groups: &[GroupSummary]) -> bool {
    !groups.is_empty() && groups.iter().all(|g| g.final_bits.is_some())
}

/// `98.12 ± 0.05`, or `98.12 ± —` for a single run.
fn pm(mean: f64, std: Option<f64>) -> String {
    pm_digits(mean, std, 2)
}

/// [`pm`] with `digits` decimals.
fn pm_digits(mean: f64, std: Option<f64>, digits: usize) -> String {
    match std {
        Some(s) => format!("{mean:.digits$} ± {s:.digits$}"),
        None => format!("{mean:.digits$} ± —"),
    }
}

/// The cells of one row, unescaped.
fn cells(g: &GroupSummary, first: &GroupSummary, lm: bool) -> [String; 9] {
    let marker = if g.unfinished.is_empty() { "" } else { " *" };
    let (left, right) = match (lm, g.final_bits, g.final_nats) {
        (true, Some(bits), Some(nats)) => {
            (pm_digits(bits.0, bits.1, 3), pm_digits(nats.0, nats.1, 4))
        }
        _ => (
            pm(g.final_acc_mean, g.final_acc_std),
            pm(g.best_acc_mean, g.best_acc_std),
        ),
    };
    [
        format!("{}{marker}", g.group),
        g.seeds.to_string(),
        left,
        right,
        g.updates.0.to_string(),
        g.updates_ratio(first)
            .map_or_else(|| "—".to_string(), |r| format!("{:.0}%", 100.0 * r)),
        format!("{:.1}", g.wall_seconds_mean),
        format!("{:.0}", g.samples_per_second_mean),
        g.allreduce_calls.to_string(),
    ]
}

/// The note under a row with unfinished runs, if any.
fn row_note(g: &GroupSummary) -> Option<String> {
    if g.unfinished.is_empty() {
        return None;
    }
    let how = if g.partial {
        "no run finished: numbers are from the epochs so far"
    } else {
        "not in the numbers above"
    };
    Some(format!(
        "* {} unfinished: {} ({how})",
        g.group,
        g.unfinished.join(", ")
    ))
}

/// Escapes a markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The summary table in markdown, one row per group, the first group being the reference for
/// the updates ratio; unfinished runs get a note row below their group.
pub fn markdown_table(groups: &[GroupSummary]) -> String {
    let lm = language_models(groups);
    let mut out = format!("| {} |\n", headings(lm).join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEADINGS.len())));
    let Some(first) = groups.first() else {
        return out;
    };
    for g in groups {
        let row: Vec<String> = cells(g, first, lm).iter().map(|c| md_cell(c)).collect();
        out.push_str(&format!("| {} |\n", row.join(" | ")));
        if let Some(note) = row_note(g) {
            out.push_str(&format!(
                "| {} |{}\n",
                md_cell(&note),
                " |".repeat(HEADINGS.len() - 1)
            ));
        }
    }
    out
}

/// The summary table as an HTML `<table>` (same content as [`markdown_table`]).
pub fn html_table(groups: &[GroupSummary]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    let lm = language_models(groups);
    for h in headings(lm) {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    if let Some(first) = groups.first() {
        for g in groups {
            out.push_str("<tr>");
            for (i, c) in cells(g, first, lm).iter().enumerate() {
                let class = if i == 0 { "" } else { " class=\"num\"" };
                out.push_str(&format!("<td{class}>{}</td>", escape(c)));
            }
            out.push_str("</tr>\n");
            if let Some(note) = row_note(g) {
                out.push_str(&format!(
                    "<tr class=\"note\"><td colspan=\"{}\">{}</td></tr>\n",
                    HEADINGS.len(),
                    escape(&note)
                ));
            }
        }
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// Escapes text for HTML element content and attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

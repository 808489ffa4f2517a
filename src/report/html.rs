//! The self-contained HTML page: inline CSS, plots as base64 PNG data URIs.

use super::GroupSummary;
use super::table::{escape, html_table};
use base64::Engine;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
max-width:1120px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;font-size:.92em;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f3f3f3}td:first-child{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.note td{font-size:.88em;color:#8a4b00;background:#fff8ec}\
ul.notes{font-family:ui-monospace,monospace;font-size:.85em;color:#444}\
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}\
figcaption{font-size:.9em;color:#555}";

/// The whole page. `plots` are `(file stem, title, PNG bytes)`.
pub(super) fn page(
    title: &str,
    groups: &[GroupSummary],
    notes: &[String],
    explanation: &str,
    plots: &[(&str, String, Vec<u8>)],
) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n\
         <h2>Summary</h2>\n",
        t = escape(title)
    );
    out.push_str(&html_table(groups));
    if !notes.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for n in notes {
            out.push_str(&format!("<li>{}</li>\n", escape(n)));
        }
        out.push_str("</ul>\n");
    }
    out.push_str(&format!("<p>{}</p>\n<h2>Plots</h2>\n", escape(explanation)));
    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, title, png) in plots {
        out.push_str(&format!(
            "<figure id=\"{n}\">\n<img alt=\"{t}\" src=\"data:image/png;base64,{d}\">\n\
             <figcaption>{t} ({n}.png, {n}.svg)</figcaption>\n</figure>\n",
            n = escape(name),
            t = escape(title),
            d = b64.encode(png)
        ));
    }
    out.push_str("</body>\n</html>\n");
    out
}

//! index.html: compare's tables and charts on one page. The charts are the same SVG as the
//! files beside it, inlined; the tables are summary.md's, turned into HTML here (only what
//! summary.md writes: headings, paragraphs, lists, tables, `code`, *em*, **strong**), so the
//! page and the Markdown cannot disagree.
//!
//! The page is self-contained (no script, no external style or font), as the lab's report:
//! it reads the same in a browser, in headless Chromium (scripts/check-compare.sh) and from
//! a CI artifact.

use std::fmt::Write as _;

use super::charts;
use super::output::{summary_markdown, Results};

const STYLE: &str = "
body { font-family: sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { border-top: 2px solid #468; padding-top: 0.6em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.86em; margin: 0.6em 0; }
th, td { border: 1px solid #ccd; padding: 0.2em 0.5em; }
td { text-align: right; } td:first-child { text-align: left; }
figure { margin: 1em 0; overflow-x: auto; }
figure svg { max-width: 100%; height: auto; }
";

/// Escapes `&`, `<`, `>` and `"` for HTML text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}

/// Inline Markdown of summary.md's kinds: `code`, **strong**, *em*; escaped first.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let escaped = escape(text);
    let mut rest = escaped.as_str();
    let marks: [(&str, &str); 3] = [("`", "code"), ("**", "strong"), ("*", "em")];
    'outer: while !rest.is_empty() {
        for (mark, tag) in marks {
            if let Some(body) = rest.strip_prefix(mark) {
                if let Some(end) = body.find(mark).filter(|e| *e > 0) {
                    let _ = write!(out, "<{tag}>{}</{tag}>", &body[..end]);
                    rest = &body[end + mark.len()..];
                    continue 'outer;
                }
            }
        }
        let ch = rest.chars().next().expect("not empty");
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// summary.md as HTML.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let mut lines = md.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(h) = line.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = line.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if line.starts_with('|') {
            out.push_str("<table>\n");
            let mut header = true;
            let mut row = Some(line);
            while let Some(r) = row {
                let cells: Vec<&str> = r.trim().trim_matches('|').split('|').collect();
                if cells
                    .iter()
                    .all(|c| c.trim().starts_with("--") || c.trim() == "---")
                {
                    // The separator row under the header.
                } else {
                    let tag = if header { "th" } else { "td" };
                    out.push_str("<tr>");
                    for c in cells {
                        let _ = write!(out, "<{tag}>{}</{tag}>", inline(c.trim()));
                    }
                    out.push_str("</tr>\n");
                    header = false;
                }
                row = lines.next_if(|l| l.starts_with('|'));
            }
            out.push_str("</table>\n");
        } else if let Some(item) = line.strip_prefix("- ") {
            out.push_str("<ul>\n");
            let _ = writeln!(out, "<li>{}</li>", inline(item));
            while let Some(next) = lines.next_if(|l| l.starts_with("- ")) {
                let _ = writeln!(out, "<li>{}</li>", inline(&next[2..]));
            }
            out.push_str("</ul>\n");
        } else if !line.trim().is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(line));
        }
    }
    out
}

/// The page: the summary's opening, every chart (inlined SVG, with its notes), then the
/// tables.
pub fn page(results: &Results) -> String {
    let md = summary_markdown(results);
    // The opening (title and setting) goes first; the tables after the charts.
    let split = md.find("\n## ").unwrap_or(md.len());
    let (opening, tables) = md.split_at(split);
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.push_str("<title>echolab compare: every model under the same load</title>\n");
    let _ = writeln!(page, "<style>{STYLE}</style>\n</head>\n<body>");
    page.push_str(&markdown_to_html(opening));
    page.push_str("<h2>Charts</h2>\n");
    for chart in &results.charts {
        let id = chart.file.trim_end_matches(".svg");
        let _ = writeln!(
            page,
            "<section class=\"chart\" id=\"{}\">\n<h3>{}</h3>",
            escape(id),
            escape(&chart.question)
        );
        match charts::svg(chart) {
            Ok(svg) => {
                let _ = writeln!(page, "<figure>{svg}</figure>");
            }
            Err(err) => {
                let _ = writeln!(
                    page,
                    "<p>cannot draw this chart: {}</p>",
                    escape(&err.to_string())
                );
            }
        }
        page.push_str("</section>\n");
    }
    page.push_str("<section class=\"tables\">\n");
    page.push_str(&markdown_to_html(tables));
    page.push_str("</section>\n</body>\n</html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_markdown_kinds_become_html() {
        let html = markdown_to_html(
            "# t\n\nsome *em* and `c` & **b**\n\n## h\n\n| a | b |\n|---|--:|\n| x | 1 |\n\n- one\n- two\n",
        );
        assert_eq!(
            html,
            "<h1>t</h1>\n<p>some <em>em</em> and <code>c</code> &amp; <strong>b</strong></p>\n<h2>h</h2>\n\
             <table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td>x</td><td>1</td></tr>\n</table>\n\
             <ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
        );
    }

    #[test]
    fn the_page_has_every_chart_inlined_and_the_tables_after_them() {
        // A comparison with nothing measured still draws every chart (empty) and a table.
        let plan = crate::compare::Plan::new(true, Some(1));
        let workloads = plan
            .workloads
            .iter()
            .map(|w| super::super::output::WorkloadResults::new(w.clone(), ["event"].into_iter()))
            .collect();
        let mut results = Results {
            machine: super::super::output::Machine::here(),
            idle_conns: plan.idle_conns,
            plan,
            models: Vec::new(),
            workloads,
            idle: Vec::new(),
            interrupted: false,
            notes: Vec::new(),
            charts: Vec::new(),
        };
        results.charts = charts::data(&results);
        let page = page(&results);
        assert!(page.starts_with("<!DOCTYPE html>") && page.ends_with("</html>\n"));
        let mut last = 0;
        for chart in &results.charts {
            let id = chart.file.trim_end_matches(".svg");
            let at = page
                .find(&format!("<section class=\"chart\" id=\"{id}\">\n<h3>"))
                .unwrap_or_else(|| panic!("no section for {id}"));
            assert!(at > last, "{id} out of order");
            assert!(
                page[at..].find("<figure><svg").is_some_and(|f| f < 200),
                "{id}"
            );
            last = at;
        }
        let tables = page.find("<section class=\"tables\">").unwrap();
        assert!(tables > last);
        assert_eq!(page.matches("<table>").count(), results.workloads.len() + 1);
        assert!(page.contains("<h1>echolab compare (quick)</h1>"));
    }

    #[test]
    fn a_lone_star_stays_a_star() {
        assert_eq!(inline("2 * 3"), "2 * 3");
        assert_eq!(inline("<b>"), "&lt;b&gt;");
        // An empty pair of marks is text, not an empty element.
        assert_eq!(inline("`` and **"), "`` and **");
        assert_eq!(escape("a \"q\" & <t>"), "a &quot;q&quot; &amp; &lt;t&gt;");
    }
}

//! The lab's pictures: panels of labelled bars, side by side, as SVG text (plotters'
//! SVG backend), ready to inline into the HTML report.
//!
//! One shape serves every experiment: a panel is a title and a list of bars; a histogram
//! is a panel with a bar per value. Drawing errors become an SVG that says so, so a
//! picture can never make an experiment fail.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One panel: a title and its bars, or (when `series` is not empty) its lines.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
    /// Horizontal reference lines, each with a label (the lecture's figure, say).
    pub references: Vec<(String, f64)>,
    /// Lines over a numeric horizontal axis (a timeline, a growth curve); a panel with
    /// series draws them instead of bars.
    pub series: Vec<Series>,
    /// This panel's horizontal axis title, instead of the picture's (empty: the picture's).
    pub x_label: String,
}

/// One line of a line panel: its legend label and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One bar: its label under the axis, its height, and an optional spread (low, high).
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub spread: Option<(f64, f64)>,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            spread: None,
        }
    }
}

impl Panel {
    pub fn new(title: impl Into<String>, bars: Vec<Bar>) -> Panel {
        Panel {
            title: title.into(),
            bars,
            references: Vec::new(),
            series: Vec::new(),
            x_label: String::new(),
        }
    }

    /// A panel of lines (see [`Panel::series`]).
    pub fn lines(title: impl Into<String>, series: Vec<Series>) -> Panel {
        Panel {
            title: title.into(),
            bars: Vec::new(),
            references: Vec::new(),
            series,
            x_label: String::new(),
        }
    }
}

/// What the picture shows on its vertical axis, and how to label the bars.
#[derive(Debug, Clone)]
pub struct Picture {
    pub caption: String,
    pub y_label: String,
    /// What the bars along the horizontal axis are (empty: no axis title).
    pub x_label: String,
    pub panels: Vec<Panel>,
    /// Label only every n-th bar (a histogram of 100 values wants every 10th).
    pub label_every: usize,
    /// Every panel shares the tallest panel's scale (to compare panels by eye).
    pub shared_scale: bool,
}

const PANEL_WIDTH: u32 = 380;
/// The report's content width (its `body` max-width): a picture no wider than this is
/// drawn at its own size, so its text keeps the size it was drawn with.
pub const PAGE_WIDTH: u32 = 1180;
/// A line panel's width: two of them side by side fit [`PAGE_WIDTH`].
const LINE_PANEL_WIDTH: u32 = PAGE_WIDTH / 2 - 10;
/// Tick labels and legends of line panels, in plotters' font units (the SVG backend
/// writes 1/1.24 of it as the font-size: about 13 px).
const LINE_LABEL_SIZE: u32 = 16;
const HEIGHT: u32 = 330;

impl Picture {
    pub fn new(
        caption: impl Into<String>,
        y_label: impl Into<String>,
        panels: Vec<Panel>,
    ) -> Picture {
        Picture {
            caption: caption.into(),
            y_label: y_label.into(),
            x_label: String::new(),
            panels,
            label_every: 1,
            shared_scale: false,
        }
    }

    /// The picture as an SVG document.
    pub fn svg(&self) -> String {
        let mut svg = String::new();
        let width = self
            .panels
            .iter()
            .map(panel_width)
            .sum::<u32>()
            .max(PANEL_WIDTH);
        let drawn = {
            let root = SVGBackend::with_string(&mut svg, (width, HEIGHT)).into_drawing_area();
            self.draw(&root)
                .and_then(|()| root.present().map_err(|err| err.to_string()))
        };
        match drawn {
            Ok(()) => svg,
            Err(err) => format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"4\" y=\"20\">cannot draw: {}</text></svg>",
                crate::report::escape(&err)
            ),
        }
    }

    fn draw(
        &self,
        root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), String> {
        root.fill(&WHITE).map_err(|err| err.to_string())?;
        let root = root
            .titled(&self.caption, ("sans-serif", 17))
            .map_err(|err| err.to_string())?;
        let shared_top = self.panels.iter().map(panel_top).fold(0.0, f64::max);
        let mut rest = root;
        for panel in &self.panels {
            let (area, right) = rest.split_horizontally(panel_width(panel));
            let top = if self.shared_scale {
                shared_top
            } else {
                panel_top(panel)
            };
            if panel.series.is_empty() {
                self.draw_panel(panel, &area, top)?;
            } else {
                self.draw_lines(panel, &area)?;
            }
            rest = right;
        }
        Ok(())
    }

    fn x_label_of<'a>(&'a self, panel: &'a Panel) -> &'a str {
        if panel.x_label.is_empty() {
            &self.x_label
        } else {
            &panel.x_label
        }
    }

    fn draw_lines(
        &self,
        panel: &Panel,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> Result<(), String> {
        let points = || panel.series.iter().flat_map(|series| series.points.iter());
        let right = points().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
        let top = points().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.12;
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(8)
            // Room for the last x tick label, centred on the right edge.
            .margin_right(24)
            .x_label_area_size(50)
            .y_label_area_size(72)
            .build_cartesian_2d(0f64..right, 0f64..top)
            .map_err(|err| err.to_string())?;
        chart
            .configure_mesh()
            .y_desc(&self.y_label)
            .x_desc(self.x_label_of(panel))
            .x_label_formatter(&|x| short_number(*x))
            .y_label_formatter(&|y| short_number(*y))
            .label_style(("sans-serif", LINE_LABEL_SIZE))
            .axis_desc_style(("sans-serif", LINE_LABEL_SIZE))
            .draw()
            .map_err(|err| err.to_string())?;
        for (idx, series) in panel.series.iter().enumerate() {
            let colour = PALETTE[idx % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|err| err.to_string())?
                .label(series.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", LINE_LABEL_SIZE))
            .draw()
            .map_err(|err| err.to_string())?;
        Ok(())
    }

    fn draw_panel(
        &self,
        panel: &Panel,
        area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
        top: f64,
    ) -> Result<(), String> {
        let n_bars = panel.bars.len().max(1) as i32;
        // Reference lines are named in the caption, not written over the bars.
        let caption = if panel.references.is_empty() {
            panel.title.clone()
        } else {
            let names: Vec<&str> = panel
                .references
                .iter()
                .map(|(label, _)| label.as_str())
                .collect();
            format!("{} (red: {})", panel.title, names.join("; "))
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&caption, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(42)
            .y_label_area_size(62)
            // 0..n as segments is n + 1 slots (0 to n inclusive): 0..n-1 is one per bar
            // (a single bar keeps its spare slot: a zero-width range cannot be drawn).
            .build_cartesian_2d((0..(n_bars - 1).max(1)).into_segmented(), 0f64..top)
            .map_err(|err| err.to_string())?;
        let labels: Vec<String> = panel.bars.iter().map(|bar| bar.label.clone()).collect();
        let every = self.label_every.max(1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len().max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(idx)
                    if *idx >= 0 && (*idx as usize).is_multiple_of(every) =>
                {
                    labels.get(*idx as usize).cloned().unwrap_or_default()
                }
                _ => String::new(),
            })
            .y_desc(&self.y_label)
            .x_desc(self.x_label_of(panel))
            .y_label_formatter(&|y| short_number(*y))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(|err| err.to_string())?;
        let colour = RGBColor(70, 110, 170);
        let margin = if n_bars > 30 { 0 } else { 8 };
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .margin(margin)
                    .style(colour.filled())
                    .data(
                        panel
                            .bars
                            .iter()
                            .enumerate()
                            .map(|(idx, bar)| (idx as i32, bar.value.max(0.0))),
                    ),
            )
            .map_err(|err| err.to_string())?;
        chart
            .draw_series(panel.bars.iter().enumerate().filter_map(|(idx, bar)| {
                let (low, high) = bar.spread?;
                let x = SegmentValue::CenterOf(idx as i32);
                Some(PathElement::new(
                    vec![(x.clone(), low), (x, high)],
                    BLACK.stroke_width(2),
                ))
            }))
            .map_err(|err| err.to_string())?;
        for (_, value) in &panel.references {
            let red = RGBColor(200, 60, 40);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (SegmentValue::Exact(0), *value),
                        (SegmentValue::Last, *value),
                    ],
                    red.stroke_width(1),
                )))
                .map_err(|err| err.to_string())?;
        }
        // Each bar's value above it, so that a zero or a tiny bar still reads (not for
        // histograms, whose bars are too narrow for text).
        if n_bars <= 30 {
            chart
                .draw_series(panel.bars.iter().enumerate().map(|(idx, bar)| {
                    let top_of_bar = bar
                        .spread
                        .map_or(bar.value, |(_, high)| high.max(bar.value));
                    Text::new(
                        short_number(bar.value),
                        (
                            SegmentValue::CenterOf(idx as i32),
                            top_of_bar.max(0.0) + top * 0.02,
                        ),
                        TextStyle::from(("sans-serif", 11).into_font())
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))
                .map_err(|err| err.to_string())?;
        }
        Ok(())
    }
}

/// Line colours, in series order.
const PALETTE: [RGBColor; 5] = [
    RGBColor(70, 110, 170),
    RGBColor(200, 60, 40),
    RGBColor(40, 140, 70),
    RGBColor(150, 90, 170),
    RGBColor(220, 140, 30),
];

/// A panel's width: wide enough for its bar labels to sit side by side.
fn panel_width(panel: &Panel) -> u32 {
    if !panel.series.is_empty() {
        return LINE_PANEL_WIDTH;
    }
    let n_bars = panel.bars.len() as u32;
    if n_bars > 30 {
        PANEL_WIDTH
    } else {
        PANEL_WIDTH.max(90 * n_bars + 90)
    }
}

/// The top of a panel's vertical axis: a little above its highest bar, spread or line.
fn panel_top(panel: &Panel) -> f64 {
    let highest = panel
        .bars
        .iter()
        .map(|bar| {
            bar.spread
                .map_or(bar.value, |(_, high)| high.max(bar.value))
        })
        .chain(panel.references.iter().map(|(_, value)| *value))
        .fold(0.0, f64::max);
    if highest <= 0.0 {
        1.0
    } else {
        highest * 1.12
    }
}

/// `12345` as `12.3K`, `2500000` as `2.5M`.
pub fn short_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if magnitude >= 1e4 {
        format!("{:.0}K", value / 1e3)
    } else if magnitude >= 1e3 {
        format!("{:.1}K", value / 1e3)
    } else if magnitude >= 10.0 || value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_is_an_svg_with_its_titles() {
        let mut panel = Panel::new("left panel", vec![Bar::new("a", 3.0), Bar::new("b", 5.0)]);
        panel.references.push(("lecture".to_string(), 4.0));
        let svg = Picture::new(
            "the caption",
            "things",
            vec![panel, Panel::new("right", vec![])],
        )
        .svg();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["the caption", "left panel", "right", "lecture"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn a_line_panel_draws_its_series_and_legend() {
        let panel = Panel::lines(
            "growth",
            vec![
                Series {
                    label: "leaky".to_string(),
                    points: vec![(0.0, 0.0), (50.0, 400.0)],
                },
                Series {
                    label: "joined".to_string(),
                    points: vec![(0.0, 0.0), (50.0, 8.0)],
                },
            ],
        );
        let svg = Picture::new("c", "MiB", vec![panel]).svg();
        for text in ["growth", "leaky", "joined", "MiB"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        // thread-leak's picture: two line panels side by side, drawn no wider than the
        // page, so the browser does not shrink their text.
        let two = Picture::new(
            "c",
            "",
            vec![
                Panel::lines(
                    "a",
                    vec![Series {
                        label: "x".to_string(),
                        points: vec![(0.0, 0.0), (1.0, 1.0)],
                    }],
                ),
                Panel::lines(
                    "b",
                    vec![Series {
                        label: "y".to_string(),
                        points: vec![(0.0, 0.0), (1.0, 1.0)],
                    }],
                ),
            ],
        )
        .svg();
        let width: u32 = two
            .split("width=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        assert!(width <= PAGE_WIDTH, "{width}");
        // Every text at least 12 px as drawn (and so as shown).
        let sizes: Vec<f64> = two
            .split("font-size=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect();
        assert!(!sizes.is_empty());
        assert!(sizes.iter().all(|&size| size >= 12.0), "{sizes:?}");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(1500.0), "1.5K");
        assert_eq!(short_number(20_000.0), "20K");
        assert_eq!(short_number(2_500_000.0), "2.5M");
        assert_eq!(short_number(0.25), "0.25");
    }
}

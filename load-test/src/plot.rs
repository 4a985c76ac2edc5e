//! The cluster benchmark's picture: p99 RTT and CPU per bot against the bot count, worldmesh
//! beside the bare quinn echo measured in the same run. A PNG drawn with plotters; text needs
//! a TrueType font, read at run time from the usual system locations (DejaVu Sans on Debian).

use std::path::Path;

use plotters::prelude::*;

use crate::cluster_bench::Step;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn register_font() -> Result<(), String> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no TrueType font found (install fonts-dejavu-core)")?;
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(path)
            .map_err(|e| format!("{path}: {e}"))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path}: not a usable font"))
}

/// Writes the two-panel plot of a cluster-bench run.
pub fn cluster_bench(path: &Path, steps: &[Step]) -> Result<(), String> {
    register_font()?;
    draw(path, steps).map_err(|e| e.to_string())
}

fn draw(path: &Path, steps: &[Step]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_bots = steps.iter().map(|s| s.bots).max().unwrap_or(1) as f64 * 1.05;

    let max_rtt = steps
        .iter()
        .flat_map(|s| [s.rtt_ms.p99, s.echo_rtt_ms_p99])
        .fold(100.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("p99 RTT (ms, log scale) vs bots", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        // Logarithmic: the echo's ~1 ms, the cluster's tens of ms and a collapse's seconds all
        // stay readable on one axis.
        .build_cartesian_2d(0.0..max_bots, (0.1..max_rtt).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("bots / connections")
        .y_desc("ms")
        .draw()?;
    let line = |f: fn(&Step) -> f64| steps.iter().map(move |s| (s.bots as f64, f(s).max(0.1)));
    chart
        .draw_series(LineSeries::new(
            line(|s| s.rtt_ms.p99),
            BLUE.stroke_width(2),
        ))?
        .label("worldmesh input→ack p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(line(|s| s.rtt_ms.p99).map(|p| Circle::new(p, 4, BLUE.filled())))?;
    chart
        .draw_series(LineSeries::new(
            line(|s| s.echo_rtt_ms_p99),
            RED.stroke_width(2),
        ))?
        .label("bare quinn echo p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(line(|s| s.echo_rtt_ms_p99).map(|p| Circle::new(p, 4, RED.filled())))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 100.0), (max_bots, 100.0)],
            BLACK.mix(0.3),
        ))?
        .label("sustained limit (100 ms)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let max_cpu = steps
        .iter()
        .flat_map(|s| [s.cpu_s_per_bot_per_s, s.echo_cpu_s_per_conn_per_s])
        .fold(0.0f64, f64::max)
        * 1000.0
        * 1.2;
    let mut chart = ChartBuilder::on(&right)
        .caption("CPU ms per bot per second vs bots", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_bots, 0.0..max_cpu.max(0.1))?;
    chart
        .configure_mesh()
        .x_desc("bots / connections")
        .y_desc("CPU ms / s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            line(|s| s.cpu_s_per_bot_per_s * 1000.0),
            BLUE.stroke_width(2),
        ))?
        .label("worldmesh cluster (all processes)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(
        line(|s| s.cpu_s_per_bot_per_s * 1000.0).map(|p| Circle::new(p, 4, BLUE.filled())),
    )?;
    chart
        .draw_series(LineSeries::new(
            line(|s| s.echo_cpu_s_per_conn_per_s * 1000.0),
            RED.stroke_width(2),
        ))?
        .label("bare quinn echo (server + clients)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(
        line(|s| s.echo_cpu_s_per_conn_per_s * 1000.0).map(|p| Circle::new(p, 4, RED.filled())),
    )?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

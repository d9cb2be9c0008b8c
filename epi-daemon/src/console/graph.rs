//! The plugin processes' dependency graph as an inline SVG picture: one column per depth
//! (processes without inputs on the left), an arrow from each input to what it feeds.

use std::collections::BTreeMap;

use epi::{EngineReport, WorkerState};
use maud::{html, Markup};

const NODE_WIDTH: usize = 200;
const NODE_HEIGHT: usize = 38;
const COLUMN_GAP: usize = 70;
const ROW_GAP: usize = 14;
const MARGIN: usize = 10;

/// A box in the picture.
struct Node {
    column: usize,
    row: usize,
    /// Fill and stroke colours for its state.
    colours: (&'static str, &'static str),
    /// Under the name: the state, or that it is not installed.
    caption: String,
}

/// Each worker's depth: 0 without inputs, else one more than its deepest input. Inputs that
/// are not installed are at depth 0; a cycle (the engine refuses them) stops the descent.
fn depth(
    name: &str,
    report: &EngineReport,
    memo: &mut BTreeMap<String, usize>,
    visiting: &mut Vec<String>,
) -> usize {
    if let Some(&known) = memo.get(name) {
        return known;
    }
    if visiting.iter().any(|seen| seen == name) {
        return 0;
    }
    visiting.push(name.to_owned());
    let found = report.workers.get(name).map_or(0, |worker| {
        worker
            .inputs
            .iter()
            .map(|input| depth(input, report, memo, visiting) + 1)
            .max()
            .unwrap_or(0)
    });
    visiting.pop();
    memo.insert(name.to_owned(), found);
    found
}

fn colours(state: &WorkerState, failed: bool) -> (&'static str, &'static str) {
    match state {
        WorkerState::Started if failed => ("#fff4d6", "#b7791f"),
        WorkerState::Started => ("#e3f6e8", "#2f855a"),
        WorkerState::Starting | WorkerState::Stopping => ("#fff4d6", "#b7791f"),
        WorkerState::Stopped if failed => ("#fde2e1", "#c53030"),
        WorkerState::Stopped => ("#edf0f3", "#718096"),
    }
}

/// The picture; an empty one when there are no processes.
pub fn render(report: &EngineReport) -> Markup {
    let mut memo = BTreeMap::new();
    let mut names: Vec<String> = report.workers.keys().cloned().collect();
    for worker in report.workers.values() {
        for input in &worker.inputs {
            if !names.contains(input) {
                names.push(input.clone());
            }
        }
    }
    let mut rows_used: BTreeMap<usize, usize> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for name in &names {
        let column = depth(name, report, &mut memo, &mut Vec::new());
        let row = rows_used.entry(column).or_default();
        let (colours, caption) = match report.workers.get(name) {
            Some(worker) => (
                colours(&worker.state, worker.last_error.is_some()),
                format!("{:?}", worker.state).to_lowercase(),
            ),
            None => (("#ffffff", "#c53030"), "not installed".to_owned()),
        };
        nodes.insert(
            name.clone(),
            Node {
                column,
                row: *row,
                colours,
                caption,
            },
        );
        *row += 1;
    }
    let columns = rows_used.len();
    let rows = rows_used.values().copied().max().unwrap_or(0);
    let width = 2 * MARGIN + columns * NODE_WIDTH + columns.saturating_sub(1) * COLUMN_GAP;
    let height = 2 * MARGIN + rows * NODE_HEIGHT + rows.saturating_sub(1) * ROW_GAP;
    let x = |node: &Node| MARGIN + node.column * (NODE_WIDTH + COLUMN_GAP);
    let y = |node: &Node| MARGIN + node.row * (NODE_HEIGHT + ROW_GAP);
    html! {
        svg.graph xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox={"0 0 " (width) " " (height)} role="img"
            aria-label="plugin processes and their inputs" {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#4a5568" {}
                }
            }
            @for (name, worker) in &report.workers {
                @for input in &worker.inputs {
                    @if let (Some(from), Some(to)) = (nodes.get(input), nodes.get(name)) {
                        @let (x1, y1) = (x(from) + NODE_WIDTH, y(from) + NODE_HEIGHT / 2);
                        @let (x2, y2) = (x(to), y(to) + NODE_HEIGHT / 2);
                        @let bend = (x1 + x2) / 2;
                        path d={"M " (x1) " " (y1) " C " (bend) " " (y1) ", " (bend) " " (y2) ", " (x2) " " (y2)}
                            fill="none" stroke="#4a5568" stroke-width="1.5"
                            marker-end="url(#arrow)" {}
                    }
                }
            }
            @for (name, node) in &nodes {
                g.node data-process=(name) {
                    rect x=(x(node)) y=(y(node)) width=(NODE_WIDTH) height=(NODE_HEIGHT) rx="6"
                        fill=(node.colours.0) stroke=(node.colours.1) stroke-width="1.5" {}
                    text x=(x(node) + 10) y=(y(node) + 16) font-size="13"
                        font-family="monospace" fill="#1a202c" { (name) }
                    text x=(x(node) + 10) y=(y(node) + 31) font-size="11"
                        font-family="sans-serif" fill=(node.colours.1) { (node.caption) }
                }
            }
        }
    }
}

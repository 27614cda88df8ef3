//! A run graph drawn as SVG: nodes in layers by their longest path from a start, edges
//! with their statuses, child runs linked from their nodes.

use std::collections::HashMap;
use std::fmt::Write as _;

use squid_mesh::inspect::render::status_text;
use squid_mesh::inspect::{EdgeKind, NodeKind, RunGraph};
use squid_mesh::spec::Outcome;

const NODE_W: i64 = 170;
const NODE_H: i64 = 48;
const GAP_X: i64 = 70;
const GAP_Y: i64 = 26;
const PAD: i64 = 16;

/// The layer of every node: the longest path from a node nothing points at, over the
/// edges but compensations (loops are cut after as many rounds as there are nodes).
fn layers(g: &RunGraph) -> HashMap<&str, i64> {
    let mut layer: HashMap<&str, i64> = g.nodes.iter().map(|n| (n.id.as_str(), 0)).collect();
    for _ in 0..g.nodes.len() {
        let mut changed = false;
        for e in g.edges.iter().filter(|e| e.kind != EdgeKind::Compensation) {
            let (Some(&from), Some(&to)) = (layer.get(e.from.as_str()), layer.get(e.to.as_str()))
            else {
                continue;
            };
            if to < from + 1 {
                layer.insert(e.to.as_str(), from + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Compensations sit one layer after the step they undo.
    for e in g.edges.iter().filter(|e| e.kind == EdgeKind::Compensation) {
        if let Some(&from) = layer.get(e.from.as_str()) {
            layer.insert(e.to.as_str(), from + 1);
        }
    }
    layer
}

fn esc(s: &str) -> String {
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

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The graph as an `<svg>` element. Nodes are `<g class="node status-…">` with
/// `data-node-id` and `data-status`; edges are `<path class="edge edge-…">` with
/// `data-edge-id`, `data-status` and `data-kind`. `run_href` links child runs.
pub fn run_graph_svg(g: &RunGraph, run_href: &dyn Fn(&str) -> String) -> String {
    let layer = layers(g);
    let mut rows: HashMap<i64, i64> = HashMap::new();
    let mut pos: HashMap<&str, (i64, i64)> = HashMap::new();
    for n in &g.nodes {
        let l = layer.get(n.id.as_str()).copied().unwrap_or(0);
        let r = rows.entry(l).or_insert(0);
        pos.insert(
            n.id.as_str(),
            (PAD + l * (NODE_W + GAP_X), PAD + *r * (NODE_H + GAP_Y)),
        );
        *r += 1;
    }
    let ends_run = g
        .edges
        .iter()
        .any(|e| e.to == "complete" && !pos.contains_key("complete"));
    let max_layer = layer.values().copied().max().unwrap_or(0);
    let end = (PAD + (max_layer + 1) * (NODE_W + GAP_X), PAD);
    let max_rows = rows.values().copied().max().unwrap_or(1).max(1);
    let width = PAD * 2 + (max_layer + 1 + i64::from(ends_run)) * (NODE_W + GAP_X) - GAP_X;
    let height = PAD * 2 + max_rows * (NODE_H + GAP_Y) - GAP_Y;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="run-graph" id="run-graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="graph of run {}">"#,
        esc(&g.run_id)
    );
    s.push_str(r#"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>"#);
    for e in &g.edges {
        let Some(&(fx, fy)) = pos.get(e.from.as_str()) else {
            continue;
        };
        let (tx, ty) = match pos.get(e.to.as_str()) {
            Some(&p) => p,
            None if e.to == "complete" => (end.0, end.1),
            None => continue,
        };
        let (x1, y1) = (fx + NODE_W, fy + NODE_H / 2);
        let (x2, y2) = if tx > fx {
            (tx, ty + NODE_H / 2)
        } else {
            // Back or same-layer edge: enter from above.
            (tx + NODE_W / 2, ty)
        };
        let mid = (x1 + x2) / 2;
        let d = if tx > fx {
            format!("M {x1} {y1} C {mid} {y1}, {mid} {y2}, {x2} {y2}")
        } else {
            let lift = fy.min(ty) - GAP_Y / 2;
            format!(
                "M {x1} {y1} C {} {lift}, {x2} {lift}, {x2} {y2}",
                x1 + GAP_X / 2
            )
        };
        let status = status_text(&e.status);
        let kind = status_text(&e.kind);
        let outcome = match e.outcome {
            Some(Outcome::Error) => " outcome-error",
            _ => "",
        };
        let label = match (&e.outcome, &e.condition, &e.recovery) {
            (_, _, Some(r)) => r.clone(),
            (_, Some(_), _) => "if".into(),
            (Some(Outcome::Error), _, _) => "error".into(),
            _ => String::new(),
        };
        let _ = write!(
            s,
            r#"<path class="edge edge-{status} kind-{kind}{outcome}" data-edge-id="{}" data-status="{status}" data-kind="{kind}" d="{d}" marker-end="url(#arrow)"><title>{} ({status})</title></path>"#,
            esc(&e.id),
            esc(&e.id)
        );
        if !label.is_empty() {
            let _ = write!(
                s,
                r#"<text class="edge-label" x="{mid}" y="{}">{}</text>"#,
                (y1 + y2) / 2 - 4,
                esc(&clip(&label, 14))
            );
        }
    }
    if ends_run {
        let status = if g.terminal && g.status == squid_mesh::RunStatus::Completed {
            "completed"
        } else {
            "waiting"
        };
        let _ = write!(
            s,
            r#"<g class="node end status-{status}" data-node-id="complete" data-status="{status}"><circle cx="{}" cy="{}" r="14"/><text x="{}" y="{}" class="end-label">end</text></g>"#,
            end.0 + 14,
            end.1 + NODE_H / 2,
            end.0 + 34,
            end.1 + NODE_H / 2 + 4
        );
    }
    let children: HashMap<&str, Vec<&str>> =
        g.child_links.iter().fold(HashMap::new(), |mut m, c| {
            m.entry(c.from.as_str())
                .or_default()
                .push(c.child_run_id.as_str());
            m
        });
    for n in &g.nodes {
        let Some(&(x, y)) = pos.get(n.id.as_str()) else {
            continue;
        };
        let status = status_text(&n.status);
        let kind = status_text(&n.kind);
        let current = if n.current { " current" } else { "" };
        let _ = write!(
            s,
            r#"<g class="node status-{status} kind-{kind}{current}" data-node-id="{}" data-status="{status}" data-kind="{kind}" transform="translate({x},{y})"><title>{} · {} · {status} · {} attempt(s)</title>"#,
            esc(&n.id),
            esc(&n.id),
            esc(&n.action),
            n.attempt_count
        );
        let shape = match n.kind {
            NodeKind::Join => format!(r#"<rect width="{NODE_W}" height="{NODE_H}" rx="24"/>"#),
            NodeKind::Dynamic => {
                format!(r#"<rect width="{NODE_W}" height="{NODE_H}" rx="4" class="dashed"/>"#)
            }
            _ => format!(r#"<rect width="{NODE_W}" height="{NODE_H}" rx="8"/>"#),
        };
        s.push_str(&shape);
        let _ = write!(
            s,
            r#"<text x="10" y="19" class="node-name">{}</text><text x="10" y="37" class="node-detail">{} · {status}</text>"#,
            esc(&clip(&n.id, 22)),
            esc(&clip(&n.action, 14))
        );
        if let Some(kids) = children.get(n.id.as_str()) {
            for (i, kid) in kids.iter().enumerate().take(3) {
                let _ = write!(
                    s,
                    r#"<a href="{}" class="child-run" data-child-run-id="{}"><text x="{}" y="{}" class="child-label">child {}</text></a>"#,
                    esc(&run_href(kid)),
                    esc(kid),
                    NODE_W - 48,
                    12 + 12 * i64::try_from(i).unwrap_or(0),
                    i + 1
                );
            }
        }
        s.push_str("</g>");
    }
    s.push_str("</svg>");
    s
}

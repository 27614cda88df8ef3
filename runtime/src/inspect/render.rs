//! Plain-text renderings of the read views, for terminals and logs.

use std::fmt::Write as _;

use super::{
    EdgeKind, EdgeStatus, Explanation, NodeKind, NodeStatus, RunGraph, RunInspection, RunPage,
};
use crate::vocab::Timestamp;

fn marker(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Waiting => "[ ]",
        NodeStatus::Skipped => "[/]",
        NodeStatus::Pending => "[.]",
        NodeStatus::Running => "[>]",
        NodeStatus::Retrying => "[~]",
        NodeStatus::Paused => "[=]",
        NodeStatus::Completed => "[x]",
        NodeStatus::Failed => "[!]",
        NodeStatus::Compensated => "[<]",
        NodeStatus::Cancelled => "[-]",
        NodeStatus::Recorded => "[?]",
    }
}

/// Works with at most this many nodes are drawn node by node; larger ones as counts.
const DRAWN_WORK_NODES: usize = 50;

/// The name a status (or any enum value) is serialized as: `completed`, `queue_one`.
pub fn status_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn time(t: Timestamp) -> String {
    t.to_rfc3339()
}

/// The graph as text: one line per node (marker, id, action, status, attempts, deadline),
/// then one line per edge with its status; the current nodes are marked with `*`.
pub fn graph_text(g: &RunGraph) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} ({}{}) is {}",
        g.run_id,
        g.workflow,
        g.version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        status_text(&g.status)
    );
    let w = g.nodes.iter().map(|n| n.id.len()).max().unwrap_or(4).max(4);
    let a = g
        .nodes
        .iter()
        .map(|n| n.action.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let declared = |n: &&super::GraphNode| !matches!(n.kind, NodeKind::Dynamic | NodeKind::Join);
    for n in g.nodes.iter().filter(declared) {
        let mut line = format!(
            "{} {}{:<w$}  {:<a$}  {:<11}",
            marker(n.status),
            if n.current { "*" } else { " " },
            n.id,
            n.action,
            status_text(&n.status),
        );
        if n.attempt_count > 0 {
            let _ = write!(
                line,
                "  {} attempt{}",
                n.attempt_count,
                if n.attempt_count == 1 { "" } else { "s" }
            );
        }
        if let Some(d) = &n.deadline {
            let _ = write!(
                line,
                "  deadline {} (due {})",
                status_text(&d.status),
                time(d.due_at)
            );
        }
        if let Some(e) = &n.error {
            let _ = write!(line, "  error {}: {}", e.code, e.message);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let shown: Vec<&super::GraphEdge> = g
        .edges
        .iter()
        .filter(|e| e.kind != EdgeKind::Dynamic)
        .collect();
    if !shown.is_empty() {
        out.push_str("edges:\n");
        let w = shown.iter().map(|e| e.id.len()).max().unwrap_or(4);
        for e in shown {
            let mark = match e.status {
                EdgeStatus::Selected => "==>",
                EdgeStatus::Skipped => "-/-",
                EdgeStatus::Pending => "-->",
                EdgeStatus::Blocked => "-x-",
            };
            let _ = writeln!(out, "  {mark} {:<w$}  {}", e.id, status_text(&e.status));
        }
    }
    for o in &g.dynamic_work_overlays {
        dynamic_text(&mut out, g, o);
    }
    for c in &g.child_links {
        let _ = writeln!(
            out,
            "child run {} ({}) from {}: {}",
            c.child_run_id,
            c.workflow.as_deref().unwrap_or("?"),
            c.from,
            c.status.map(|s| s.as_str()).unwrap_or("unknown")
        );
    }
    out
}

/// One dynamic work: its nodes when few, else counts by status and the unfinished ones.
fn dynamic_text(out: &mut String, g: &RunGraph, o: &super::DynamicOverlay) {
    let nodes: Vec<&super::GraphNode> = o.node_ids.iter().filter_map(|id| g.node(id)).collect();
    let _ = writeln!(
        out,
        "dynamic work {} ({}) from {}: {} node{}",
        o.key,
        status_text(&o.status),
        o.origin_node_id,
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    let w = nodes.iter().map(|n| n.id.len()).max().unwrap_or(4);
    let a = nodes.iter().map(|n| n.action.len()).max().unwrap_or(6);
    let line = |out: &mut String, n: &super::GraphNode| {
        let join = if n.kind == NodeKind::Join {
            "  join"
        } else {
            ""
        };
        let text = format!(
            "  {} {}{:<w$}  {:<a$}  {:<11}{join}",
            marker(n.status),
            if n.current { "*" } else { " " },
            n.id,
            n.action,
            status_text(&n.status)
        );
        out.push_str(text.trim_end());
        out.push('\n');
    };
    if nodes.len() <= DRAWN_WORK_NODES {
        for n in nodes {
            line(out, n);
        }
        return;
    }
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for n in &nodes {
        *counts.entry(status_text(&n.status)).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "  {}", counts.join(", "));
    let unfinished: Vec<&&super::GraphNode> = nodes
        .iter()
        .filter(|n| n.status != NodeStatus::Completed || n.kind == NodeKind::Join)
        .collect();
    for n in unfinished.iter().take(DRAWN_WORK_NODES) {
        line(out, n);
    }
    if unfinished.len() > DRAWN_WORK_NODES {
        let _ = writeln!(out, "  ... {} more", unfinished.len() - DRAWN_WORK_NODES);
    }
}

/// The explanation as text: reason, summary, next actions and the main details.
pub fn explanation_text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} ({}) is {}",
        e.run_id,
        e.workflow,
        e.status.as_str()
    );
    let _ = writeln!(
        out,
        "reason:  {}{}",
        e.reason.as_str(),
        e.step
            .as_deref()
            .map(|s| format!(" (step {s})"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "summary: {}", e.summary);
    if let Some(s) = e.evidence.get("schedule").filter(|s| !s.is_null()) {
        let _ = writeln!(out, "origin:  {}", schedule_line(s));
    }
    let next: Vec<String> = e.next_actions.iter().map(status_text).collect();
    let _ = writeln!(out, "next:    {}", next.join(", "));
    for (k, v) in &e.details {
        // Instants are stored as microseconds since the epoch: print them as times.
        let instant = k.ends_with("_at") || k.ends_with("_since") || k.ends_with("_until");
        match v.as_i64() {
            Some(us) if instant => {
                let _ = writeln!(out, "  {k}: {}", time(Timestamp(us)));
            }
            _ => {
                let _ = writeln!(out, "  {k}: {v}");
            }
        }
    }
    out
}

/// Where a scheduled run came from, in one line.
fn schedule_line(s: &serde_json::Value) -> String {
    let text = |k: &str| s.get(k).and_then(serde_json::Value::as_str).unwrap_or("?");
    format!(
        "scheduled by {}/{} ({} in {}) for window {}, fired {} ms late by the {}",
        text("workflow"),
        text("trigger"),
        text("cron"),
        text("timezone"),
        text("scheduled_local"),
        s.get("lateness_ms")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        text("origin")
    )
}

/// The inspection as text: header, gate, deadline, attempts and commands.
pub fn inspection_text(i: &RunInspection) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} ({}{}) is {}",
        i.run_id,
        i.workflow,
        i.version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        i.status.as_str()
    );
    let _ = writeln!(
        out,
        "trigger {}, queue {}, created {}, updated {}",
        i.trigger,
        i.queue,
        time(i.created_at),
        time(i.updated_at)
    );
    if let Some(from) = &i.replayed_from {
        let _ = writeln!(out, "replays run {from}");
    }
    if let Some(s) = &i.schedule {
        let _ = writeln!(out, "{}", schedule_line(s));
    }
    if let Some(p) = &i.parent {
        let _ = writeln!(out, "child of run {} (step {})", p.run_id, p.step);
    }
    if let Some(e) = &i.error {
        let _ = writeln!(out, "error: {e}");
    }
    if let Some(c) = &i.compensation {
        let _ = writeln!(
            out,
            "compensation {}: undone {:?}, not undone {:?}",
            c.status, c.compensated, c.not_compensated
        );
    }
    if let Some(m) = &i.manual {
        let _ = writeln!(
            out,
            "waiting at {} gate {} since {}",
            status_text(&m.kind),
            m.step,
            time(m.paused_at)
        );
    }
    if let Some(d) = &i.deadline {
        let _ = writeln!(
            out,
            "deadline of {}: {} (due {}, escalation {})",
            d.step,
            status_text(&d.status),
            time(d.due_at),
            d.escalation
        );
    }
    if let Some(ctx) = &i.context {
        let _ = writeln!(out, "context: {}", serde_json::Value::Object(ctx.clone()));
    }
    out.push_str("attempts:\n");
    for a in &i.attempts {
        let mut line = format!("  {:<24} #{} {:<10}", a.step, a.attempt, a.status);
        if let Some(o) = &a.owner {
            let _ = write!(line, " by {o}");
        }
        if a.claims > 1 {
            let _ = write!(line, " ({} claims)", a.claims);
        }
        if let Some(e) = &a.error {
            let _ = write!(line, " {}: {}", e.code, e.message);
        }
        if let Some(w) = &a.waiting_for_action {
            let _ = write!(
                line,
                " waiting for action {} ({}) since {}",
                w.action,
                w.code,
                time(w.since)
            );
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !i.commands.is_empty() {
        out.push_str("commands:\n");
        for c in &i.commands {
            let actor = c
                .actor
                .as_ref()
                .map(|a| format!(" by {a}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} {}{actor}", time(c.occurred_at), c.command);
        }
    }
    for c in &i.children {
        let _ = writeln!(
            out,
            "child run {} ({}) from step {}: {}",
            c.run_id,
            c.workflow.as_deref().unwrap_or("?"),
            c.step,
            c.status.map(|s| s.as_str()).unwrap_or("unknown")
        );
    }
    out
}

/// A page of runs as a table.
pub fn page_text(p: &RunPage) -> String {
    let mut out = format!(
        "{:<36}  {:<20}  {:<10}  {:<24}  {:<20}  deadline\n",
        "run", "workflow", "status", "created", "current"
    );
    for r in &p.runs {
        let deadline = r
            .deadline
            .as_ref()
            .map(|d| status_text(&d.status))
            .unwrap_or_default();
        let line = format!(
            "{:<36}  {:<20}  {:<10}  {:<24}  {:<20}  {deadline}",
            r.run_id,
            r.workflow,
            r.status.as_str(),
            time(r.created_at),
            r.current_steps.join(","),
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(t) = &p.next_page {
        let _ = writeln!(out, "more: --after {t}");
    }
    out
}

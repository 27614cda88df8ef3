//! Spec validation: every problem at once, each with a path, a code and a message.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Builtin;
use super::{COMPLETE, FieldType, InputMapping, Mode, Outcome, WorkflowSpec};
use crate::vocab::ActionKey;

/// One problem found in a spec (or a payload, or an option).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecProblem {
    /// Where: for example `steps[2].retry.max_attempts`.
    pub path: String,
    /// Machine-readable code, for example `unknown_step`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.message, self.code)
    }
}

/// Most attempts a retry policy may allow (the first included).
pub const MAX_ATTEMPTS: u32 = 1_000;
/// Longest wait, backoff or deadline: 366 days, in milliseconds.
pub const MAX_DELAY_MS: u64 = 366 * 86_400_000;

/// Bounds and consistency of a retry policy: (field under the policy, code, message).
pub(crate) fn retry_problems(r: &super::RetryPolicy) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
        out.push((
            "max_attempts",
            "invalid_retry",
            format!(
                "max_attempts counts the first attempt and must be 1 to {MAX_ATTEMPTS}, not {}",
                r.max_attempts
            ),
        ));
    }
    if let Some(b) = &r.backoff {
        if b.min_ms == 0 {
            out.push((
                "backoff.min_ms",
                "invalid_backoff",
                "min_ms must be positive".into(),
            ));
        }
        if b.max_ms < b.min_ms {
            out.push((
                "backoff.max_ms",
                "invalid_backoff",
                "max_ms must be at least min_ms".into(),
            ));
        }
        if b.max_ms > MAX_DELAY_MS {
            out.push((
                "backoff.max_ms",
                "invalid_backoff",
                format!(
                    "max_ms must be at most {MAX_DELAY_MS} (366 days), not {}",
                    b.max_ms
                ),
            ));
        }
    }
    out
}

/// Bounds and consistency of a cron trigger's schedule policy.
fn check_policy(p: &mut Problems, at: &str, policy: &super::SchedulePolicy) {
    use super::{MAX_CATCH_UP_LIMIT, MAX_SCHEDULE_DELAY_MS};
    if policy.catch_up_limit == 0 || policy.catch_up_limit > MAX_CATCH_UP_LIMIT {
        p.add(
            format!("{at}.catch_up_limit"),
            "invalid_catch_up_limit",
            format!(
                "catch_up_limit must be 1 to {MAX_CATCH_UP_LIMIT}, not {}",
                policy.catch_up_limit
            ),
        );
    }
    for (field, value) in [
        ("jitter_ms", policy.jitter_ms),
        ("grace_ms", policy.grace_ms),
    ] {
        if value > MAX_SCHEDULE_DELAY_MS {
            p.add(
                format!("{at}.{field}"),
                "invalid_schedule_delay",
                format!("{field} must be at most {MAX_SCHEDULE_DELAY_MS} (one day), not {value}"),
            );
        }
    }
    if let (Some(start), Some(end)) = (policy.start_at, policy.end_at)
        && end <= start
    {
        p.add(
            format!("{at}.end_at"),
            "invalid_schedule_window",
            format!("end_at {end} must be after start_at {start}"),
        );
    }
}

/// Whether `name` is a valid identifier for workflows, steps, triggers and queues.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 128
}

#[derive(Default)]
struct Problems(Vec<SpecProblem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, code: &str, message: impl Into<String>) {
        self.0.push(SpecProblem {
            path: path.into(),
            code: code.to_owned(),
            message: message.into(),
        });
    }
}

impl WorkflowSpec {
    /// Checks the spec, and against `registry` when given: its action keys, and its data flow
    /// against the schemas the actions declare (see [`WorkflowSpec::check`], which also
    /// returns warnings).
    ///
    /// # Errors
    ///
    /// Every problem found, in a stable order.
    pub fn validate(&self, registry: Option<&dyn ActionLookup>) -> Result<(), Vec<SpecProblem>> {
        let report = self.check(registry);
        if report.problems.is_empty() {
            Ok(())
        } else {
            Err(report.problems)
        }
    }

    /// The checks that need no action schema.
    pub(crate) fn validate_structure(
        &self,
        registry: Option<&dyn ActionLookup>,
    ) -> Result<(), Vec<SpecProblem>> {
        let mut p = Problems::default();
        if !valid_name(&self.name) {
            p.add(
                "name",
                "invalid_name",
                format!(
                    "workflow name {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*",
                    self.name
                ),
            );
        }
        if let Some(e) = self
            .editor
            .as_ref()
            .and_then(|m| super::editor::check_editor_section(m).err())
        {
            p.add("editor", e.code(), e.to_string());
        }
        self.check_triggers(&mut p);
        self.check_steps(&mut p, registry);
        match self.mode() {
            Mode::Transitions => self.check_transitions(&mut p),
            Mode::Dependencies => self.check_dependencies(&mut p),
        }
        if p.0.is_empty() { Ok(()) } else { Err(p.0) }
    }

    fn check_triggers(&self, p: &mut Problems) {
        if self.triggers.is_empty() {
            p.add(
                "triggers",
                "missing_trigger",
                "a workflow needs at least one trigger",
            );
        }
        let mut names = BTreeSet::new();
        let mut field_types: HashMap<&str, FieldType> = HashMap::new();
        for (i, t) in self.triggers.iter().enumerate() {
            let at = format!("triggers[{i}]");
            if !valid_name(&t.name) {
                p.add(
                    format!("{at}.name"),
                    "invalid_name",
                    format!(
                        "trigger name {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*",
                        t.name
                    ),
                );
            }
            if !names.insert(&t.name) {
                p.add(
                    format!("{at}.name"),
                    "duplicate_trigger",
                    format!("trigger {} is declared twice", t.name),
                );
            }
            if let super::TriggerKind::Cron {
                cron,
                timezone,
                policy,
            } = &t.kind
            {
                check_policy(p, &at, policy);
                if let Err(e) = croner::Cron::from_str(cron) {
                    p.add(
                        format!("{at}.cron"),
                        "invalid_cron",
                        format!("cron expression {cron:?} is invalid: {e}"),
                    );
                }
                if chrono_tz::Tz::from_str(timezone).is_err() {
                    p.add(
                        format!("{at}.timezone"),
                        "invalid_timezone",
                        format!("time zone {timezone:?} is not an IANA zone name"),
                    );
                }
            }
            let mut fields = BTreeSet::new();
            for (j, f) in t.payload.iter().enumerate() {
                let fat = format!("{at}.payload[{j}]");
                if !valid_name(&f.name) {
                    p.add(
                        format!("{fat}.name"),
                        "invalid_name",
                        format!(
                            "field name {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*",
                            f.name
                        ),
                    );
                }
                if !fields.insert(&f.name) {
                    p.add(
                        format!("{fat}.name"),
                        "duplicate_field",
                        format!("field {} is declared twice", f.name),
                    );
                }
                if let Some(prev) = field_types.insert(&f.name, f.field_type)
                    && prev != f.field_type
                {
                    p.add(
                        format!("{fat}.type"),
                        "conflicting_field_type",
                        format!(
                            "field {} is a {} here and a {} in another trigger",
                            f.name,
                            f.field_type.name(),
                            prev.name()
                        ),
                    );
                }
                if let Some(d) = &f.default
                    && !f.field_type.accepts(d)
                {
                    p.add(
                        format!("{fat}.default"),
                        "invalid_default",
                        format!("default {d} is not of type {}", f.field_type.name()),
                    );
                }
                // A default sits one level down in the payload, which is held to the bound.
                if let Some(d) = &f.default
                    && crate::json::depth(d) >= crate::json::MAX_DEPTH
                {
                    p.add(
                        format!("{fat}.default"),
                        "invalid_default",
                        format!(
                            "the default nests {} levels deep; the most is {}",
                            crate::json::depth(d),
                            crate::json::MAX_DEPTH - 1
                        ),
                    );
                }
                if f.default_from.is_some() && f.field_type != FieldType::String {
                    p.add(
                        format!("{fat}.default_from"),
                        "invalid_default",
                        "computed defaults (today, now) are only for string fields",
                    );
                }
                if f.default.is_some() && f.default_from.is_some() {
                    p.add(
                        format!("{fat}.default_from"),
                        "invalid_default",
                        "give either default or default_from, not both",
                    );
                }
            }
        }
    }

    fn check_steps(&self, p: &mut Problems, registry: Option<&dyn ActionLookup>) {
        if self.steps.is_empty() {
            p.add(
                "steps",
                "missing_steps",
                "a workflow needs at least one step",
            );
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let at = format!("steps[{i}]");
            if !valid_name(&s.name) || s.name == COMPLETE {
                p.add(format!("{at}.name"), "invalid_name", format!("step name {:?} must match [A-Za-z0-9][A-Za-z0-9_.-]* and not be `complete`", s.name));
            }
            if !names.insert(s.name.as_str()) {
                p.add(
                    format!("{at}.name"),
                    "duplicate_step",
                    format!("step {} is declared twice", s.name),
                );
            }
            for (field, key) in &s.invalid_keys {
                p.add(
                    format!("{at}.{field}"),
                    "invalid_action_key",
                    format!("{key:?} is not a valid action key: use 1-128 characters from A-Z a-z 0-9 . _ - : /, starting with a letter or digit"),
                );
            }
            match (&s.action, &s.builtin) {
                (Some(_), Some(_)) => p.add(
                    &at,
                    "invalid_step_kind",
                    "a step runs exactly one of a valid `action` key or a `builtin`",
                ),
                (None, None) if s.invalid_keys.iter().any(|(f, _)| *f == "action") => {}
                (None, None) => p.add(
                    &at,
                    "invalid_step_kind",
                    "a step runs exactly one of a valid `action` key or a `builtin`",
                ),
                (Some(key), None) => {
                    if let Some(registry) = registry {
                        check_key(p, registry, &format!("{at}.action"), key);
                    }
                }
                (None, Some(b)) => match b {
                    Builtin::Wait { duration_ms } if *duration_ms == 0 || *duration_ms > MAX_DELAY_MS => p.add(
                        format!("{at}.builtin.duration_ms"),
                        "invalid_builtin",
                        format!("a wait needs a duration_ms from 1 to {MAX_DELAY_MS} (366 days), not {duration_ms}"),
                    ),
                    Builtin::Log { message, .. } if message.trim().is_empty() => p.add(
                        format!("{at}.builtin.message"),
                        "invalid_builtin",
                        "a log step needs a non-empty message",
                    ),
                    _ => {}
                },
            }
            match &s.input {
                Some(InputMapping::Keys(keys)) if keys.is_empty() => p.add(
                    format!("{at}.input"),
                    "invalid_input_mapping",
                    "an input key list must not be empty",
                ),
                Some(InputMapping::Paths(paths)) => {
                    if paths.is_empty() {
                        p.add(
                            format!("{at}.input"),
                            "invalid_input_mapping",
                            "an input path map must not be empty",
                        );
                    }
                    for (target, path) in paths {
                        if path.is_empty() || target.is_empty() {
                            p.add(
                                format!("{at}.input.{target}"),
                                "invalid_input_mapping",
                                "an input path needs a target and at least one key",
                            );
                        }
                    }
                }
                _ => {}
            }
            if let Some(out) = &s.output
                && out.is_empty()
            {
                p.add(
                    format!("{at}.output"),
                    "invalid_output_key",
                    "the output key must not be empty",
                );
            }
            if let Some(r) = &s.retry {
                for (field, code, message) in retry_problems(r) {
                    p.add(format!("{at}.retry.{field}"), code, message);
                }
            }
            if let Some(d) = &s.deadline {
                if d.within_ms == 0 {
                    p.add(
                        format!("{at}.deadline.within_ms"),
                        "invalid_deadline",
                        "within_ms must be positive",
                    );
                }
                for (field, value) in [
                    ("within_ms", Some(d.within_ms)),
                    ("due_soon_ms", d.due_soon_ms),
                    ("escalate_after_ms", d.escalate_after_ms),
                ] {
                    if let Some(v) = value
                        && v > MAX_DELAY_MS
                    {
                        p.add(
                            format!("{at}.deadline.{field}"),
                            "invalid_deadline",
                            format!("{field} must be at most {MAX_DELAY_MS} (366 days), not {v}"),
                        );
                    }
                }
                if d.due_soon_ms.is_some_and(|soon| soon >= d.within_ms) {
                    p.add(
                        format!("{at}.deadline.due_soon_ms"),
                        "invalid_deadline",
                        "due_soon_ms must be less than within_ms",
                    );
                }
            }
            if s.irreversible && s.compensatable == Some(true) {
                p.add(
                    format!("{at}.compensatable"),
                    "conflicting_recovery",
                    "an irreversible step cannot be compensatable",
                );
            }
            if let Some(key) = &s.compensate {
                if s.irreversible || s.compensatable == Some(false) {
                    p.add(
                        format!("{at}.compensate"),
                        "conflicting_recovery",
                        "a step with a compensation cannot be irreversible or non-compensatable",
                    );
                }
                if s.is_manual() {
                    p.add(
                        format!("{at}.compensate"),
                        "conflicting_recovery",
                        "manual gates have nothing to compensate",
                    );
                }
                if let Some(registry) = registry {
                    check_key(p, registry, &format!("{at}.compensate"), key);
                }
            }
        }
    }

    fn step_index(&self) -> BTreeMap<&str, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    }

    fn check_transitions(&self, p: &mut Problems) {
        let index = self.step_index();
        let mut seen_fallback = BTreeSet::new();
        let mut seen_conditions: HashSet<(&str, Outcome, String)> = HashSet::new();
        for (i, t) in self.transitions.iter().enumerate() {
            let at = format!("transitions[{i}]");
            if !index.contains_key(t.from.as_str()) {
                p.add(
                    format!("{at}.from"),
                    "unknown_step",
                    format!("transition from unknown step {}", t.from),
                );
            }
            if t.to != COMPLETE && !index.contains_key(t.to.as_str()) {
                p.add(
                    format!("{at}.to"),
                    "unknown_step",
                    format!(
                        "transition to unknown step {} (use `complete` to end the run)",
                        t.to
                    ),
                );
            }
            if t.recovery.is_some() && t.on == Outcome::Ok {
                p.add(
                    format!("{at}.recovery"),
                    "invalid_recovery",
                    "a recovery label belongs on an error route",
                );
            }
            match &t.condition {
                None => {
                    if !seen_fallback.insert((t.from.as_str(), t.on)) {
                        p.add(
                            &at,
                            "duplicate_transition",
                            format!("{} already has an unconditional {:?} route", t.from, t.on),
                        );
                    }
                }
                Some(c) => {
                    let ops = usize::from(c.equals.is_some())
                        + usize::from(c.greater_than.is_some())
                        + usize::from(c.less_than.is_some());
                    if ops != 1 || c.path.is_empty() {
                        p.add(format!("{at}.condition"), "invalid_condition", "a condition needs a non-empty path and exactly one of equals, greater_than, less_than");
                    }
                    if let Some(why) = c.equals.as_ref().and_then(crate::json::too_deep) {
                        p.add(
                            format!("{at}.condition"),
                            "invalid_condition",
                            format!("the condition's value {why}"),
                        );
                    }
                    let key = serde_json::to_string(c).unwrap_or_default();
                    if !seen_conditions.insert((&t.from, t.on, key)) {
                        p.add(
                            &at,
                            "duplicate_transition",
                            format!("{} has the same condition twice", t.from),
                        );
                    }
                    if index
                        .get(t.from.as_str())
                        .is_some_and(|&i| self.steps[i].is_manual())
                    {
                        p.add(
                            format!("{at}.condition"),
                            "invalid_condition",
                            "routes from manual gates cannot have conditions",
                        );
                    }
                }
            }
        }
        // A success must always have somewhere to go: conditional ok routes need a fallback.
        // (routes, unconditional routes) leaving each step on each outcome.
        let mut leaving: HashMap<(&str, Outcome), (usize, usize)> = HashMap::new();
        for t in &self.transitions {
            let e = leaving.entry((t.from.as_str(), t.on)).or_default();
            e.0 += 1;
            e.1 += usize::from(t.condition.is_none());
        }
        let routes = |step: &str, on| leaving.get(&(step, on)).copied().unwrap_or_default();
        for s in &self.steps {
            let (ok_routes, ok_fallbacks) = routes(&s.name, Outcome::Ok);
            if ok_routes > 0 && ok_fallbacks == 0 {
                let i = index[s.name.as_str()];
                p.add(format!("steps[{i}]"), "missing_ok_fallback", format!("step {} has only conditional ok routes; add an unconditional one (to a step or `complete`)", s.name));
            }
            if matches!(s.builtin, Some(Builtin::Approval {})) {
                let ok = ok_routes > 0;
                let err = routes(&s.name, Outcome::Error).0 > 0;
                if !(ok && err) {
                    let i = index[s.name.as_str()];
                    p.add(
                        format!("steps[{i}]"),
                        "approval_routes",
                        format!(
                            "approval step {} needs both an ok and an error route",
                            s.name
                        ),
                    );
                }
            }
        }
        if self.steps.is_empty() {
            return;
        }
        let targets: HashSet<&str> = self.transitions.iter().map(|t| t.to.as_str()).collect();
        let entries: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| !targets.contains(s.name.as_str()))
            .map(|s| s.name.as_str())
            .collect();
        match entries.len() {
            0 => p.add("transitions", "missing_entry_step", "every step is the target of a transition, so no step can start the run"),
            1 => {}
            _ => p.add("transitions", "ambiguous_entry_step", format!("steps {} are not targeted by any transition; exactly one entry step is allowed", entries.join(", "))),
        }
        let edges: Vec<(&str, &str)> = self
            .transitions
            .iter()
            .filter(|t| t.to != COMPLETE)
            .map(|t| (t.from.as_str(), t.to.as_str()))
            .collect();
        if let Some(cycle) = find_cycle(
            &self
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            &edges,
        ) {
            p.add(
                "transitions",
                "cycle",
                format!("transitions form a cycle: {}", cycle.join(" -> ")),
            );
        }
    }

    fn check_dependencies(&self, p: &mut Problems) {
        let index = self.step_index();
        if !self.transitions.is_empty() {
            p.add(
                "transitions",
                "mixed_modes",
                "a workflow uses either transitions or `after` dependencies, not both",
            );
        }
        let mut edges = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.is_manual() {
                p.add(
                    format!("steps[{i}].builtin"),
                    "manual_step_in_dependency_mode",
                    "pause and approval gates need transition mode",
                );
            }
            let mut seen = BTreeSet::new();
            for (j, dep) in s.after.iter().enumerate() {
                let at = format!("steps[{i}].after[{j}]");
                if dep == &s.name {
                    p.add(
                        &at,
                        "self_dependency",
                        format!("step {} depends on itself", s.name),
                    );
                } else if !index.contains_key(dep.as_str()) {
                    p.add(
                        &at,
                        "unknown_step",
                        format!("step {} depends on unknown step {dep}", s.name),
                    );
                } else {
                    edges.push((dep.as_str(), s.name.as_str()));
                }
                if !seen.insert(dep) {
                    p.add(
                        &at,
                        "duplicate_dependency",
                        format!("step {} lists {dep} twice", s.name),
                    );
                }
            }
        }
        if let Some(cycle) = find_cycle(
            &self
                .steps
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            &edges,
        ) {
            p.add(
                "steps",
                "cycle",
                format!("dependencies form a cycle: {}", cycle.join(" -> ")),
            );
        }
    }
}

/// Where validation looks action keys up: the host's allowlist (an
/// [`crate::actions::ActionRegistry`], or any other source of approved actions).
pub trait ActionLookup {
    /// Whether `key` names an action a step may use.
    fn availability(&self, key: &ActionKey) -> Availability;

    /// The schemas the action declares, when known (the action catalog stores them).
    fn schemas(&self, key: &ActionKey) -> Option<super::ActionSchemas> {
        let _ = key;
        None
    }
}

/// What an [`ActionLookup`] knows of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Approved and enabled.
    Active,
    /// Known but disabled.
    Disabled,
    /// Not known.
    Unknown,
}

fn check_key(p: &mut Problems, registry: &dyn ActionLookup, path: &str, key: &ActionKey) {
    match registry.availability(key) {
        Availability::Active => {}
        Availability::Disabled => p.add(
            path,
            "disabled_action",
            format!("action {key} is disabled; enable it before starting runs that use it"),
        ),
        Availability::Unknown => p.add(
            path,
            "unknown_action",
            format!("action {key} is not approved (not in the registry or the action catalog)"),
        ),
    }
}

/// A cycle among `nodes` following `edges`, if any: an iterative depth-first search, so a
/// spec of any length cannot exhaust the stack, linear in nodes and edges.
fn find_cycle<'a>(nodes: &[&'a str], edges: &[(&'a str, &'a str)]) -> Option<Vec<&'a str>> {
    let mut next: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        OnStack,
        Done,
    }
    let mut state: HashMap<&str, Seen> = HashMap::new();
    // The path being explored, each node with the index of its next edge to follow.
    let mut path: Vec<(&str, usize)> = Vec::new();
    for &root in nodes {
        if state.contains_key(root) {
            continue;
        }
        state.insert(root, Seen::OnStack);
        path.push((root, 0));
        while let Some(&mut (n, ref mut edge)) = path.last_mut() {
            let Some(&m) = next.get(n).and_then(|out| out.get(*edge)) else {
                state.insert(n, Seen::Done);
                path.pop();
                continue;
            };
            *edge += 1;
            match state.get(m) {
                Some(Seen::OnStack) => {
                    let start = path.iter().position(|(s, _)| *s == m).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[start..].iter().map(|(s, _)| *s).collect();
                    cycle.push(m);
                    return Some(cycle);
                }
                Some(Seen::Done) => {}
                None => {
                    state.insert(m, Seen::OnStack);
                    path.push((m, 0));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Step, Transition, Trigger};
    use std::time::Duration;

    fn codes(spec: &WorkflowSpec) -> Vec<String> {
        spec.validate(None)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.code)
            .collect()
    }

    #[test]
    fn reports_every_problem_at_once_with_paths() {
        let spec = WorkflowSpec::builder("bad name!")
            .step(Step::action("a", "x.y"))
            .step(Step::action("a", "x.y").retry_exponential(
                0,
                Duration::from_millis(10),
                Duration::from_millis(5),
            ))
            .step(Step::action("b", "x.y"))
            .on_ok("a", "ghost")
            .build();
        let problems = spec.validate(None).expect_err("invalid");
        let got: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.code.as_str()))
            .collect();
        for expected in [
            ("name", "invalid_name"),
            ("triggers", "missing_trigger"),
            ("steps[1].name", "duplicate_step"),
            ("steps[1].retry.max_attempts", "invalid_retry"),
            ("steps[1].retry.backoff.max_ms", "invalid_backoff"),
            ("transitions[0].to", "unknown_step"),
        ] {
            assert!(got.contains(&expected), "{expected:?} missing from {got:?}");
        }
    }

    #[test]
    fn shapes_are_checked() {
        let cyc = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("b", "k").after(["c"]))
            .step(Step::action("c", "k").after(["b"]))
            .build();
        assert!(codes(&cyc).contains(&"cycle".to_owned()));

        let mixed = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("b", "k").after(["a"]))
            .on_ok("a", "b")
            .build();
        assert!(codes(&mixed).contains(&"mixed_modes".to_owned()));

        let approval = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .approval_step("review", "review")
            .on_ok("review", "complete")
            .build();
        assert_eq!(codes(&approval), ["approval_routes"]);

        let no_fallback = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("b", "k"))
            .transition(Transition::on_ok("a", "b").when_equals(["x"], serde_json::json!(1)))
            .build();
        assert_eq!(codes(&no_fallback), ["missing_ok_fallback"]);

        let two_entries = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("b", "k"))
            .build();
        assert_eq!(codes(&two_entries), ["ambiguous_entry_step"]);

        let bad_cron = WorkflowSpec::builder("w")
            .trigger(Trigger::cron("c", "61 * * * *", "Mars/Olympus"))
            .step(Step::action("a", "k"))
            .build();
        assert_eq!(codes(&bad_cron), ["invalid_cron", "invalid_timezone"]);
    }

    /// 20,000 steps in a chain of transitions or dependencies, and in a cycle: validated
    /// without exhausting the stack (the cycle search is iterative) and in linear time.
    #[test]
    fn huge_specs_validate_without_recursion() {
        const N: usize = 20_000;
        let names: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
        let mut chain = WorkflowSpec::builder("w").trigger(Trigger::manual("m"));
        for n in &names {
            chain = chain.step(Step::log(n, crate::vocab::LogLevel::Info, "x"));
        }
        for pair in names.windows(2) {
            chain = chain.on_ok(&pair[0], &pair[1]);
        }
        let chain = chain.build();
        assert_eq!(chain.validate(None), Ok(()));
        assert_eq!(chain.entry_steps()[0].name, "s0");

        let mut cycle = chain.clone();
        cycle.transitions.push(super::super::TransitionSpec {
            from: names[N - 1].clone(),
            ..cycle.transitions[0].clone()
        });
        let problems = cycle.validate(None).expect_err("a cycle");
        assert!(problems.iter().any(|p| p.code == "cycle"), "{problems:?}");

        let mut deps = WorkflowSpec::builder("w").trigger(Trigger::manual("m"));
        for (i, n) in names.iter().enumerate() {
            let step = Step::log(n, crate::vocab::LogLevel::Info, "x");
            deps = deps.step(if i == 0 {
                step
            } else {
                step.after([names[i - 1].clone()])
            });
        }
        assert_eq!(deps.build().validate(None), Ok(()));
    }

    /// A condition value nested deeper than a stored definition could be read back with is
    /// refused by validation, not discovered when a run needs its definition.
    #[test]
    fn deep_condition_values_are_refused() {
        let mut deep = serde_json::json!(1);
        for _ in 0..122 {
            deep = serde_json::json!([deep]);
        }
        let spec = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k"))
            .step(Step::action("b", "k"))
            .transition(Transition::on_ok("a", "b").when_equals(["x"], deep))
            .on_ok("a", "complete")
            .build();
        assert_eq!(codes(&spec), ["invalid_condition"]);
    }

    /// User-supplied numbers have documented bounds instead of being accepted silently.
    #[test]
    fn numbers_are_bounded() {
        let mut spec = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "k").retry_exponential(
                3,
                Duration::from_millis(10),
                Duration::from_millis(100),
            ))
            .step(Step::wait(
                "pause_a_bit",
                std::time::Duration::from_millis(10),
            ))
            .on_ok("a", "pause_a_bit")
            .build();
        assert_eq!(spec.validate(None), Ok(()));
        let retry = spec.steps[0].retry.as_mut().expect("retry");
        retry.max_attempts = u32::MAX;
        retry.backoff.as_mut().expect("backoff").max_ms = u64::MAX;
        spec.steps[1].builtin = Some(Builtin::Wait {
            duration_ms: u64::MAX,
        });
        let mut found = codes(&spec);
        found.sort();
        assert_eq!(
            found,
            ["invalid_backoff", "invalid_builtin", "invalid_retry"]
        );
    }

    /// A lookup that knows `on.action` (active) and `off.action` (disabled).
    struct Known;

    impl ActionLookup for Known {
        fn availability(&self, key: &ActionKey) -> Availability {
            match key.as_str() {
                "on.action" => Availability::Active,
                "off.action" => Availability::Disabled,
                _ => Availability::Unknown,
            }
        }
    }

    #[test]
    fn invalid_keys_given_to_the_builder_are_reported() {
        let spec = WorkflowSpec::builder("w")
            .trigger(Trigger::manual("m"))
            .step(Step::action("a", "bad key!").compensate("also bad"))
            .step(Step::action("b", "ok.key").compensate("-nope"))
            .on_ok("a", "b")
            .build();
        let problems = spec.validate(None).expect_err("invalid keys");
        let got: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.code.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("steps[0].action", "invalid_action_key"),
                ("steps[0].compensate", "invalid_action_key"),
                ("steps[1].compensate", "invalid_action_key"),
            ]
        );
    }

    #[test]
    fn action_keys_are_looked_up() {
        let table = [
            ("on.action", None),
            ("off.action", Some("disabled_action")),
            ("missing.action", Some("unknown_action")),
        ];
        for (key, want) in table {
            let spec = WorkflowSpec::builder("w")
                .trigger(Trigger::manual("m"))
                .step(Step::action("a", key).compensate(key))
                .build();
            let got = spec.validate(Some(&Known)).err().unwrap_or_default();
            let codes: Vec<(&str, &str)> = got
                .iter()
                .map(|p| (p.path.as_str(), p.code.as_str()))
                .collect();
            match want {
                None => assert!(codes.is_empty(), "{key}: {codes:?}"),
                Some(code) => assert_eq!(
                    codes,
                    [("steps[0].action", code), ("steps[0].compensate", code)],
                    "{key}"
                ),
            }
            assert!(
                spec.validate(None).is_ok(),
                "without a lookup keys are not checked"
            );
        }
    }
}

//! Flow definitions: the model, the parser and validator, and the Mermaid rendering.
//!
//! A flow is parsed from YAML or JSON text by [`parse`], which reports every problem it finds as a
//! [`Diagnostic`] with its line and column. The parsed [`Flow`] is what the orchestrator schedules;
//! [`schedule`] turns its schedule triggers into fire times.

mod graph;
mod model;
mod parse;
mod pb;
pub mod schedule;

pub use graph::to_mermaid;
pub use model::*;
pub use parse::{
    DEFAULT_MAX_FLOW_NESTING, DEFAULT_MAX_FLOW_STEPS, Diagnostic, Diagnostics, FlowLimits, parse,
    parse_with,
};

//! Integration tests of the `squid-mesh` crate: real components built from source, real
//! files, hand-written WAT for misbehaving guests.

mod actions;
mod backends;
mod catalog;
mod control;
mod dynamic;
mod editor;
mod engine;
mod inspect;
mod layering;
mod properties;
mod registry;
mod render;
mod schedules;
mod support;
mod telemetry;
mod wat;
mod worker;

//! The time–sequence graph, checked by reading back what it drew: one test
//! binary, a module per topic.

mod episode;
mod svg_doc;

mod docs;
mod errors;
mod png;
mod svg;
